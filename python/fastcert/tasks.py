"""The CROWN / RecurJac reference's three tasks over a data set (``fastcert robustness``, ``fastcert lipschitz``,
``fastcert landscape``): a line per image and the reference's final average line, on a saved torch model or
ONNX file and digits / MNIST / Fashion-MNIST (IDX) / CSV / NPZ data.

Knob mapping from the reference's ``main.py``: ``--layerbndalg`` crown-general / crown-adaptive -> fastcert's
``crown`` (adaptive ReLU slopes and the general-activation relaxations), fastlin -> ``fastlin``, spectral ->
certification by the spectral Lipschitz bound, quad (the reference's ``--quad``) -> the quadratic bound of
two-layer ReLU networks; fastcert's own methods (ibp, crown-ibp, kw, alpha-crown) are accepted too.
``--jacbndalg`` recurjac / fastlip -> certification by that Lipschitz bound integrated over
``--lipsteps`` sub-intervals (and the Jacobian bound of the ``lipschitz`` / ``landscape`` tasks: RecurJac by
default); ``--lipsdir`` -1 / +1 -> its recursion backward / forward, ``--lipsshift`` 0 / 1 -> the forward
recursion starting at the input / after the first layer (the reference's defaults: -1 and 1).
"""


from __future__ import annotations

import json
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, TextIO

import torch

LAYER_ALGS = {"crown-general": "crown", "crown-adaptive": "crown", "fastlin": "fastlin", "spectral": "spectral",
              "ibp": "ibp", "crown": "crown", "crown-ibp": "crown-ibp", "kw": "kw", "alpha-crown": "alpha-crown",
              "quad": "quad"}
JAC_ALGS = ("disable", "recurjac", "fastlip")
NORM_ALIASES = {"i": "inf", "inf": "inf", "1": "1", "2": "2"}

DIRS = {-1: "backward", 1: "forward"}


def jac_kw(cfg: TaskConfig) -> dict[str, Any]:
    """The Jacobian recursion's order for :func:`fastcert.jacobian_bounds` (``direction``, ``shift``)."""
    return {"direction": DIRS[cfg.lipsdir], "shift": cfg.lipsshift}


@dataclass
class TaskConfig:
    model: str | None = None
    data: str | None = None
    data_dir: str | None = None
    numimage: int = 10
    startimage: int = 0
    norm: str = "inf"
    eps: float = 0.005
    targettype: str = "untargeted"
    layerbndalg: str = "crown-adaptive"
    jacbndalg: str = "disable"
    steps: int = 15
    lipsteps: int = 10
    liplogstart: float = -3.0
    liplogend: float = 0.0
    seed: int = 0
    lipsdir: int = -1
    lipsshift: int = 1
    batch: int = 32
    x_min: float | None = None
    x_max: float | None = None


def resolve(cfg: TaskConfig) -> tuple[str, str]:
    """(fastcert method, norm key) for the config, or a ValueError naming the bad knob."""
    norm = NORM_ALIASES.get(str(cfg.norm))
    if norm is None:
        raise ValueError(f"--norm must be one of i, 1, 2, inf; got {cfg.norm!r}")
    if cfg.layerbndalg not in LAYER_ALGS:
        raise ValueError(f"--layerbndalg must be one of {sorted(LAYER_ALGS)}; got {cfg.layerbndalg!r}")
    if cfg.jacbndalg not in JAC_ALGS:
        raise ValueError(f"--jacbndalg must be one of {JAC_ALGS}; got {cfg.jacbndalg!r}")
    if cfg.lipsdir not in DIRS:
        raise ValueError(f"--lipsdir must be -1 (backward) or 1 (forward); got {cfg.lipsdir!r}")
    if cfg.lipsshift not in (0, 1):
        raise ValueError(f"--lipsshift must be 0 or 1; got {cfg.lipsshift!r}")
    method = LAYER_ALGS[cfg.layerbndalg]
    if cfg.jacbndalg != "disable":
        method = cfg.jacbndalg
    return method, norm


