"""VNN-COMP instances: one ONNX network + one VNN-LIB specification -> ``sat`` / ``unsat`` / ``timeout`` /
``unknown``, with the competition's result file.

Strategy inside the time limit (:func:`solve_instance`):

1. **Attack.** Batched PGD (sign steps scaled by each input's box width, random restarts) on every
   conjunction of every disjunct at once, minimising ``max_rows (A y - b)`` in float64 with an autograd
   twin of the network. ``sat`` is answered only for a *proved* counterexample
   (:func:`fastcert.confirm.confirm_point`): the point lies in a disjunct's box exactly and fastcert's
   rigorous bounds at that point satisfy every row of one of its conjunctions (a violation by rounding
   of the float64 forward pass is none); the point is first moved onto float32-representable inputs
   inside the box when that keeps it a proved counterexample, so that a float32 checker reads the same
   input. Every ``sat`` of the later stages goes through the same check.
2. **Incomplete bounds.** CROWN (IBP when the network has an activation without a linear relaxation,
   such as sigmoid or tanh) bounds every row ``A_i y`` over each disjunct's box; a conjunction is
   infeasible when one of its rows has ``lower > b_i``; ``unsat`` when every conjunction is.
3. **MIP** (ReLU networks only) on the conjunctions left open: ``fastcert.mip.solve_property`` when the
   installed fastcert has it, else :func:`fastcert.verify` per row (the row ``A_i y - b_i`` is appended
   to the network as a final linear layer).

A network that fastcert cannot import (max pooling, residual graphs, ...) or a specification it cannot
read is answered ``unknown`` with the reason; nothing is guessed. ``timeout`` means the time limit ran out
with conjunctions still open and something left to try; ``unknown`` means every applicable method ran
and none decided (e.g. a sigmoid network that IBP cannot verify and the attack cannot break).

Result file (VNN-COMP 2022): the verdict on the first line; for ``sat`` the assignment follows as
``((X_0 v)`` / ``(X_1 v)`` / ... / ``(Y_0 v)`` / ... ``)``, values written with ``repr`` (exact float64),
which :func:`fastcert.io.read_counterexample` reads back.
"""

from __future__ import annotations

import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from fastcert.confirm import confirm_point
from fastcert.io.vnnlib import Spec, VnnlibError, load_vnnlib
from fastcert.layers import Activation, Conv2d, Dense, Diag
from fastcert.network import Network

__all__ = ["VERDICTS", "Instance", "TorchTwin", "VnnResult", "format_result", "handle_request", "load_instance",
           "resolve_path", "result_record", "serve", "solve_instance", "write_result"]

VERDICTS = ("sat", "unsat", "timeout", "unknown")
#: The MIP is not started with less time than this left: building the model (sparse convolution
#: matrices, pre-activation bounds) is not covered by the solver's own time limit.
MIN_MIP_S = 1.0


# --------------------------------------------------------------------------- loading


def resolve_path(path: str | os.PathLike[str], base: str | os.PathLike[str] | None = None) -> Path:
    """``path`` (relative to ``base`` when given and not absolute), or ``path + ".gz"`` when only the
    gzipped copy exists (VNN-COMP 2022 ships ``X.vnnlib.gz`` for ``X.vnnlib``). Raises
    ``FileNotFoundError`` naming both candidates."""
    p = Path(path)
    if base is not None and not p.is_absolute():
        p = Path(base) / p
    if p.is_file():
        return p
    gz = p.with_name(p.name + ".gz")
    if gz.is_file():
        return gz
    if p.exists():
        raise FileNotFoundError(f"{p} is not a regular file (a directory?): pass the path of the file itself")
    raise FileNotFoundError(f"no such file: {p} (nor {gz.name}); check the path")


@dataclass
class Instance:
    """A loaded instance. ``net`` / ``spec`` are None when they could not be read; ``problem`` then says
    why (the instance is answered ``unknown``)."""

    onnx_path: Path
    vnnlib_path: Path
    net: Network | None
    input_shape: tuple[int, ...] | None
    spec: Spec | None
    load_s: float
    problem: str = ""
    info: dict[str, Any] = field(default_factory=dict)


