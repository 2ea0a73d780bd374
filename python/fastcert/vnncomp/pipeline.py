"""``solve_instance``: one loaded VNN-COMP instance through the property pipeline of
:func:`fastcert.mip.decide` (attack -> incomplete bounds -> attack -> LP -> MIP, each stage once), with
the VNN-COMP options below."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from fastcert.mip import AttackPhase, PropertyOptions, decide
from fastcert.network import Network
from fastcert.vnncomp.instance import Instance, VnnResult

__all__ = ["VnnOptions", "solve_instance"]


@dataclass(frozen=True)
class VnnOptions:
    """The attack budget is ``min(attack_fraction * timeout, attack_cap_s)``: a quarter before the bounds
    (2 restarts, ``steps // 5`` steps, at least 10), the rest after them on the conjunctions still open
    (``restarts`` x ``steps``). min_mip_s: the LP / MIP stages do not start with less time left (building
    the model, sparse convolution matrices and pre-activation bounds, is not covered by HiGHS's limit).
    bab_fraction: branch and bound's share of the time left before the LP / MIP; input_split_dims: networks
    with at most this many inputs are branched on their inputs, others on their ReLUs. mip_beside_bab: on
    ReLU networks branched on their ReLUs, the LP / MIP runs on a second thread beside BaB (both with the
    whole time left) instead of after it with ``1 - bab_fraction`` of it."""

    attack_fraction: float = 0.15
    attack_cap_s: float = 10.0
    restarts: int = 4
    steps: int = 100
    min_mip_s: float = 1.0
    use_mip: bool = True
    seed: int = 0
    bab_fraction: float = 0.7
    input_split_dims: int = 16
    mip_beside_bab: bool = True

    def property_options(self) -> PropertyOptions:
        f, cap = self.attack_fraction, self.attack_cap_s
        early = AttackPhase(2, max(10, self.steps // 5), 0.25 * f, 0.25 * cap, "cosine")
        main = AttackPhase(self.restarts, self.steps, 0.75 * f, 0.75 * cap, "cosine")
        return PropertyOptions(bounds_method=None, early_attack=early, attack=main, use_mip=self.use_mip,
                               min_mip_s=self.min_mip_s, seed=self.seed, bab_fraction=self.bab_fraction,
                               input_split_dims=self.input_split_dims, mip_beside_bab=self.mip_beside_bab)


def _eval(net: Network, shape: tuple[int, ...], x: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return net.forward(torch.from_numpy(x.copy()).reshape(1, *shape)).reshape(-1).double().numpy()


#: the pipeline's stage -> the stage reported for a decided instance ("" when undecided)
_STAGES = {"attack": "attack", "lp": "mip", "mip": "mip", "bounds": "bounds", "bab": "bab"}


def _details(info: dict[str, Any]) -> dict[str, Any]:
    keys = ("n_disjuncts", "n_conjunctions", "activations", "bounds_method", "attack0_s", "attack1_s", "attack_best",
            "bounds_s", "open_after_bounds", "bab_s", "bab_strategy", "bab", "bab_error", "lp_s", "mip_s")
    det = {k: info[k] for k in keys if k in info}
    det["open"] = info.get("open", 0)
    return det


def solve_instance(inst: Instance, timeout: float, *, seed: int = 0, attack_fraction: float = 0.15,
                   restarts: int = 4, steps: int = 100, use_mip: bool = True,
                   options: VnnOptions | None = None) -> VnnResult:
    """Decide one loaded instance within ``timeout`` seconds (see :mod:`fastcert.vnncomp`).
    options: a :class:`VnnOptions` (the keywords are then ignored)."""
    t0 = time.perf_counter()
    opts = options or VnnOptions(attack_fraction=attack_fraction, restarts=restarts, steps=steps, use_mip=use_mip,
                                 seed=seed)
    if inst.problem or inst.net is None or inst.spec is None:
        return VnnResult("unknown", inst.problem or "instance not loaded", "load", time_s=time.perf_counter() - t0)
    shape = inst.input_shape
    assert shape is not None
    verdict, x, info = decide(inst.net, tuple(shape), list(inst.spec), float(timeout), opts.property_options(),
                              t_start=t0)
    stage = info["stage"]
    stage = (stage if stage.startswith("bounds:") else _STAGES.get(stage, "")) if verdict in ("sat", "unsat") else ""
    y = _eval(inst.net, tuple(shape), x) if x is not None else None
    return VnnResult(verdict, info["reason"], stage, x, y, time.perf_counter() - t0, _details(info))
