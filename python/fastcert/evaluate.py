"""Robust-error evaluation in the style of the MMR paper (Croce, Andriushchenko & Hein, *Provable
robustness of ReLU networks via maximization of linear regions*, AISTATS 2019, Table 1): on a slice of a
dataset, for each radius eps,

* **clean error**: misclassified at x;
* **PGD error**: misclassified, or :func:`fastcert.attacks.pgd` finds an adversarial example;
* **lower bound** on the robust error: PGD error plus the samples for which the MIP
  (:func:`fastcert.verify`) finds a re-executed counterexample;
* **upper bound** on the robust error: every sample that is neither certified by the incomplete bound
  (``method``, CROWN by default) nor proven robust by the MIP within its time limit (misclassified
  samples included).

So ``clean <= PGD <= lower <= true robust error <= upper``. The MIP runs only on the samples left open
by the attack and the incomplete bound, row by row (the margins ``f_y - f_j`` whose incomplete lower
bound is not already > 0, the most negative first), stopping at the first falsified row; the per-sample
time limit is shared by its open rows. Networks with non-ReLU activations get no MIP (the bounds then
come from the attack and the incomplete method alone, and the table says so).

``python -m fastcert evaluate`` / ``fastcert evaluate`` wraps :func:`evaluate`: by default the demo's
MLP on scikit-learn's digits (trained once and cached, see :mod:`fastcert.demo`), or an ONNX file, a
pickled ``nn.Module`` (``torch.save(model)``), and data from the digits, an ``.npz`` (``x``, ``y``) or
an ERAN-style CSV (``label,p0,p1,...`` with pixels 0..255).
"""

from __future__ import annotations

import math
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, TextIO

import numpy as np
import torch
from torch import nn

__all__ = ["EvaluationResult", "evaluate", "format_table", "load_data", "load_model"]

STATUSES = ("misclassified", "pgd", "mip-falsified", "certified", "mip-verified", "open")


@dataclass(frozen=True)
class EvaluationResult:
    """One row of the table (fractions in [0, 1]; times in seconds).

    status: per sample, one of :data:`STATUSES` (``open``: neither attacked nor proven).
    mip: ``None`` when the MIP could not run (non-ReLU network, L2 norm) with ``mip_note`` saying why.
    """

    n: int
    eps: float
    norm: str
    method: str
    clean_error: float
    pgd_error: float
    lower_bound: float
    upper_bound: float
    bound_error: float  # 1 - certified by the incomplete method alone (the upper bound before the MIP)
    n_mip: int
    n_mip_verified: int
    n_mip_falsified: int
    mip_time_limit: float
    times: dict[str, float]
    status: list[str] = field(repr=False)
    mip_note: str = ""

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def _relu_only(net: Any, shape: tuple[int, ...]) -> tuple[bool, list[str]]:
    """Whether fastcert.mip can encode the network (ReLU and max pooling only), and its nonlinear kinds."""
    from fastcert.algorithms.dispatch import nonlinear_kinds

    kinds = nonlinear_kinds(net, shape)
    return all(k in ("relu", "maxpool") for k in kinds), kinds


