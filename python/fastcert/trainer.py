"""``fastcert train``: certified / adversarial training runs on the losses of :mod:`fastcert.training`.

One run: data (scikit-learn's digits by default; MNIST / Fashion-MNIST IDX files or CIFAR-10 binary batches
from a local folder; never a download), a model from the seeds' architectures, an optimizer, the eps /
kappa (/ beta) schedules in optimizer steps, a progress bar per epoch, a checkpoint after every epoch
(``--resume`` continues one and gives the parameters an uninterrupted run gives: the shuffles and the PGD
seeds are functions of the epoch and the step), a CSV log, PNG learning curves, and a final evaluation on the
test set: clean accuracy, PGD accuracy and certified accuracy by the bound matching the method, certified by
:func:`fastcert.certify` (sound, rigorous arithmetic).

Data-parallel training (``nproc`` > 1, or a process started by ``torchrun``: ``RANK`` / ``WORLD_SIZE`` /
``MASTER_ADDR`` / ``MASTER_PORT`` in the environment) runs one process per rank with ``torch.distributed``
(gloo on CPU, NCCL where the tensors are on GPUs): each global batch is split over the ranks, each rank's
loss is weighted by its share of the batch and the gradients are summed by ``all_reduce`` before the step,
so N processes take the steps one process takes on the same global batch (up to the order of the float
sums). Rank 0 writes the checkpoints, the log and the evaluation.

Not yet (issue #12): MMR and Local-Lipschitz training, the KW loss's random projections.
"""

from __future__ import annotations

import csv
import json
import math
import os
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from fastcert import training as tr

METHODS = ("plain", "pgd", "ibp", "crown-ibp", "kw", "mtl-ibp")
NOT_YET = ("mmr", "local-lip")
MODELS = ("mlp", "cnn-small", "cnn-medium", "cnn-large", "kw", "resnet")
DATASETS = ("digits", "mnist", "fashion-mnist", "cifar10")
#: the bound that certifies a model trained by each method (fastcert.certify's method)
CERT_METHOD = {"plain": "crown", "pgd": "crown", "ibp": "ibp", "crown-ibp": "crown-ibp", "kw": "kw",
               "mtl-ibp": "ibp"}


# ------------------------------------------------------------------------------------------------
# models (the seeds' architectures, for any input shape)
# ------------------------------------------------------------------------------------------------


def _flat(features: nn.Sequential, in_shape: tuple[int, ...]) -> int:
    with torch.no_grad():
        return int(features(torch.zeros(1, *in_shape)).numel())


