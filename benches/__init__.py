"""Benchmarks of fastcert against the peers (auto_LiRPA, convex_adversarial, a plain-torch reference)."""