def evaluate(model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float, *, norm: str = "inf",
             method: str = "crown", x_min: Any = 0.0, x_max: Any = 1.0, mip_time_limit: float = 10.0,
             pgd_steps: int = 100, pgd_restarts: int = 5, seed: int = 0, network: Any = None,
             progress: bool = False) -> EvaluationResult:
    """Evaluate ``model`` on ``x: [N, *input_shape]`` with labels ``y: [N]`` at radius ``eps``.

    ``model`` is the torch module attacked (any differentiable nn.Module in x's dtype); ``network`` the
    :class:`fastcert.Network` bounded and MIP-encoded (default: converted from ``model``; pass it when the
    model is a twin of an ONNX network). ``mip_time_limit`` is per sample (0 disables the MIP).
    """
    import fastcert
    from fastcert import attacks
    from fastcert.network import as_network

    t_all = time.perf_counter()
    times: dict[str, float] = {}
    net = network if network is not None else as_network(model)
    N = int(x.shape[0])
    if N == 0:
        raise ValueError("evaluate: empty slice (n = 0)")
    y = torch.as_tensor(y, dtype=torch.int64).reshape(-1)
    if y.shape[0] != N:
        raise ValueError(f"evaluate: {N} inputs but {y.shape[0]} labels")

    t = time.perf_counter()
    with torch.no_grad():
        correct = model(x).argmax(1) == y
    times["clean"] = time.perf_counter() - t

    t = time.perf_counter()
    adv = attacks.pgd(model, x, eps, norm, labels=y, x_min=x_min, x_max=x_max, steps=pgd_steps,
                      restarts=pgd_restarts, seed=seed, early_stop=True)
    attacked = adv.success | ~correct
    times["pgd"] = time.perf_counter() - t

    t = time.perf_counter()
    cert = fastcert.certify(net, x, eps, norm=norm, labels=y, method=method, x_min=x_min, x_max=x_max)
    certified = cert.certified & correct
    times["bound"] = time.perf_counter() - t
    if bool((cert.certified & attacked).any()):  # a sound bound never certifies an attacked sample
        raise RuntimeError("internal: a sample was both certified and successfully attacked; please report this")

    status = ["misclassified" if not c else "pgd" if a else "certified" if v else "open"
              for c, a, v in zip(correct.tolist(), attacked.tolist(), certified.tolist())]
    t = time.perf_counter()
    relu, kinds = _relu_only(net, tuple(x.shape[1:]))
    note = ""
    n_mip = 0
    open_idx = [i for i, s in enumerate(status) if s == "open"]
    if not open_idx:
        pass
    elif mip_time_limit <= 0:
        note = "MIP disabled (--mip-time-limit 0)"
    elif not relu:
        note = (f"no MIP: the network has {', '.join(k for k in kinds if k not in ('relu', 'maxpool'))} "
                f"activations (the MIP encodes ReLU and max pooling only)")
    elif str(norm).lower() in ("2", "l2"):
        note = "no MIP for the L2 norm (not linear-representable)"
    else:
        from tqdm import tqdm

        for i in tqdm(open_idx, desc=f"MIP eps={eps:g}", unit="sample", file=sys.stderr, disable=not progress,
                      leave=False):
            n_mip += 1
            status[i] = _mip_sample(net, x[i : i + 1], int(y[i]), cert.margins[i], eps, norm, x_min, x_max,
                                    mip_time_limit)
    times["mip"] = time.perf_counter() - t
    times["total"] = time.perf_counter() - t_all
    cnt = {s: status.count(s) for s in STATUSES}
    n_pgd = cnt["misclassified"] + cnt["pgd"]
    return EvaluationResult(
        n=N, eps=float(eps), norm=str(norm), method=method, clean_error=cnt["misclassified"] / N,
        pgd_error=n_pgd / N, lower_bound=(n_pgd + cnt["mip-falsified"]) / N,
        upper_bound=(N - cnt["certified"] - cnt["mip-verified"]) / N, bound_error=(N - cnt["certified"]) / N,
        n_mip=n_mip, n_mip_verified=cnt["mip-verified"], n_mip_falsified=cnt["mip-falsified"],
        mip_time_limit=float(mip_time_limit), times=times, status=status, mip_note=note,
    )


