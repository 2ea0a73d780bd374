"""The ONNX operator registries: ``SINGLE`` maps an op type to its handler for nodes reading one
tensor computed from the input (and constants), ``MULTI`` for nodes reading several. Adding an
operator is one handler plus one line in its module's ``HANDLERS``; a duplicate raises."""

from __future__ import annotations

from typing import Any, Callable

from fastcert.io.onnx import ops_graph, ops_layers, ops_tensor

Handler = Callable[..., Any]


def merge(*tables: dict[str, Handler]) -> dict[str, Handler]:
    """One registry from several handler tables; an op type registered twice raises."""
    out: dict[str, Handler] = {}
    for t in tables:
        for op, f in t.items():
            if op in out:
                raise RuntimeError(f"ONNX operator {op} is registered twice ({out[op].__module__}.{out[op].__name__} "
                                   f"and {f.__module__}.{f.__name__})")
            out[op] = f
    return out


SINGLE = merge(ops_tensor.HANDLERS, ops_layers.HANDLERS, ops_graph.HANDLERS)
MULTI = merge(ops_graph.MULTI_HANDLERS)