def load_network(onnx_path: str | os.PathLike[str]) -> tuple[Network | None, tuple[int, ...] | None, dict, str]:
    """``(net, input_shape, info, problem)``: ``problem`` is "" on success, else the reason the network
    cannot be verified (an unsupported ONNX operator, a corrupt file)."""
    from fastcert.io.onnx_import import OnnxImportError, load_onnx

    try:
        net, shape, info = load_onnx(onnx_path)
    except (OnnxImportError, ValueError) as exc:
        return None, None, {}, f"network not supported by fastcert: {str(exc).strip()}"
    return net, tuple(shape), info, ""


def load_instance(onnx_path: str | os.PathLike[str], vnnlib_path: str | os.PathLike[str], *,
                  base: str | os.PathLike[str] | None = None,
                  cache: dict[tuple, tuple] | None = None) -> Instance:
    """Resolve (``.gz`` fallback), load and parse one instance. ``cache`` (path -> loaded network) lets
    suite (or a server) load each network once. Missing files raise ``FileNotFoundError``; unsupported content is
    reported in ``Instance.problem``."""
    t0 = time.perf_counter()
    op = resolve_path(onnx_path, base)
    vp = resolve_path(vnnlib_path, base)
    st = op.stat()
    key = (op.resolve(), st.st_mtime_ns, st.st_size)  # a rewritten file is loaded again
    if cache is not None and key in cache:
        net, shape, info, problem = cache[key]
    else:
        net, shape, info, problem = load_network(op)
        if cache is not None:
            cache[key] = (net, shape, info, problem)
    spec = None
    if not problem:
        try:
            spec = load_vnnlib(vp, info["n_inputs"], info["n_outputs"])
        except VnnlibError as exc:
            problem = f"specification not supported: {exc}"
    return Instance(op, vp, net, shape, spec, time.perf_counter() - t0, problem, info)


# --------------------------------------------------------------------------- autograd twin


class TorchTwin(nn.Module):
    """A plain-torch (autograd) float64 evaluation of fastcert IR layers, for gradient attacks.

    ``forward(x: [N, *input_shape]) -> [N, n_out]``. fastcert's own ``Network.forward`` runs compiled
    kernels without gradients; this twin computes the same function with torch ops (up to rounding,
    so counterexamples are always re-checked with ``Network.forward``)."""

    def __init__(self, net: Network, input_shape: tuple[int, ...]) -> None:
        super().__init__()
        self.input_shape = tuple(input_shape)
        self.layers = net.layers_for(self.input_shape)
        for L in self.layers:
            if not isinstance(L, (Dense, Conv2d, Diag, Activation)):  # pragma: no cover - IR has no others
                raise TypeError(f"TorchTwin: no torch evaluation of layer {type(L).__name__}")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = x.reshape(x.shape[0], -1)
        for L in self.layers:
            if isinstance(L, Dense):
                h = nn.functional.linear(h, L.W64, L.b64)
            elif isinstance(L, Conv2d):
                h = nn.functional.conv2d(h.reshape(h.shape[0], *L.in_shape), L.W64, L.b64, stride=L.stride,
                                         padding=L.padding).reshape(h.shape[0], -1)
            elif isinstance(L, Diag):
                h = torch.addcmul(L.b64, h, L.W64)
            else:
                h = L.forward(h)
        return h


# --------------------------------------------------------------------------- result


@dataclass(frozen=True)
class VnnResult:
    """Outcome of one instance.

    verdict: one of :data:`VERDICTS`. reason: a sentence saying how it was decided (or why not).
    stage: "attack", "bounds:<method>", "mip", "load" or "" (undecided).
    counterexample / output: for ``sat``, the proved input x (flat, ONNX row-major order; exactly the
    point that was checked) and fastcert's float64 f(x), both float64 arrays; else None.
    time_s: seconds spent in :func:`solve_instance`. details: per-stage timings and counts.
    """

    verdict: str
    reason: str
    stage: str = ""
    counterexample: np.ndarray | None = None
    output: np.ndarray | None = None
    time_s: float = 0.0
    details: dict[str, Any] = field(default_factory=dict)