def _mip_sample(net: Any, x: torch.Tensor, label: int, margins: torch.Tensor, eps: float, norm: str, x_min: Any,
                x_max: Any, time_limit: float) -> str:
    """"mip-verified", "mip-falsified" or "open" for one sample: the MIP on each margin row whose incomplete
    lower bound is <= 0, most negative first, sharing ``time_limit``; stops at the first falsified row."""
    from fastcert.mip import verify

    K = margins.shape[0]
    rows = sorted((float(margins[j]), j) for j in range(K) if j != label and not float(margins[j]) > 0)
    deadline = time.perf_counter() + time_limit
    for n_left, (_, j) in zip(range(len(rows), 0, -1), rows):
        left = deadline - time.perf_counter()
        if left <= 0:
            return "open"
        C = torch.zeros(1, K, dtype=torch.float64)
        C[0, label], C[0, j] = 1.0, -1.0
        r = verify(net, x, eps, norm, C=C, x_min=x_min, x_max=x_max, time_limit=left / n_left)[0][0]
        if r.verdict == "falsified":
            return "mip-falsified"
        if r.verdict != "verified":
            return "open"
    return "mip-verified"


# --------------------------------------------------------------------------- models and data


def load_model(spec: str | None, *, quiet: bool = True) -> tuple[nn.Module, Any, tuple[int, ...] | None, str]:
    """``(torch module for the attack, fastcert Network or None, input shape or None, description)``.

    ``spec``: None / "mlp" / "cnn" (the demo's digit models, trained once and cached), a ``.onnx``
    (``.onnx.gz``) file, or a pickled full ``nn.Module`` (``.pt`` / ``.pth``, ``torch.save(model)``;
    unpickling runs code from the file, so only load files you trust)."""
    if spec is None or spec in ("mlp", "cnn"):
        from fastcert.demo import TrainConfig, load_or_train
        from fastcert.io.datasets import load_digits_tensors

        name = spec or "mlp"
        x_tr, y_tr, _, _ = load_digits_tensors(torch.float32)
        model, info = load_or_train(name, x_tr, y_tr, TrainConfig(), retrain=False, quiet=quiet)
        model = model.double().eval()
        return model, None, (1, 8, 8), f"demo {name} on sklearn digits ({'cached' if info['cached'] else 'trained'})"
    path = Path(spec)
    if not path.is_file():
        raise FileNotFoundError(f"no such model file: {path} (give an .onnx file, a torch.save()d nn.Module, "
                                f"or 'mlp' / 'cnn' for the demo models)")
    name = path.name.removesuffix(".gz")
    if name.endswith(".onnx"):
        from fastcert.io.onnx_import import load_onnx
        from fastcert.attacks import TorchTwin

        net, shape, _ = load_onnx(path)
        return TorchTwin(net, shape), net, tuple(shape), f"ONNX {path}"
    if name.endswith((".pt", ".pth")):
        obj = torch.load(path, map_location="cpu", weights_only=False)
        if isinstance(obj, torch.jit.ScriptModule):
            raise ValueError(f"{path} is a TorchScript module, which fastcert cannot convert layer by layer; "
                             f"save the nn.Module itself (torch.save(model)) or export it to ONNX")
        if not isinstance(obj, nn.Module):
            raise ValueError(f"{path} holds a {type(obj).__name__}, not an nn.Module (a state_dict needs its "
                             f"architecture: build the model, load_state_dict, then torch.save(model))")
        return obj.double().eval(), None, None, f"torch {path}"
    raise ValueError(f"{path}: unknown model format (expected .onnx, .onnx.gz, .pt or .pth)")


