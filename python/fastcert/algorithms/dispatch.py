"""One entry to the two bound engines: the chain engine for chains, the graph engine otherwise."""

from __future__ import annotations

from typing import Any

import torch

from fastcert.algorithms.graph_bounds import graph_bounds
from fastcert.algorithms.linear_bounds import linear_bounds
from fastcert.graph.ir import is_nonlinear
from fastcert.options import BoundOptions


def network_bounds(net: Any, shape: tuple[int, ...], prob: Any, C: torch.Tensor, method: str,
                   lower_slope: str | None = None, C_exact: torch.Tensor | None = None,
                   opts: BoundOptions | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Bounds of ``C f(x)`` over ``prob``'s region for a :class:`fastcert.Network` at per-sample input
    ``shape``: C [B, S, K] -> (lower, upper) [B, S] (see ``linear_bounds`` for the arguments). The graph
    engine alone implements ``BoundOptions(intermediate="sparse")``: such chains run there."""
    if method == "alpha-crown":  # on the graph the MIP encodes (a float64 problem), never looser than CROWN
        from fastcert.algorithms.alpha import network_alpha_crown

        return network_alpha_crown(net, shape, prob, C, C_exact, opts)[:2]
    if net.chain and (opts is None or opts.intermediate == "intersect"):
        return linear_bounds(net.layers_for(shape), prob, C, method, lower_slope, C_exact=C_exact, opts=opts)
    return graph_bounds(net.graph_for(shape), prob, C, method, lower_slope, C_exact=C_exact, opts=opts)


def nonlinear_kinds(net: Any, shape: tuple[int, ...]) -> list[str]:
    """The sorted kinds of the network's nonlinear nodes ("relu", "sigmoid", "maxpool", ...)."""
    g = net.graph_for(shape)
    return sorted({nd.prim.kind for nd in g.nodes[1:] if is_nonlinear(nd.prim)})
