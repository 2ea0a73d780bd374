"""``fastcert demo``: train two small digit classifiers and certify them with every method.

Offline and self-contained: scikit-learn's bundled 8x8 digits, a small MLP and a small CNN trained
on CPU in float32 (cached under ``$FASTCERT_CACHE`` or ``~/.cache/fastcert/``), certified accuracy
at several Linf radii for each method, a table (stdout, or stderr with ``--json``) and a PNG plot.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import sys
import time
from pathlib import Path
from typing import Any, Callable, Sequence, TextIO

import torch
from torch import nn
from tqdm import tqdm

import fastcert
from fastcert.io.datasets import DIGITS_SPLIT_SEED, DIGITS_TEST_FRACTION, load_digits_tensors

METHODS: tuple[str, ...] = ("ibp", "fastlin", "kw", "crown", "crown-ibp")
DEFAULT_EPS: tuple[float, ...] = (0.0, 0.005, 0.01, 0.02, 0.05)
CACHE_VERSION = 1  # bump to invalidate every cached demo model
X_MIN, X_MAX = 0.0, 1.0  # the pixel domain


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """Training settings; part of the cache key. FGSM adversarial training mildly robustifies."""

    epochs: int = 20
    batch_size: int = 128
    lr: float = 5e-3
    adv_eps: float = 0.08  # final FGSM radius (ramped up linearly over the first half)
    adv_weight: float = 0.5  # loss = (1 - w) * clean + w * FGSM
    seed: int = 0


def build_mlp() -> nn.Sequential:
    """MLP for [B, 1, 8, 8] inputs -> [B, 10] logits: 64 -> 64 -> 64 -> 10 with ReLU."""
    return nn.Sequential(
        nn.Flatten(),
        nn.Linear(64, 64), nn.ReLU(),
        nn.Linear(64, 64), nn.ReLU(),
        nn.Linear(64, 10),
    )  # fmt: skip


def build_cnn() -> nn.Sequential:
    """CNN for [B, 1, 8, 8] -> [B, 8, 8, 8] -> [B, 16, 4, 4] -> [B, 64] -> [B, 10] logits."""
    return nn.Sequential(
        nn.Conv2d(1, 8, 3, stride=1, padding=1), nn.ReLU(),
        nn.Conv2d(8, 16, 3, stride=2, padding=1), nn.ReLU(),
        nn.Flatten(),
        nn.Linear(16 * 4 * 4, 64), nn.ReLU(),
        nn.Linear(64, 10),
    )  # fmt: skip


MODELS: dict[str, Callable[[], nn.Sequential]] = {"mlp": build_mlp, "cnn": build_cnn}


def cache_dir() -> Path:
    """``$FASTCERT_CACHE`` if set, else ``~/.cache/fastcert``."""
    env = os.environ.get("FASTCERT_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "fastcert"


def cache_key(model: nn.Module, cfg: TrainConfig) -> str:
    """SHA-256 (hex) of the architecture, the training settings and the data split."""
    spec = {
        "version": CACHE_VERSION,
        "arch": repr(model),
        "train": dataclasses.asdict(cfg),
        "data": {"name": "sklearn-digits", "test_fraction": DIGITS_TEST_FRACTION, "seed": DIGITS_SPLIT_SEED},
        "dtype": "float32",
    }
    return hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()


def _fgsm(model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float) -> torch.Tensor:
    """One FGSM step of radius ``eps`` from x [B, 1, 8, 8], clipped to the pixel domain."""
    x = x.detach().clone().requires_grad_(True)
    loss = nn.functional.cross_entropy(model(x), y)
    (grad,) = torch.autograd.grad(loss, x)
    return (x + eps * grad.sign()).clamp_(X_MIN, X_MAX).detach()


def train_model(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, cfg: TrainConfig, *, desc: str, quiet: bool
) -> None:
    """Train in place with Adam + FGSM adversarial training. x: [N, 1, 8, 8] float32, y: [N] int64."""
    gen = torch.Generator().manual_seed(cfg.seed)
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=cfg.epochs)
    model.train()
    bar = tqdm(range(cfg.epochs), desc=desc, unit="epoch", file=sys.stderr, disable=quiet, leave=False)
    for epoch in bar:
        eps = cfg.adv_eps * min(1.0, epoch / max(1.0, cfg.epochs / 2))
        perm = torch.randperm(len(x), generator=gen)
        total = 0.0
        for i in range(0, len(x), cfg.batch_size):
            xb, yb = x[perm[i : i + cfg.batch_size]], y[perm[i : i + cfg.batch_size]]
            loss = nn.functional.cross_entropy(model(xb), yb)
            if eps > 0 and cfg.adv_weight > 0:
                adv = nn.functional.cross_entropy(model(_fgsm(model, xb, yb, eps)), yb)
                loss = (1 - cfg.adv_weight) * loss + cfg.adv_weight * adv
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            total += float(loss.detach()) * len(xb)
        sched.step()
        bar.set_postfix(loss=f"{total / len(x):.3f}", fgsm_eps=f"{eps:.3f}")
    model.eval()


def load_or_train(
    name: str, x: torch.Tensor, y: torch.Tensor, cfg: TrainConfig, *, retrain: bool, quiet: bool
) -> tuple[nn.Sequential, dict[str, Any]]:
    """Return the trained model ``name`` (from the cache unless ``retrain``) and info about it.

    x: [N, 1, 8, 8] float32 training images, y: [N] int64 labels.
    """
    torch.manual_seed(cfg.seed)
    model = MODELS[name]()
    key = cache_key(model, cfg)
    path = cache_dir() / "demo" / f"{name}-{key[:16]}.pt"
    if path.is_file() and not retrain:
        try:
            blob = torch.load(path, map_location="cpu", weights_only=True)
            model.load_state_dict(blob["state_dict"])
            model.eval()
            return model, {"cached": True, "train_time_s": float(blob["train_time_s"]), "path": str(path)}
        except Exception as exc:  # corrupt or stale file: retrain and overwrite it
            print(f"fastcert demo: ignoring unreadable cache file {path}: {exc}", file=sys.stderr)
    t0 = time.perf_counter()
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny ops: one thread is faster and does not suffer from a busy machine
    try:
        train_model(model, x, y, cfg, desc=f"train {name}", quiet=quiet)
    finally:
        torch.set_num_threads(threads)
    train_time = time.perf_counter() - t0
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".tmp{os.getpid()}")
        torch.save({"state_dict": model.state_dict(), "train_time_s": train_time, "key": key}, tmp)
        os.replace(tmp, path)
    except OSError as exc:  # a read-only cache is not fatal
        print(f"fastcert demo: could not cache the model at {path}: {exc}", file=sys.stderr)
    return model, {"cached": False, "train_time_s": train_time, "path": str(path)}


@torch.no_grad()
def predict(model: nn.Module, x: torch.Tensor, batch_size: int = 512) -> torch.Tensor:
    """Predicted classes [N] (int64) of images x [N, 1, 8, 8]."""
    return torch.cat([model(x[i : i + batch_size]).argmax(1) for i in range(0, len(x), batch_size)])


def certify_sweep(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    eps_list: Sequence[float],
    methods: Sequence[str],
    *,
    batch_size: int,
    desc: str,
    quiet: bool,
) -> list[dict[str, Any]]:
    """Certify x [N, 1, 8, 8] with labels y [N] for every (method, eps), in batches.

    Returns one record per (method, eps): certified accuracy, count, wall time, the core's own
    ``time_s`` total, and ``error`` (a string) when the method raised.
    """
    correct = predict(model, x) == y  # [N] bool
    n_batches = math.ceil(len(x) / batch_size)
    records: list[dict[str, Any]] = []
    with tqdm(total=len(methods) * len(eps_list) * n_batches, desc=desc, unit="batch",
              file=sys.stderr, disable=quiet, leave=False) as bar:  # fmt: skip
        for method in methods:
            for eps in eps_list:
                bar.set_postfix(method=method, eps=eps)
                rec: dict[str, Any] = {"method": method, "eps": eps}
                certified = torch.zeros(len(x), dtype=torch.bool)
                core_time = 0.0
                t0 = time.perf_counter()
                try:
                    for i in range(0, len(x), batch_size):
                        res = fastcert.certify(
                            model, x[i : i + batch_size], eps, norm="inf", labels=y[i : i + batch_size],
                            method=method, x_min=X_MIN, x_max=X_MAX,
                        )  # fmt: skip
                        certified[i : i + batch_size] = res.certified.detach().cpu().bool()
                        core_time += float(res.time_s)
                        bar.update(1)
                except Exception as exc:  # keep going with the other methods; reported at the end
                    rec["error"] = f"{type(exc).__name__}: {exc}".splitlines()[0]
                    bar.update(n_batches - (i // batch_size))
                rec["time_s"] = time.perf_counter() - t0
                if "error" not in rec:
                    bad = int((certified & ~correct).sum())
                    if bad:  # a sound verifier never certifies a misclassified sample
                        rec["warning"] = f"{bad} misclassified samples reported certified (not counted)"
                    n_cert = int((certified & correct).sum())
                    rec.update(n_certified=n_cert, certified_accuracy=n_cert / len(x), core_time_s=core_time)
                records.append(rec)
    return records


def format_table(result: dict[str, Any]) -> str:
    """Human-readable table of one model's entry of the demo's results."""
    eps_list = result["eps"]
    origin = "cached model" if result["cached"] else f"trained in {result['train_time_s']:.1f} s"
    head = (f"{result['name']}: {result['n_params']} parameters, clean accuracy "
            f"{100 * result['clean_accuracy']:.1f}% on {result['n_test']} test digits "
            f"({origin})")  # fmt: skip
    cols = [f"eps={e:g}" for e in eps_list]
    lines = [head, f"  {'method':<10}" + "".join(f"{c:>16}" for c in cols) + f"{'total':>9}"]
    by_key = {(r["method"], r["eps"]): r for r in result["results"]}
    for method in dict.fromkeys(r["method"] for r in result["results"]):
        cells, total = [], 0.0
        for e in eps_list:
            r = by_key[(method, e)]
            total += r["time_s"]
            cell = "error" if "error" in r else f"{100 * r['certified_accuracy']:5.1f}% {r['time_s']:6.3f}s"
            cells.append(f"{cell:>16}")
        lines.append(f"  {method:<10}" + "".join(cells) + f"{total:8.2f}s")
    lines.append("  (cells: certified accuracy, wall time)")
    return "\n".join(lines)


def save_plot(results: list[dict[str, Any]], path: Path) -> None:
    """Write a PNG of certified accuracy vs eps: one panel per model, one line per method."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(5.0 * len(results), 4.0), layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, len(results), squeeze=False)[0]
    styles = dict(zip(METHODS, [("o", "-"), ("s", "--"), ("^", ":"), ("D", "-"), ("v", "-.")]))
    for ax, res in zip(axes, results):
        for method in dict.fromkeys(r["method"] for r in res["results"]):
            marker, ls = styles.get(method, ("o", "-"))
            recs = [r for r in res["results"] if r["method"] == method and "error" not in r]
            if recs:
                t = sum(r["time_s"] for r in recs)
                ax.plot([r["eps"] for r in recs], [100 * r["certified_accuracy"] for r in recs],
                        marker=marker, ls=ls, label=f"{method} ({t:.2f} s)")  # fmt: skip
        ax.axhline(100 * res["clean_accuracy"], color="gray", ls="--", lw=1, label="clean accuracy")
        ax.set(title=f"{res['name']} ({res['n_test']} test digits)", xlabel="Linf radius eps",
               ylabel="certified accuracy (%)", ylim=(-2, 102))  # fmt: skip
        ax.grid(alpha=0.3)
        ax.legend(fontsize="small")
    fig.suptitle("fastcert: certified accuracy on sklearn digits (8x8)")
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)