def load_task_data(cfg: TaskConfig, input_shape: tuple[int, ...] | None) -> tuple[torch.Tensor, torch.Tensor, str]:
    """Images ``startimage .. startimage + numimage`` of the data source: digits / an .npz / a CSV (through
    :func:`fastcert.evaluate.load_data`) or ``mnist`` / ``fashion-mnist`` IDX files (test split) in
    ``data_dir``."""
    from fastcert.evaluate import load_data

    end = cfg.startimage + cfg.numimage
    if cfg.data in ("mnist", "fashion-mnist"):
        from fastcert.io.datasets import load_idx_dataset

        if not cfg.data_dir:
            raise ValueError(f"--data {cfg.data} needs --data-dir, the folder of its IDX files")
        x, y = load_idx_dataset(cfg.data_dir, "test", torch.float64)
        if input_shape is not None:
            x = x.reshape(x.shape[0], *input_shape)
        desc = f"{cfg.data} test split in {cfg.data_dir}"
    else:
        x, y, desc = load_data(cfg.data, end, input_shape)
    if cfg.startimage >= x.shape[0]:
        raise ValueError(f"--startimage {cfg.startimage} is past the {x.shape[0]} images of {desc}")
    return x[cfg.startimage:end].contiguous(), y[cfg.startimage:end], desc


def prepare_task(cfg: TaskConfig) -> tuple[Any, torch.Tensor, torch.Tensor, str, str]:
    from fastcert.evaluate import load_model

    model, net, shape, mdesc = load_model(cfg.model)
    x, y, ddesc = load_task_data(cfg, shape)
    return (net if net is not None else model), x, y, mdesc, ddesc


def batches(n: int, size: int) -> list[tuple[int, int]]:
    return [(i, min(n, i + size)) for i in range(0, n, size)]


def robustness_batch(model: Any, x: torch.Tensor, y: torch.Tensor, cfg: TaskConfig, a: int) -> list[dict[str, Any]]:
    """The rows of images ``a .. a + len(x)`` (positions in the selection) of the robustness task."""
    from fastcert.radius import certified_radius

    method, norm = resolve(cfg)
    tb = time.perf_counter()
    r = certified_radius(model, x, norm=norm, method=method, target=_target(cfg.targettype), steps=cfg.steps,
                         labels=y, eps_init=cfg.eps, x_min=cfg.x_min, x_max=cfg.x_max, seed=cfg.seed + a,
                         lipsteps=cfg.lipsteps, **jac_kw(cfg))
    per = (time.perf_counter() - tb) / len(x)
    rows = []
    for i in range(len(x)):
        correct = float(r.upper[i]) > 0  # a misclassified image has the bracket [0, 0]
        rows.append({"image": cfg.startimage + a + i, "label": int(r.labels[i]), "target": int(r.targets[i]),
                     "correct": correct, "radius": float(r.radius[i]), "upper": float(r.upper[i]), "time_s": per})
    return rows


def robustness_line(row: dict[str, Any], cfg: TaskConfig) -> str:
    if not row["correct"]:
        return f"[L1] image = {row['image']}, label = {row['label']}: misclassified, skipped"
    return (f"[L1] image = {row['image']}, label = {row['label']}, target = {row['target']}, "
            f"{cfg.targettype} radius = {row['radius']:.5f} (bracket [{row['radius']:.5f}, {row['upper']:.5f})), "
            f"time = {row['time_s']:.4f}")


def robustness_summary(rows: list[dict[str, Any]], cfg: TaskConfig, mdesc: str, ddesc: str, total: float,
                        out: TextIO) -> dict[str, Any]:
    method, norm = resolve(cfg)
    ok = [r for r in rows if r["correct"]]
    avg = sum(r["radius"] for r in ok) / max(1, len(ok))
    print(f"[L0] model = {mdesc}, data = {ddesc}, norm = {norm}, method = {method}, avg robustness = {avg:.5f}, "
          f"numimage = {len(ok)} (of {len(rows)}; misclassified skipped), total_time = {total:.4f}", file=out)
    return {"task": "robustness", "method": method, "norm": norm, "avg_radius": avg, "numimage": len(ok),
            "total_time_s": total, "rows": rows, "config": asdict(cfg)}


