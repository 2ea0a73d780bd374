"""Bound algorithms: functions over the layer protocol with explicit per-call state."""