def format_result(res: VnnResult) -> str:
    """The VNN-COMP result file text: the verdict, then for ``sat`` the ``((X_i v) ... (Y_j v))`` list."""
    if res.verdict not in VERDICTS:
        raise ValueError(f"verdict must be one of {VERDICTS}, got {res.verdict!r}")
    if res.verdict != "sat":
        return res.verdict + "\n"
    if res.counterexample is None or res.output is None:
        raise ValueError("a sat result needs its counterexample and the network's output at it")
    pairs = [f"(X_{i} {float(v)!r})" for i, v in enumerate(res.counterexample)]
    pairs += [f"(Y_{j} {float(v)!r})" for j, v in enumerate(res.output)]
    return "sat\n(" + "\n".join(pairs) + ")\n"


def write_result(path: str | os.PathLike[str], res: VnnResult) -> None:
    """Write :func:`format_result` to ``path`` atomically (a temporary file, then a rename)."""
    p = Path(path)
    tmp = p.with_name(f".{p.name}.tmp{os.getpid()}")
    tmp.write_text(format_result(res))
    os.replace(tmp, p)


# --------------------------------------------------------------------------- solving


@dataclass
class _Targets:
    """All (disjunct, conjunction) pairs as one batch. lo, hi: [T, n]; A: [T, m, K]; b: [T, m] (padded
    rows have A = 0, b = +inf, so they never raise the max)."""

    pairs: list[tuple[int, int]]
    lo: torch.Tensor
    hi: torch.Tensor
    A: torch.Tensor
    b: torch.Tensor

    @staticmethod
    def of(spec: Spec) -> _Targets:
        pairs = [(d, k) for d, p in enumerate(spec) for k in range(len(p.constraints))]
        m = max(max(1, spec[d].constraints[k][0].shape[0]) for d, k in pairs)
        T, K = len(pairs), spec.n_outputs
        A = torch.zeros(T, m, K, dtype=torch.float64)
        b = torch.full((T, m), math.inf, dtype=torch.float64)
        for t, (d, k) in enumerate(pairs):
            Ak, bk = spec[d].constraints[k]
            A[t, : Ak.shape[0]] = torch.from_numpy(Ak)
            b[t, : Ak.shape[0]] = torch.from_numpy(bk)
            if Ak.shape[0] == 0:  # an empty conjunction holds everywhere in the box
                b[t, 0] = 0.0
        lo = torch.stack([torch.from_numpy(spec[d].lo) for d, _ in pairs])
        hi = torch.stack([torch.from_numpy(spec[d].hi) for d, _ in pairs])
        return _Targets(pairs, lo, hi, A, b)

    def value(self, y: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
        """max over the rows of ``A y - b`` for targets ``idx``; y: [N, K]."""
        return (torch.einsum("nmk,nk->nm", self.A[idx], y) - self.b[idx]).amax(1)


def _attack(twin: TorchTwin, tg: _Targets, targets: list[int], deadline: float, *, restarts: int, steps: int,
            seed: int) -> tuple[np.ndarray | None, float]:
    """Batched PGD on ``targets`` (indices into ``tg``), ``restarts`` random starts each (the first at the
    box centre); returns ``(x, value)`` of the best point, x None unless its value is < 0."""
    T = len(targets)
    if T == 0:
        return None, math.inf
    gen = torch.Generator().manual_seed(seed)
    idx = torch.tensor(targets, dtype=torch.int64).repeat(restarts)
    lo, hi = tg.lo[idx], tg.hi[idx]
    width = hi - lo
    x = lo + width * torch.rand(lo.shape, generator=gen, dtype=torch.float64)
    x[:T] = 0.5 * (lo[:T] + hi[:T])
    x = torch.minimum(torch.maximum(x, lo), hi)
    best_v, best_x = math.inf, None
    for s in range(steps):
        xr = x.detach().requires_grad_(True)
        v = tg.value(twin(xr.reshape(-1, *twin.input_shape)), idx)
        vd = v.detach()
        i = int(torch.argmin(vd))
        if float(vd[i]) < best_v:
            best_v, best_x = float(vd[i]), x[i].detach().clone()
        if best_v < 0 or time.perf_counter() >= deadline:
            break
        (g,) = torch.autograd.grad(v.sum(), xr)
        alpha = 0.02 + 0.23 * 0.5 * (1 + math.cos(math.pi * s / steps))  # cosine from 0.25 to 0.02
        x = torch.minimum(torch.maximum(x - alpha * width * torch.sign(g), lo), hi)
    if best_x is None or best_v >= 0:
        return None, best_v
    return best_x.numpy(), best_v


def _confirm(net: Network, shape: tuple[int, ...], spec: Spec, x: np.ndarray) -> np.ndarray | None:
    """The proved counterexample to report for the candidate ``x`` (its float32-representable version
    when that is one, else ``x``), or None: :func:`fastcert.confirm.confirm_point` (``x`` in a box
    exactly, the conjunction proved by fastcert's rigorous bounds at that point)."""
    return confirm_point(net, shape, list(spec), x)


def _eval(net: Network, shape: tuple[int, ...], x: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return net.forward(torch.from_numpy(x.copy()).reshape(1, *shape)).reshape(-1).double().numpy()


def _region(lo: np.ndarray, hi: np.ndarray, shape: tuple[int, ...]) -> tuple[torch.Tensor, float, torch.Tensor,
                                                                              torch.Tensor]:
    """An L-inf ball containing the box [lo, hi] (intersected with it by x_min / x_max): (x, eps, lo, hi)."""
    c = 0.5 * lo + 0.5 * hi
    c = np.minimum(np.maximum(c, lo), hi)
    eps = float(max(np.max(hi - c), np.max(c - lo), 0.0)) * (1 + 1e-12) + 1e-300
    t = torch.from_numpy
    return t(c).reshape(1, *shape), eps, t(lo.copy()).reshape(shape), t(hi.copy()).reshape(shape)


def _bounds_stage(net: Network, shape: tuple[int, ...], spec: Spec, tg: _Targets, method: str,
                  open_: list[bool], lower: dict[tuple[int, int], np.ndarray]) -> None:
    """Mark as closed (False) the targets with a row whose lower bound exceeds its b."""
    from fastcert.api import bounds

    for d, p in enumerate(spec):
        ts = [t for t, (dd, _) in enumerate(tg.pairs) if dd == d and open_[t]]
        if not ts:
            continue
        rows = [p.constraints[tg.pairs[t][1]] for t in ts]
        C = np.concatenate([A for A, _ in rows if A.shape[0]] or [np.zeros((0, spec.n_outputs))])
        if C.shape[0] == 0:
            continue
        x, eps, lo, hi = _region(p.lo, p.hi, shape)
        res = bounds(net, x, eps, "inf", method=method, C=torch.from_numpy(C), x_min=lo, x_max=hi)
        lb = res.lower[0].double().numpy()
        r = 0
        for t, (A, b) in zip(ts, rows):
            m = A.shape[0]
            lower[tg.pairs[t]] = lb[r:r + m] - b
            if m and np.any(lb[r:r + m] > b):
                open_[t] = False
            r += m


def _with_row(net: Network, shape: tuple[int, ...], a: np.ndarray, b: float) -> Network:
    """The network followed by the scalar output ``a . y - b``."""
    from fastcert.network import LayerOp

    W = torch.from_numpy(np.ascontiguousarray(a, dtype=np.float64)).reshape(1, -1)
    op = LayerOp("linear", "vnnlib row", {"W": W, "b": torch.tensor([-float(b)], dtype=torch.float64)})
    return Network(list(net._ops) + [op], shape)


def _mip_stage(net: Network, shape: tuple[int, ...], spec: Spec, tg: _Targets, open_: list[bool],
               lower: dict[tuple[int, int], np.ndarray], deadline: float) -> tuple[np.ndarray | None, str]:
    """Close open targets by MIP; returns ``(counterexample or None, note)``."""
    from fastcert import mip

    solve_property = getattr(mip, "solve_property", None)
    if solve_property is not None:  # the complete MIP of fastcert.mip on the whole specification
        left = deadline - time.perf_counter()
        verdict, cex, _info = solve_property(net, spec, left)
        if verdict == "sat" and cex is not None:
            return np.asarray(cex, dtype=np.float64).reshape(-1), "mip.solve_property"
        if verdict == "unsat":
            open_[:] = [False] * len(open_)
        return None, f"mip.solve_property: {verdict}"
    # fallback: fastcert.verify on each row of each open conjunction (most promising rows first)
    jobs = [t for t in range(len(tg.pairs)) if open_[t]]
    for n_done, t in enumerate(jobs):
        d, k = tg.pairs[t]
        A, b = spec[d].constraints[k]
        gaps = lower.get((d, k), np.zeros(A.shape[0]))
        for i in np.argsort(-gaps):
            left = deadline - time.perf_counter()
            if left <= 0.05:
                return None, "time limit reached during MIP"
            budget = left / max(1, len(jobs) - n_done)
            x, eps, lo, hi = _region(spec[d].lo, spec[d].hi, shape)
            res = mip.verify(_with_row(net, shape, A[i], b[i]), x, eps, "inf", C=torch.ones(1, 1), x_min=lo,
                             x_max=hi, time_limit=budget)[0][0]
            if res.verdict == "verified":
                open_[t] = False
                break
            if res.verdict == "falsified" and res.counterexample is not None and A.shape[0] == 1:
                return res.counterexample.reshape(-1).double().numpy(), "fastcert.verify"
    return None, "fastcert.verify per row"


def solve_instance(inst: Instance, timeout: float, *, seed: int = 0, attack_fraction: float = 0.15,
                   restarts: int = 4, steps: int = 100, use_mip: bool = True) -> VnnResult:
    """Decide one loaded instance within ``timeout`` seconds (see the module docstring)."""
    t0 = time.perf_counter()
    deadline = t0 + float(timeout)
    det: dict[str, Any] = {}

    def done(verdict: str, reason: str, stage: str = "", x: np.ndarray | None = None) -> VnnResult:
        y = _eval(inst.net, inst.input_shape, x) if x is not None else None  # type: ignore[arg-type]
        return VnnResult(verdict, reason, stage, x, y, time.perf_counter() - t0, det)

    if inst.problem or inst.net is None or inst.spec is None:
        return done("unknown", inst.problem or "instance not loaded", "load")
    net, shape, spec = inst.net, inst.input_shape, inst.spec
    assert shape is not None
    layers = net.layers_for(shape)
    acts = sorted({L.kind for L in layers if isinstance(L, Activation)})
    relu_only = all(a == "relu" for a in acts)
    method = "crown" if relu_only else "ibp"
    tg = _Targets.of(spec)
    det.update(n_disjuncts=len(spec), n_targets=len(tg.pairs), activations=acts, bounds_method=method)

    twin = TorchTwin(net, shape)
    open_ = [True] * len(tg.pairs)
    budget = attack_fraction * timeout if timeout < 60 else min(10.0, attack_fraction * timeout)

    def attack(phase: int, share: float, n_restarts: int, n_steps: int) -> VnnResult | None:
        t = time.perf_counter()
        todo = [i for i in range(len(tg.pairs)) if open_[i]]
        x, v = _attack(twin, tg, todo, min(deadline, t + share * budget), restarts=n_restarts, steps=n_steps,
                       seed=seed + phase)
        det[f"attack{phase}_s"] = time.perf_counter() - t
        det["attack_best"] = min(v, det.get("attack_best", math.inf))
        if x is not None:
            xc = _confirm(net, shape, spec, x)
            if xc is not None:
                return done("sat", f"PGD found a counterexample (proved by rigorous bounds at the point; "
                            f"float64 value {v:.3g})", "attack", xc)
        if time.perf_counter() >= deadline:
            return done("timeout", "time limit reached during the attack")
        return None

    # 1. a quick attack on every conjunction
    res = attack(0, 0.25, 2, max(10, steps // 5))
    if res is not None:
        return res
    # 2. incomplete bounds
    tb = time.perf_counter()
    lower: dict[tuple[int, int], np.ndarray] = {}
    _bounds_stage(net, shape, spec, tg, method, open_, lower)
    det.update(bounds_s=time.perf_counter() - tb, open_after_bounds=sum(open_))
    if not any(open_):
        return done("unsat", f"{method.upper()} bounds prove every disjunct infeasible", f"bounds:{method}")
    # 3. a longer attack on the conjunctions still open
    res = attack(1, 0.75, restarts, steps)
    if res is not None:
        return res
    best = det["attack_best"]

    # 4. MIP
    if not relu_only:
        other = ", ".join(a for a in acts if a != "relu")
        return done("unknown", f"{sum(open_)} of {len(open_)} conjunctions not decided: the network has {other} "
                    f"activations, for which fastcert has only interval (IBP) bounds and no MIP encoding, and "
                    f"the attack found no counterexample (best value {best:.3g})")
    if not use_mip:
        return done("unknown", f"{sum(open_)} of {len(open_)} conjunctions not decided by attack and bounds "
                    f"(MIP disabled)")
    if deadline - time.perf_counter() < MIN_MIP_S:
        return done("timeout", f"time limit reached: less than {MIN_MIP_S:g} s left for the MIP, with "
                    f"{sum(open_)} of {len(open_)} conjunctions open")
    tm = time.perf_counter()
    cex, note = _mip_stage(net, shape, spec, tg, open_, lower, deadline)
    det.update(mip_s=time.perf_counter() - tm, mip=note, open_after_mip=sum(open_))
    if cex is not None:
        xc = _confirm(net, shape, spec, cex)
        if xc is not None:
            return done("sat", f"MIP found a counterexample ({note}; proved by rigorous bounds at the point)",
                        "mip", xc)
    if not any(open_):
        return done("unsat", f"bounds + MIP ({note}) prove every disjunct infeasible", "mip")
    if time.perf_counter() >= deadline - 0.05:
        return done("timeout", f"time limit reached with {sum(open_)} of {len(open_)} conjunctions open")
    return done("unknown", f"{sum(open_)} of {len(open_)} conjunctions not decided by attack, {method} and MIP "
                f"({note})")


# --------------------------------------------------------------------------- warm server


def result_record(inst: Instance, res: VnnResult, timeout: float, out: str | None) -> dict[str, Any]:
    """The JSON record of ``fastcert vnncomp --json`` (without the client-side start-up figures)."""
    det = {k: (round(v, 4) if math.isfinite(v) else str(v)) if isinstance(v, float) else v
           for k, v in res.details.items()}
    return {"verdict": res.verdict, "reason": res.reason, "stage": res.stage, "onnx": str(inst.onnx_path),
            "vnnlib": str(inst.vnnlib_path), "timeout_s": timeout, "load_s": round(inst.load_s, 4),
            "solve_s": round(res.time_s, 4), "out": out, "details": det}


def handle_request(req: dict[str, Any], cache: dict[tuple, tuple]) -> dict[str, Any]:
    """Serve one request ``{"onnx", "vnnlib", "timeout", "out"?, "seed"?, "use_mip"?}`` (absolute paths):
    solve, write ``out`` if given, return :func:`result_record`; ``{"error", "kind"}`` on failure
    (kind "usage" for a bad request or path, "internal" otherwise)."""
    try:
        onnx, vnn = str(req["onnx"]), str(req["vnnlib"])
        timeout = float(req.get("timeout", 60.0))
        if not (timeout > 0 and math.isfinite(timeout)):
            raise ValueError(f"timeout must be a finite number > 0, got {timeout}")
        inst = load_instance(onnx, vnn, cache=cache)
    except (KeyError, TypeError, ValueError, FileNotFoundError) as exc:
        return {"error": str(exc) if not isinstance(exc, KeyError) else f"missing field {exc}", "kind": "usage"}
    try:
        res = solve_instance(inst, timeout, seed=int(req.get("seed", 0)), use_mip=bool(req.get("use_mip", True)))
        out = req.get("out")
        if out:
            write_result(out, res)
        return result_record(inst, res, timeout, out)
    except Exception as exc:  # noqa: BLE001 - the server keeps running; the client reports the error
        return {"error": f"{type(exc).__name__}: {exc}".splitlines()[0], "kind": "internal"}


def serve(socket_path: str | os.PathLike[str], *, idle_timeout: float | None = None,
          preload: tuple[str, ...] = (), log: Any = None) -> int:
    """A warm process for ``fastcert vnncomp --server SOCKET``: listen on a Unix socket, answer one JSON
    request line per connection with one JSON line, keep every loaded network. Stops on a
    ``{"cmd": "shutdown"}`` request, after ``idle_timeout`` seconds without requests, or on SIGTERM /
    Ctrl-C; the socket file is removed. ``preload``: ONNX files to load before listening."""
    import json
    import signal
    import socket
    import sys

    log = log if log is not None else sys.stderr
    cache: dict[tuple, tuple] = {}
    from fastcert import mip  # noqa: F401  (warm every import a request may need)

    for p in preload:
        rp = resolve_path(p)
        st = rp.stat()
        cache[(rp.resolve(), st.st_mtime_ns, st.st_size)] = load_network(rp)
    path = os.fspath(socket_path)
    if os.path.exists(path):
        probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            probe.connect(path)
            raise RuntimeError(f"a server is already listening on {path}; stop it with "
                               f"'fastcert serve --socket {path} --stop'")
        except (ConnectionRefusedError, FileNotFoundError):
            os.unlink(path)  # a stale socket file
        finally:
            probe.close()
    srv = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    srv.bind(path)
    srv.listen(8)
    srv.settimeout(idle_timeout)
    def on_term(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    import threading

    main_thread = threading.current_thread() is threading.main_thread()  # signals: main thread only
    prev = signal.signal(signal.SIGTERM, on_term) if main_thread else None
    print(f"fastcert serve: listening on {path} ({len(cache)} networks preloaded)", file=log, flush=True)
    try:
        while True:
            try:
                conn, _ = srv.accept()
            except TimeoutError:
                print(f"fastcert serve: idle for {idle_timeout:g} s, stopping", file=log)
                return 0
            with conn:
                conn.settimeout(None)
                data = b""
                while not data.endswith(b"\n"):
                    chunk = conn.recv(65536)
                    if not chunk:
                        break
                    data += chunk
                try:
                    req = json.loads(data.decode() or "null")
                    if not isinstance(req, dict):
                        raise TypeError("expected a JSON object")
                except (TypeError, ValueError) as exc:
                    reply: dict[str, Any] = {"error": f"bad request: {exc}", "kind": "usage"}
                else:
                    cmd = req.get("cmd", "solve")
                    if cmd == "shutdown":
                        conn.sendall(b'{"ok": true}\n')
                        return 0
                    reply = {"ok": True, "pid": os.getpid()} if cmd == "ping" else handle_request(req, cache)
                try:
                    conn.sendall((json.dumps(reply) + "\n").encode())
                except OSError:
                    pass  # the client went away (its own timeout); keep serving
    except KeyboardInterrupt:
        return 0
    finally:
        if main_thread:
            signal.signal(signal.SIGTERM, prev)
        srv.close()
        if os.path.exists(path):
            os.unlink(path)
