"""VNN-COMP instances: loading (an ONNX network + a VNN-LIB specification), the result of one instance and
the competition's result file."""

from __future__ import annotations

import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from fastcert.io.vnnlib import Spec, VnnlibError, load_vnnlib
from fastcert.network import Network

__all__ = ["VERDICTS", "Instance", "VnnResult", "format_result", "load_instance", "load_network", "resolve_path",
           "result_record", "write_result"]

VERDICTS = ("sat", "unsat", "timeout", "unknown")


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


@dataclass(frozen=True)
class VnnResult:
    """Outcome of one instance.

    verdict: one of :data:`VERDICTS`. reason: a sentence saying how it was decided (or why not).
    stage: "attack", "bounds:<method>", "bab" (branch and bound), "mip", "load" or "" (undecided).
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


def result_record(inst: Instance, res: VnnResult, timeout: float, out: str | None) -> dict[str, Any]:
    """The JSON record of ``fastcert vnncomp --json`` (without the client-side start-up figures)."""
    det = {k: (round(v, 4) if math.isfinite(v) else str(v)) if isinstance(v, float) else v
           for k, v in res.details.items()}
    return {"verdict": res.verdict, "reason": res.reason, "stage": res.stage, "onnx": str(inst.onnx_path),
            "vnnlib": str(inst.vnnlib_path), "timeout_s": timeout, "load_s": round(inst.load_s, 4),
            "solve_s": round(res.time_s, 4), "out": out, "details": det}