class _Block(nn.Module):
    """A residual block ``x + conv(relu(conv(x)))`` (3x3, same channels and size)."""

    def __init__(self, c: int) -> None:
        super().__init__()
        self.c1 = nn.Conv2d(c, c, 3, padding=1)
        self.c2 = nn.Conv2d(c, c, 3, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        return x + self.c2(torch.relu(self.c1(x)))


def build_model(name: str, in_shape: tuple[int, ...], n_classes: int, seed: int = 0) -> nn.Module:
    """The architectures of the training seeds, for inputs ``in_shape`` ([C, H, W]):

    - ``mlp``: MMR's FC1 (one hidden layer of 1024 ReLUs; Croce et al. 2019);
    - ``cnn-small`` / ``cnn-medium`` / ``cnn-large``: the IBP paper's small / medium / large (Gowal et al.
      2018, Table 2);
    - ``kw``: convex_adversarial's MNIST / CIFAR model (Wong & Kolter 2018: conv 16 4x4/2, conv 32 4x4/2,
      FC 100);
    - ``resnet``: a small residual network (conv 16, two residual blocks, conv 32 4x4/2, FC 100).
    """
    torch.manual_seed(seed)
    C = in_shape[0]
    if name == "mlp":
        n = int(math.prod(in_shape))
        return nn.Sequential(nn.Flatten(), nn.Linear(n, 1024), nn.ReLU(), nn.Linear(1024, n_classes))
    if name == "cnn-small":
        f = nn.Sequential(nn.Conv2d(C, 16, 4, 2, 1), nn.ReLU(), nn.Conv2d(16, 32, 4, 1, 1), nn.ReLU(), nn.Flatten())
        return nn.Sequential(*f, nn.Linear(_flat(f, in_shape), 100), nn.ReLU(), nn.Linear(100, n_classes))
    if name == "cnn-medium":
        f = nn.Sequential(nn.Conv2d(C, 32, 3, 1, 1), nn.ReLU(), nn.Conv2d(32, 32, 4, 2, 1), nn.ReLU(),
                          nn.Conv2d(32, 64, 3, 1, 1), nn.ReLU(), nn.Conv2d(64, 64, 4, 2, 1), nn.ReLU(), nn.Flatten())
        return nn.Sequential(*f, nn.Linear(_flat(f, in_shape), 512), nn.ReLU(), nn.Linear(512, 512), nn.ReLU(),
                             nn.Linear(512, n_classes))
    if name == "cnn-large":
        f = nn.Sequential(nn.Conv2d(C, 64, 3, 1, 1), nn.ReLU(), nn.Conv2d(64, 64, 3, 1, 1), nn.ReLU(),
                          nn.Conv2d(64, 128, 3, 2, 1), nn.ReLU(), nn.Conv2d(128, 128, 3, 1, 1), nn.ReLU(),
                          nn.Conv2d(128, 128, 3, 1, 1), nn.ReLU(), nn.Flatten())
        return nn.Sequential(*f, nn.Linear(_flat(f, in_shape), 512), nn.ReLU(), nn.Linear(512, n_classes))
    if name == "kw":
        f = nn.Sequential(nn.Conv2d(C, 16, 4, 2, 1), nn.ReLU(), nn.Conv2d(16, 32, 4, 2, 1), nn.ReLU(), nn.Flatten())
        return nn.Sequential(*f, nn.Linear(_flat(f, in_shape), 100), nn.ReLU(), nn.Linear(100, n_classes))
    if name == "resnet":
        f = nn.Sequential(nn.Conv2d(C, 16, 3, 1, 1), nn.ReLU(), _Block(16), nn.ReLU(), _Block(16), nn.ReLU(),
                          nn.Conv2d(16, 32, 4, 2, 1), nn.ReLU(), nn.Flatten())
        return nn.Sequential(*f, nn.Linear(_flat(f, in_shape), 100), nn.ReLU(), nn.Linear(100, n_classes))
    raise ValueError(f"unknown model {name!r}; choose one of {', '.join(MODELS)}")


# ------------------------------------------------------------------------------------------------
# data
# ------------------------------------------------------------------------------------------------


def load_data(data: str, data_dir: str | None = None) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """(X_train, y_train, X_test, y_test), images in [0, 1] float32. ``data``: digits (bundled), mnist /
    fashion-mnist (IDX files in ``data_dir``), cifar10 (binary batches in ``data_dir``), or a folder path
    holding either kind."""
    from fastcert.io.datasets import load_cifar10, load_digits_tensors, load_idx_dataset

    if data == "digits":
        return load_digits_tensors()
    if data in ("mnist", "fashion-mnist", "cifar10"):
        if data_dir is None:
            raise ValueError(f"--data {data} reads local files: pass --data-dir DIR (the folder with the "
                             f"{'IDX files' if data != 'cifar10' else 'CIFAR-10 binary batches'}); fastcert never "
                             f"downloads data")
        folder = Path(data_dir)
    else:
        folder = Path(data)
        if not folder.is_dir():
            raise ValueError(f"--data {data!r}: not one of {', '.join(DATASETS)} and not a folder")
        data = "cifar10" if any(folder.glob("*batch*.bin")) or (folder / "cifar-10-batches-bin").is_dir() else "mnist"
    if data == "cifar10":
        return (*load_cifar10(folder, "train"), *load_cifar10(folder, "test"))
    return (*load_idx_dataset(folder, "train"), *load_idx_dataset(folder, "test"))


# ------------------------------------------------------------------------------------------------
# the run
# ------------------------------------------------------------------------------------------------


@dataclass
class TrainConfig:
    """Everything a run depends on (stored in its checkpoint; ``--resume`` checks it)."""

    method: str = "ibp"
    model: str = "cnn-small"
    data: str = "digits"
    data_dir: str | None = None
    eps: float = 0.1
    epochs: int = 10
    batch_size: int = 64
    lr: float = 1e-3
    seed: int = 0
    warmup_epochs: float = 1.0
    ramp_epochs: float | None = None  # default: half of the epochs after the warm-up
    kappa_end: float = 0.5
    beta_end: float = 0.0
    alpha: float = 0.5
    pgd_steps: int = 10
    eval_n: int | None = None
    out: str = "fastcert-train-out"
    extra: dict = field(default_factory=dict)

    def check(self) -> None:
        if self.method in NOT_YET:
            raise ValueError(f"--method {self.method} is not implemented yet (issue #12); available: "
                             f"{', '.join(METHODS)}")
        if self.method not in METHODS:
            raise ValueError(f"unknown method {self.method!r}; choose one of {', '.join(METHODS)}")
        if self.model not in MODELS:
            raise ValueError(f"unknown model {self.model!r}; choose one of {', '.join(MODELS)}")
        if not (self.eps >= 0 and math.isfinite(self.eps)):
            raise ValueError(f"--eps must be a finite number >= 0, got {self.eps}")
        for name in ("epochs", "batch_size", "pgd_steps"):
            if getattr(self, name) < 1:
                raise ValueError(f"--{name.replace('_', '-')} must be >= 1")
        if self.warmup_epochs < 0 or (self.ramp_epochs is not None and self.ramp_epochs < 0):
            raise ValueError("--warmup-epochs and --ramp-epochs must be >= 0")


def _schedules(cfg: TrainConfig, steps_per_epoch: int) -> tuple[Any, Any, Any]:
    warm = int(round(cfg.warmup_epochs * steps_per_epoch))
    ramp_e = cfg.ramp_epochs if cfg.ramp_epochs is not None else max(cfg.epochs - cfg.warmup_epochs, 0) / 2
    ramp = int(round(ramp_e * steps_per_epoch))
    if cfg.method == "crown-ibp":
        return tr.crown_ibp_schedule(cfg.eps, warm, ramp, cfg.kappa_end, cfg.beta_end)
    eps_s, kappa_s = tr.gowal_schedule(cfg.eps, warm, ramp, cfg.kappa_end)
    return eps_s, kappa_s, None


def _loss(cfg: TrainConfig, model: nn.Module, x: Tensor, y: Tensor, step: int, sched: tuple) -> tuple[Tensor, float]:
    eps_s, kappa_s, beta_s = sched
    e = eps_s(step)
    m = cfg.method
    if m == "plain" or (e == 0 and m != "pgd"):
        return F.cross_entropy(model(x), y), e
    if m == "pgd":
        return tr.pgd_loss(model, x, y, cfg.eps, steps=cfg.pgd_steps, x_min=0.0, x_max=1.0, seed=step), cfg.eps
    if m == "ibp":
        return tr.ibp_loss(model, x, y, e, kappa=kappa_s(step), x_min=0.0, x_max=1.0), e
    if m == "crown-ibp":
        return tr.crown_ibp_loss(model, x, y, e, kappa=kappa_s(step), beta=beta_s(step), x_min=0.0, x_max=1.0), e
    if m == "kw":
        return tr.robust_loss(model, e, x, y, x_min=0.0, x_max=1.0)[0], e
    assert m == "mtl-ibp"
    return tr.mtl_ibp_loss(model, x, y, e, alpha=cfg.alpha, steps=cfg.pgd_steps, x_min=0.0, x_max=1.0, seed=step), e


def _save(path: Path, obj: dict) -> None:
    tmp = path.with_suffix(".tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)


def evaluate_model(model: nn.Module, X: Tensor, y: Tensor, eps: float, method: str, pgd_steps: int = 20,
                   batch: int = 256) -> dict[str, float]:
    """Clean, PGD and certified accuracy (``fastcert.certify`` with ``method``) at ``eps`` in [0, 1]."""
    import fastcert

    model.eval()
    n = X.shape[0]
    clean = pgd_ok = cert = 0
    for i in range(0, n, batch):
        xb, yb = X[i:i + batch], y[i:i + batch]
        with torch.no_grad():
            clean += int((model(xb).argmax(1) == yb).sum())
        if eps > 0:
            r = fastcert.attacks.pgd(model, xb, eps, labels=yb, steps=pgd_steps, restarts=1, x_min=0.0, x_max=1.0)
            pgd_ok += int((r.logits.argmax(1) == yb).sum())
        else:
            pgd_ok = clean
        c = fastcert.certify(model, xb, eps, labels=yb, method=method, x_min=0.0, x_max=1.0)
        cert += int(c.certified.sum())
    return {"clean_acc": clean / n, "pgd_acc": pgd_ok / n, "certified_acc": cert / n, "n": n, "eps": eps,
            "cert_method": method}


def _plot(rows: list[dict], path: Path) -> None:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(9, 3.2))
    FigureCanvasAgg(fig)
    ep = [r["epoch"] for r in rows]
    for k, (key, label) in enumerate((("loss", "training loss"), ("train_acc", "training accuracy"),
                                      ("eps", "eps at the epoch's end"))):
        ax = fig.add_subplot(1, 3, k + 1)
        ax.plot(ep, [r[key] for r in rows], marker="o")
        ax.set_xlabel("epoch")
        ax.set_title(label, fontsize=10)
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def _free_port() -> int:
    import socket

    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


_RANK_ENV = "FASTCERT_TRAIN_RANK_JOB"


def _run_rank() -> None:
    """A rank started by :func:`_launch` (torchrun's environment plus the job in ``$FASTCERT_TRAIN_RANK_JOB``)."""
    job = json.loads(os.environ[_RANK_ENV])
    world = int(os.environ["WORLD_SIZE"])
    torch.set_num_threads(max(1, (os.cpu_count() or 1) // world))
    train(TrainConfig(**job["config"]), resume=job["resume"], quiet=job["quiet"])


def _launch(cfg: TrainConfig, nproc: int, resume: bool, quiet: bool) -> None:
    """Start ``nproc`` local ranks as torchrun does (fresh interpreters with ``RANK``, ``LOCAL_RANK``,
    ``WORLD_SIZE``, ``MASTER_ADDR``, ``MASTER_PORT``), wait for them; a failing rank's error is raised."""
    import subprocess

    port = _free_port()
    job = json.dumps({"config": asdict(cfg), "resume": resume, "quiet": quiet})
    procs = []
    for rank in range(nproc):
        env = dict(os.environ, RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(nproc), MASTER_ADDR="127.0.0.1",
                   MASTER_PORT=str(port), **{_RANK_ENV: job})
        procs.append(subprocess.Popen([sys.executable, "-c", "from fastcert.trainer import _run_rank; _run_rank()"],
                                      env=env, stderr=None if rank == 0 else subprocess.PIPE))
    errs = []
    for rank, p in enumerate(procs):
        _, err = p.communicate()
        if p.returncode != 0:
            tail = (err or b"").decode(errors="replace").strip().splitlines()[-3:]
            errs.append(f"rank {rank} exited with status {p.returncode}" + (": " + " | ".join(tail) if tail else ""))
    if errs:
        raise RuntimeError("data-parallel training failed: " + "; ".join(errs))


def train(cfg: TrainConfig, resume: bool = False, quiet: bool = False, log: Any = sys.stderr,
          nproc: int = 1) -> dict[str, Any]:
    """Run (or, with ``resume``, continue) a training run; returns the final evaluation and paths.
    ``nproc`` > 1: that many local data-parallel processes, started as ``torchrun`` starts them (gloo); inside
    a ``torchrun`` launch (``WORLD_SIZE`` set) the process joins that group instead."""
    import torch.distributed as dist

    cfg.check()
    if nproc < 1:
        raise ValueError(f"--nproc must be >= 1, got {nproc}")
    if "WORLD_SIZE" in os.environ and int(os.environ["WORLD_SIZE"]) > 1 and not dist.is_initialized():
        dist.init_process_group("gloo")  # torchrun: the group from the environment
        try:
            res = _train_loop(cfg, resume, quiet or dist.get_rank() != 0, log)
        finally:
            dist.destroy_process_group()
        return res if res is not None else {}
    if nproc > 1:
        _launch(cfg, nproc, resume, quiet)
        return json.loads((Path(cfg.out) / "final.json").read_text())
    res = _train_loop(cfg, resume, quiet, log)
    assert res is not None
    return res


def _resume(cfg: TrainConfig, ckpt: Path, model: nn.Module, opt: torch.optim.Optimizer) -> tuple[int, list]:
    """Load the checkpoint into model and optimizer (refused when it was made with other settings than
    the epochs, output folder and evaluation size); returns (the epoch to start at, the log so far)."""
    if not ckpt.is_file():
        raise ValueError(f"--resume: no checkpoint at {ckpt}")
    state = torch.load(ckpt, weights_only=False)
    saved = {k: v for k, v in state["config"].items() if k not in ("epochs", "out", "eval_n")}
    now = {k: v for k, v in asdict(cfg).items() if k not in ("epochs", "out", "eval_n")}
    if saved != now:
        diff = sorted(k for k in now if saved.get(k) != now[k])
        raise ValueError(f"--resume: the checkpoint was made with other settings ({', '.join(diff)})")
    model.load_state_dict(state["model"])
    opt.load_state_dict(state["optimizer"])
    return state["epoch"], state["log"]


def _finish(cfg: TrainConfig, out: Path, ckpt: Path, model: nn.Module, rows: list, Xte: Tensor, yte: Tensor,
            t_run: float) -> dict[str, Any]:
    """log.csv, curves.png, the evaluation on the test set, model.pt and final.json (rank 0)."""
    with open(out / "log.csv", "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=["epoch", "step", "eps", "loss", "train_acc", "seconds"])
        w.writeheader()
        w.writerows(rows)
    if rows:
        _plot(rows, out / "curves.png")
    n = Xte.shape[0] if cfg.eval_n is None else min(cfg.eval_n, Xte.shape[0])
    res = evaluate_model(model, Xte[:n], yte[:n], cfg.eps, CERT_METHOD[cfg.method])
    res.update(train_seconds=time.perf_counter() - t_run, config=asdict(cfg), checkpoint=str(ckpt),
               log=str(out / "log.csv"), curves=str(out / "curves.png"))
    torch.save(model.state_dict(), out / "model.pt")
    res["model"] = str(out / "model.pt")
    (out / "final.json").write_text(json.dumps(res, indent=2))
    return res


def _train_loop(cfg: TrainConfig, resume: bool, quiet: bool, log: Any) -> dict[str, Any] | None:
    """The loop of :func:`train` on this process (one rank of a group when torch.distributed is up); the
    result on rank 0, None elsewhere."""
    import torch.distributed as dist
    from tqdm import tqdm

    world = dist.get_world_size() if dist.is_initialized() else 1
    rank = dist.get_rank() if dist.is_initialized() else 0
    out = Path(cfg.out)
    if rank == 0:
        out.mkdir(parents=True, exist_ok=True)
    ckpt = out / "checkpoint.pt"
    Xtr, ytr, Xte, yte = load_data(cfg.data, cfg.data_dir)
    K = int(max(int(ytr.max()), int(yte.max())) + 1)
    model = build_model(cfg.model, tuple(Xtr.shape[1:]), K, cfg.seed)
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr)
    start, rows = _resume(cfg, ckpt, model, opt) if resume else (0, [])
    N = Xtr.shape[0]
    per_epoch = math.ceil(N / cfg.batch_size)
    sched = _schedules(cfg, per_epoch)
    t_run = time.perf_counter()
    for epoch in range(start, cfg.epochs):
        model.train()
        g = torch.Generator().manual_seed(cfg.seed * 100003 + epoch)
        perm = torch.randperm(N, generator=g)
        tot = correct = 0.0
        t0 = time.perf_counter()
        bar = tqdm(range(per_epoch), desc=f"epoch {epoch + 1}/{cfg.epochs} {cfg.method}", unit="batch",
                   file=log, disable=quiet, leave=False)
        e = 0.0
        for b in bar:
            step = epoch * per_epoch + b
            idx = perm[b * cfg.batch_size:(b + 1) * cfg.batch_size]
            shard = idx[rank::world]  # this rank's part of the global batch
            opt.zero_grad()
            if len(shard):
                x, y = Xtr[shard], ytr[shard]
                loss, e = _loss(cfg, model, x, y, step, sched)
                # weighted by the shard's share: the ranks' summed gradients are the global batch's mean's
                (loss * (len(shard) / len(idx)) if world > 1 else loss).backward()
                tot += float(loss.detach()) * len(shard)
                with torch.no_grad():
                    correct += float((model(x).argmax(1) == y).sum())
                bar.set_postfix(loss=f"{float(loss.detach()):.3f}", eps=f"{e:.3g}")
            else:
                e = sched[0](step) if cfg.method != "pgd" else cfg.eps
            if world > 1:
                for p in model.parameters():
                    if p.grad is None:
                        p.grad = torch.zeros_like(p)
                    dist.all_reduce(p.grad)
            opt.step()
        bar.close()
        if world > 1:
            agg = torch.tensor([tot, correct], dtype=torch.float64)
            dist.all_reduce(agg)
            tot, correct = float(agg[0]), float(agg[1])
        rows.append({"epoch": epoch + 1, "step": (epoch + 1) * per_epoch, "eps": e, "loss": tot / N,
                     "train_acc": correct / N, "seconds": time.perf_counter() - t0})
        if not quiet:
            r = rows[-1]
            print(f"epoch {r['epoch']}: loss {r['loss']:.4f}  train acc {r['train_acc']:.4f}  eps {r['eps']:.4g}  "
                  f"{r['seconds']:.1f} s", file=log)
        if rank == 0:
            _save(ckpt, {"model": model.state_dict(), "optimizer": opt.state_dict(), "epoch": epoch + 1,
                         "log": rows, "config": asdict(cfg)})
    if rank != 0:
        return None
    return _finish(cfg, out, ckpt, model, rows, Xte, yte, t_run)


__all__ = ["CERT_METHOD", "METHODS", "MODELS", "TrainConfig", "build_model", "evaluate_model", "load_data", "train"]
