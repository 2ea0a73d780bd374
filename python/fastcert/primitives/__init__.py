"""The primitives of the graph IR: one module per operation (see base.py for the protocol)."""
