"""Independent reference implementations (plain float64 torch), used as ground truth by the tests."""