def load_data(spec: str | None, n: int, input_shape: tuple[int, ...] | None) -> tuple[torch.Tensor, torch.Tensor, str]:
    """The first ``n`` samples ``(x float64 [n, *input_shape], y int64 [n], description)``: ``spec`` None /
    "digits" (scikit-learn's test split), an ``.npz`` with arrays ``x`` and ``y``, or a CSV of rows
    ``label,p0,p1,...`` with pixels 0..255 (ERAN's ``mnist_test.csv``), scaled to [0, 1]."""
    if spec is None or spec == "digits":
        from fastcert.io.datasets import load_digits_tensors

        _, _, x, y = load_digits_tensors(torch.float64)
        desc = "sklearn digits test split"
    else:
        path = Path(spec)
        if not path.is_file():
            raise FileNotFoundError(f"no such data file: {path} (give 'digits', an .npz with x and y, or a CSV)")
        if path.suffix == ".npz":
            with np.load(path) as z:
                if "x" not in z or "y" not in z:
                    raise ValueError(f"{path}: an .npz needs arrays named 'x' and 'y', found {sorted(z.files)}")
                x, y = torch.from_numpy(z["x"].astype(np.float64)), torch.from_numpy(z["y"].astype(np.int64))
        else:
            a = np.loadtxt(path, delimiter=",", max_rows=n, ndmin=2)
            y, x = torch.from_numpy(a[:, 0].astype(np.int64)), torch.from_numpy(a[:, 1:] / 255.0)
        desc = str(path)
    x, y = x[:n], y[:n].reshape(-1)
    if input_shape is not None:
        if int(np.prod(x.shape[1:])) != int(np.prod(input_shape)):
            raise ValueError(f"the data has {int(np.prod(x.shape[1:]))} values per sample but the model takes "
                             f"{input_shape}")
        x = x.reshape(x.shape[0], *input_shape)
    elif x.dim() == 2 and math.isqrt(x.shape[1]) ** 2 == x.shape[1]:  # flat square images -> [1, H, W]
        s = math.isqrt(x.shape[1])
        x = x.reshape(-1, 1, s, s)
    return x.double().contiguous(), y, desc


def format_table(results: list[EvaluationResult], header: str = "") -> str:
    """The MMR-style table: one row per eps (percentages) with the time of each stage."""
    lines = [header] if header else []
    lines.append(f"{'eps':>8} {'n':>5} {'clean%':>7} {'PGD%':>7} {'lower%':>7} {'upper%':>7} {'bound%':>7} "
                 f"{'MIP v/f/n':>11} {'t_pgd':>7} {'t_bound':>7} {'t_mip':>7} {'t_total':>7}")
    for r in results:
        mip = f"{r.n_mip_verified}/{r.n_mip_falsified}/{r.n_mip}"
        t = r.times
        lines.append(f"{r.eps:8.4g} {r.n:5d} {100 * r.clean_error:7.2f} {100 * r.pgd_error:7.2f} "
                     f"{100 * r.lower_bound:7.2f} {100 * r.upper_bound:7.2f} {100 * r.bound_error:7.2f} {mip:>11} "
                     f"{t['pgd']:7.2f} {t['bound']:7.2f} {t['mip']:7.2f} {t['total']:7.2f}")
    notes = sorted({r.mip_note for r in results if r.mip_note})
    lines.append(f"(errors in %; lower/upper: bounds on the robust error; bound: not certified by "
                 f"{results[0].method if results else '-'} alone; MIP v/f/n: verified / falsified / run; "
                 f"times in s)")
    lines += [f"note: {n}" for n in notes]
    return "\n".join(lines)


def run_evaluate(*, model: str | None, data: str | None, eps: list[float], n: int, method: str, norm: str,
                 mip_time_limit: float, pgd_steps: int, pgd_restarts: int, x_min: float, x_max: float,
                 seed: int, quiet: bool, out: TextIO) -> list[EvaluationResult]:
    """Load, evaluate at every eps, print the table to ``out``; returns the rows."""
    t0 = time.perf_counter()
    module, net, shape, mdesc = load_model(model, quiet=quiet)
    x, y, ddesc = load_data(data, n, shape)
    load_s = time.perf_counter() - t0
    rows = [evaluate(module, x, y, e, norm=norm, method=method, x_min=x_min, x_max=x_max,
                     mip_time_limit=mip_time_limit, pgd_steps=pgd_steps, pgd_restarts=pgd_restarts, seed=seed,
                     network=net, progress=not quiet) for e in eps]
    head = f"{mdesc}; data: {ddesc} (first {len(x)}); norm {norm}; loaded in {load_s:.2f} s"
    print(format_table(rows, head), file=out)
    return rows
