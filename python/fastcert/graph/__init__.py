"""The graph IR: networks as a DAG of primitives (ir.py) and the torch front end (from_torch.py)."""