def _header(info: dict[str, Any]) -> str:
    b = info["build_info"]
    return (f"fastcert {info['fastcert_version']} | BLAS {b.get('blas', '?')} | OpenMP "
            f"{b.get('openmp', 'no')} ({b.get('omp_max_threads', '?')} threads) | CUDA "
            f"{'built' if b.get('cuda') else 'not built'}, {b.get('cuda_devices', 0)} devices | "
            f"torch {torch.__version__} ({torch.get_num_threads()} threads)")  # fmt: skip


def run_demo(
    *,
    eps: Sequence[float] = DEFAULT_EPS,
    methods: Sequence[str] = METHODS,
    n_test: int | None = None,
    out: str | os.PathLike[str] = "fastcert-demo-out",
    plot: bool = True,
    retrain: bool = False,
    json_output: bool = False,
    quiet: bool = False,
    batch_size: int = 128,
    models: Sequence[str] = tuple(MODELS),
    stdout: TextIO | None = None,
) -> int:
    """Run the demo; return the exit status (0, or 1 when some method failed).

    eps 0 is always included (its certified accuracy must equal the clean accuracy). With
    ``json_output`` the results go to stdout as one JSON document and the table to stderr.
    """
    stdout = stdout if stdout is not None else sys.stdout
    human = sys.stderr if json_output else stdout
    if not callable(getattr(fastcert, "certify", None)):
        raise RuntimeError("fastcert.certify is not available in this build of fastcert")
    for m in methods:
        if m not in METHODS:
            raise ValueError(f"unknown method {m!r} (choose from {', '.join(METHODS)})")
    eps_list = sorted({0.0, *(float(e) for e in eps)})
    if any(not math.isfinite(e) or e < 0 for e in eps_list):
        raise ValueError(f"eps values must be finite and >= 0, got {list(eps)}")
    if n_test is not None and n_test < 1:
        raise ValueError(f"--n-test must be >= 1, got {n_test}")
    plot_path = Path(out) / "certified_accuracy.png"
    if plot:  # fail now, not after minutes of work
        plot_path.parent.mkdir(parents=True, exist_ok=True)
    t_start = time.perf_counter()
    from importlib.metadata import PackageNotFoundError, version

    try:
        fc_version = version("fastcert")
    except PackageNotFoundError:
        fc_version = getattr(fastcert, "__version__", "unknown")
    summary: dict[str, Any] = {
        "fastcert_version": fc_version, "build_info": fastcert.build_info(), "dataset": "sklearn-digits-8x8",
        "norm": "inf", "eps": eps_list, "methods": list(methods), "models": [], "plot": None,
    }  # fmt: skip
    print(_header(summary), file=human, flush=True)
    x_tr, y_tr, x_te, y_te = load_digits_tensors(torch.float32)
    if n_test is not None:
        x_te, y_te = x_te[:n_test], y_te[:n_test]
    cfg = TrainConfig()
    for name in models:
        model, train_info = load_or_train(name, x_tr, y_tr, cfg, retrain=retrain, quiet=quiet)
        n_correct = int((predict(model, x_te) == y_te).sum())
        records = certify_sweep(model, x_te, y_te, eps_list, methods, batch_size=batch_size,
                                desc=f"certify {name}", quiet=quiet)  # fmt: skip
        res = {"name": name, "architecture": repr(model),
               "n_params": sum(p.numel() for p in model.parameters()), "n_test": len(x_te),
               "n_correct": n_correct, "clean_accuracy": n_correct / len(x_te), "eps": eps_list,
               **train_info, "results": records}  # fmt: skip
        summary["models"].append(res)
        print("\n" + format_table(res), file=human, flush=True)
    if plot:
        save_plot(summary["models"], plot_path)
        summary["plot"] = str(plot_path)
        print(f"\nplot written to {plot_path}", file=human)
    summary["total_time_s"] = time.perf_counter() - t_start
    print(f"total time {summary['total_time_s']:.1f} s", file=human, flush=True)
    problems = [f"{m['name']}/{r['method']} eps={r['eps']:g}: {r.get('error') or r['warning']}"
                for m in summary["models"] for r in m["results"]
                if "error" in r or "warning" in r]  # fmt: skip
    if json_output:
        json.dump(summary, stdout, indent=2)
        stdout.write("\n")
        stdout.flush()
    for p in problems:
        print(f"fastcert demo: {p}", file=sys.stderr)
    return 1 if any("error" in r for m in summary["models"] for r in m["results"]) else 0
