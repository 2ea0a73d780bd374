"""The float64-evaluation slack of a graph network (the graph form of ``slack.eval_slack``): a bound on
``|C f_float64(x) - C f_exact(x)|`` over the region, so the bounds also hold for torch's float64
evaluation of the network.

E[v] bounds, per neuron, how far a float64 evaluation of node v can be from the exact value: an affine
node adds ``gamma64 g`` and maps the incoming error through ``|W|`` (row sums times the largest incoming
error); an activation multiplies by its Lipschitz constant and adds a few ulps of its output; a sum adds
the errors of both inputs and one rounding of the result; a concatenation concatenates; a max pool takes
the window's largest error (a max is 1-Lipschitz in the max norm and exact in floating point).
"""

from __future__ import annotations

from typing import Any

import torch

from fastcert.algorithms.slack import output_slack
from fastcert.primitives.add import Add
from fastcert.primitives.base import Elementwise
from fastcert.primitives.concat import Concat
from fastcert.primitives.diag import Diag
from fastcert.primitives.maxpool import MaxPool2d
from fastcert.primitives.relu import ReLU
from fastcert.rounding import eta, gamma_for, underflow_slack


def graph_eval_slack(st: Any, C: torch.Tensor, C_exact: torch.Tensor | None = None) -> torch.Tensor:
    """[B, S] bound on the float64-evaluation error of ``C f`` (see the module docstring); ``st`` is a
    :class:`fastcert.algorithms.graph_bounds.GraphPass`."""
    u = torch.finfo(torch.float64).eps / 2
    eta64 = eta(torch.float64)
    g = st.g
    prims = [nd.prim for nd in g.nodes[1:]]
    gamma64 = gamma_for(prims, torch.float64)
    B = C.shape[0]
    E: list[torch.Tensor] = [torch.zeros(B, g.n(0), dtype=torch.float64)]
    for nd in g.nodes[1:]:
        prim = nd.prim
        Ein = [E[i] for i in nd.inputs]
        out = st.box[nd.id]
        if prim.is_affine:
            G = st.G[nd.id]
            uf = underflow_slack(prim.fan_in + 8, torch.float64)
            if isinstance(prim, Diag):
                e = gamma64 * G.double() + prim.forward_abs(Ein[0].contiguous()) + uf
            else:
                e = gamma64 * G.double() + prim.params(torch.float64).rowabs * Ein[0].amax(1, keepdim=True) + uf
            ev_in = getattr(prim, "eval_in", None)
            if ev_in is not None:
                e = e + ev_in[0] * st.box[nd.inputs[0]].mag().double() + ev_in[1]
            ev_out = getattr(prim, "eval_out", None)
            if ev_out is not None:
                e = e + ev_out[0] * out.mag().double() + ev_out[1]
        elif isinstance(prim, (ReLU, Elementwise)):
            if isinstance(prim, Elementwise):  # the primitive's own bound on torch's float64 evaluation
                e = prim.lipschitz * Ein[0] + prim.eval_error(out.mag().double())
            else:  # ReLU
                e = prim.lipschitz * Ein[0] + 4 * u * out.mag().double() + 8 * eta64
        elif isinstance(prim, Add):
            e = (Ein[0] + Ein[1]) * (1 + 4 * u) + 2 * u * out.mag().double()
        elif isinstance(prim, Concat):
            e = prim.forward(*Ein)
        else:
            assert isinstance(prim, MaxPool2d)
            e = prim.forward(Ein[0])
        E.append(e)
    return output_slack(E[-1].contiguous(), st.box[g.output], C, C_exact, gamma64)