def run_robustness(cfg: TaskConfig, out: TextIO = sys.stdout, progress: bool = True) -> dict[str, Any]:
    """Certified radius per image (the reference's ``robustness`` task); returns the summary and the rows."""
    resolve(cfg)
    model, x, y, mdesc, ddesc = prepare_task(cfg)
    t0 = time.perf_counter()
    rows: list[dict[str, Any]] = []
    bar = progress_bar(len(x), "robustness", progress)
    for a, b in batches(len(x), cfg.batch):
        for row in robustness_batch(model, x[a:b], y[a:b], cfg, a):
            rows.append(row)
            print(robustness_line(row, cfg), file=out)
        bar.update(b - a)
    bar.close()
    return robustness_summary(rows, cfg, mdesc, ddesc, time.perf_counter() - t0, out)


def run_lipschitz(cfg: TaskConfig, out: TextIO = sys.stdout, progress: bool = True) -> dict[str, Any]:
    """Local Lipschitz constant of the margin (label vs target; untargeted: every other class, the largest
    constant) over log-spaced radii per image (the reference's ``lipschitz`` task)."""
    from fastcert.jacobian import lipschitz_curve
    from fastcert.radius import margin_rows, target_classes

    _, norm = resolve(cfg)
    jm = "spectral" if cfg.layerbndalg == "spectral" else ("recurjac" if cfg.jacbndalg == "disable" else cfg.jacbndalg)
    model, x, y, mdesc, ddesc = prepare_task(cfg)
    t0 = time.perf_counter()
    rows: list[dict[str, Any]] = []
    eps_list: list[float] = []
    bar = progress_bar(len(x), "lipschitz", progress)
    for a, b in batches(len(x), cfg.batch):
        xb = x[a:b]
        with torch.no_grad():
            logits = (model.forward(xb) if hasattr(model, "graph_for") else model(xb))
        t = target_classes(logits, y[a:b], _target(cfg.targettype), cfg.seed + a)
        C = margin_rows(y[a:b], t, logits.shape[1], torch.float64)
        curve = lipschitz_curve(model, xb, norm, jm, C, cfg.liplogstart, cfg.liplogend, cfg.lipsteps,
                                cfg.x_min, cfg.x_max, **jac_kw(cfg))
        eps_list = curve.eps.tolist()
        const = curve.constant.amax(-1)  # [E, b]: the largest over the margin rows
        for i in range(b - a):
            row = {"image": cfg.startimage + a + i, "label": int(y[a + i]), "target": int(t[i]),
                   "eps": eps_list, "lipschitz": const[:, i].tolist()}
            rows.append(row)
            print(f"[L1] image = {row['image']}, label = {row['label']}, " + ", ".join(
                f"eps {e:.3g}: {v:.5g}" for e, v in zip(eps_list, row["lipschitz"])), file=out)
        bar.update(b - a)
    bar.close()
    total = time.perf_counter() - t0
    n = max(1, len(rows))
    avg = [sum(r["lipschitz"][k] for r in rows) / n for k in range(len(eps_list))]
    print(f"[L0] model = {mdesc}, data = {ddesc}, norm = {norm}, method = {jm}, avg lipschitz = " + ", ".join(
        f"{e:.3g}: {v:.5g}" for e, v in zip(eps_list, avg)) + f", numimage = {len(rows)}, total_time = {total:.4f}",
        file=out)
    return {"task": "lipschitz", "method": jm, "norm": norm, "eps": eps_list, "avg_lipschitz": avg,
            "numimage": len(rows), "total_time_s": total, "rows": rows, "config": asdict(cfg)}


