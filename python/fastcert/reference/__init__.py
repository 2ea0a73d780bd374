"""Plain float64 torch references of fastcert's kernels and algorithms (tests and benchmarks)."""