def run_landscape(cfg: TaskConfig, out: TextIO = sys.stdout, progress: bool = True) -> dict[str, Any]:
    """R_max of the margin function (label vs target) per image (the reference's ``landscape`` task)."""
    from fastcert.jacobian import landscape
    from fastcert.radius import margin_rows, target_classes

    _, norm = resolve(cfg)
    if cfg.targettype == "untargeted":
        raise ValueError("landscape bounds one margin per image: give --targettype runnerup, least, random or a "
                         "class")
    model, x, y, mdesc, ddesc = prepare_task(cfg)
    t0 = time.perf_counter()
    rows: list[dict[str, Any]] = []
    bar = progress_bar(len(x), "landscape", progress)
    for a, b in batches(len(x), cfg.batch):
        xb = x[a:b]
        with torch.no_grad():
            logits = (model.forward(xb) if hasattr(model, "graph_for") else model(xb))
        K = logits.shape[1]
        t = target_classes(logits, y[a:b], _target(cfg.targettype), cfg.seed + a)
        C = margin_rows(y[a:b], t, K, torch.float64)
        jm = "recurjac" if cfg.jacbndalg == "disable" else cfg.jacbndalg
        res = landscape(model, xb, norm, jm, C, cfg.steps, cfg.eps, cfg.x_min, cfg.x_max, **jac_kw(cfg))
        for i in range(b - a):
            row = {"image": cfg.startimage + a + i, "label": int(y[a + i]), "target": int(t[i]),
                   "r_max": float(res.radius[i, 0]), "upper": float(res.upper[i, 0])}
            rows.append(row)
            print(f"[L1] image = {row['image']}, label = {row['label']}, target = {row['target']}, "
                  f"R_max = {row['r_max']:.5f}", file=out)
        bar.update(b - a)
    bar.close()
    total = time.perf_counter() - t0
    avg = sum(r["r_max"] for r in rows) / max(1, len(rows))
    print(f"[L0] model = {mdesc}, data = {ddesc}, norm = {norm}, avg R_max = {avg:.5f}, numimage = {len(rows)}, "
          f"total_time = {total:.4f}", file=out)
    return {"task": "landscape", "norm": norm, "avg_r_max": avg, "numimage": len(rows), "total_time_s": total,
            "rows": rows, "config": asdict(cfg)}


def _target(t: str) -> Any:
    return int(t) if t.lstrip("-").isdigit() else t


class _NoBar:
    def update(self, n: int) -> None:
        pass

    def close(self) -> None:
        pass


def progress_bar(total: int, desc: str, progress: bool) -> Any:
    if not progress:
        return _NoBar()
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, unit="image", file=sys.stderr, leave=False)


def plot(result: dict[str, Any], path: str | Path) -> None:
    """A PNG of a task's result: Lipschitz constant vs eps (log axes) for ``lipschitz``; a histogram of the
    radii (R_max) for ``robustness`` (``landscape``)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 3.5))
    if result["task"] == "lipschitz":
        for r in result["rows"]:
            ax.plot(r["eps"], r["lipschitz"], color="0.7", lw=0.8)
        ax.plot(result["eps"], result["avg_lipschitz"], color="C0", lw=2, label=f"mean ({result['method']})")
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("eps")
        ax.set_ylabel(f"Lipschitz bound (dual of L{result['norm']})")
        ax.legend()
    else:
        key = "radius" if result["task"] == "robustness" else "r_max"
        ax.hist([r[key] for r in result["rows"] if r.get("correct", True)], bins=20, color="C0")
        ax.set_xlabel("certified radius" if key == "radius" else "R_max")
        ax.set_ylabel("images")
    ax.set_title(f"fastcert {result['task']} ({result['numimage']} images)")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def to_json(result: dict[str, Any]) -> str:
    return json.dumps(result)


__all__ = ["TaskConfig", "batches", "plot", "prepare_task", "progress_bar", "resolve", "robustness_batch",
           "robustness_line", "robustness_summary", "run_landscape", "run_lipschitz", "run_robustness"]
