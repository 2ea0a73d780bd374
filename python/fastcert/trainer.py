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

Not yet (issue #12): convex_adversarial's cascades.
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

METHODS = ("plain", "pgd", "ibp", "crown-ibp", "kw", "mmr", "local-lip", "mtl-ibp")
NOT_YET: tuple[str, ...] = ()
MODELS = ("mlp", "cnn-small", "cnn-medium", "cnn-large", "kw", "lenet-small", "c6f2", "resnet")
NORMS = ("inf", "2")
DATASETS = ("digits", "mnist", "fashion-mnist", "cifar10")
#: the bound that certifies a model trained by each method (fastcert.certify's method)
CERT_METHOD = {"plain": "crown", "pgd": "crown", "ibp": "ibp", "crown-ibp": "crown-ibp", "kw": "kw",
               "mmr": "crown", "local-lip": "crown", "mtl-ibp": "ibp"}


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
      FC 100); ``lenet-small`` is the same architecture, MMR's LeNet-small (Croce et al. 2019: their TF "SAME"
      padding is padding 1 here);
    - ``c6f2``: Local-Lip's c6f2 (Huang et al. 2021: convs 32 3x3, 32 3x3, 32 4x4/2, 64 3x3, 64 3x3, 64 4x4/2,
      FC 512, each followed by a clipped ReLU (:class:`fastcert.nn.ClippedReLU`, threshold 1, learnable; one per
      layer where the paper has one per neuron), FC to the classes);
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
    if name == "c6f2":
        from fastcert.nn import ClippedReLU

        f = nn.Sequential(nn.Conv2d(C, 32, 3, 1, 1), ClippedReLU(), nn.Conv2d(32, 32, 3, 1, 1), ClippedReLU(),
                          nn.Conv2d(32, 32, 4, 2, 1), ClippedReLU(), nn.Conv2d(32, 64, 3, 1, 1), ClippedReLU(),
                          nn.Conv2d(64, 64, 3, 1, 1), ClippedReLU(), nn.Conv2d(64, 64, 4, 2, 1), ClippedReLU(),
                          nn.Flatten())
        return nn.Sequential(*f, nn.Linear(_flat(f, in_shape), 512), ClippedReLU(), nn.Linear(512, n_classes))
    if name in ("kw", "lenet-small"):
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
    norm: str = "inf"
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
    mmr_lambda: float = 1.0
    mmr_gamma_b: float | None = None  # default: eps
    mmr_gamma_d: float | None = None  # default: eps
    adv_frac: float = 0.0  # MMR: the share of each batch replaced by PGD points
    power_steps: int = 1  # Local-Lip: power-iteration steps per training step
    kw_proj: int | None = None  # KW: random projections for the intermediate bounds (None: exact)
    lipschitz_cert: bool = False  # also certify by the (sound) L2 Lipschitz margin: slow on MNIST-sized layers
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
        if self.norm not in NORMS:
            raise ValueError(f"--norm must be one of {', '.join(NORMS)}, got {self.norm!r}")
        if self.method == "local-lip" and self.norm != "2":
            raise ValueError("--method local-lip bounds L2 balls (a Lipschitz bound in the 2-norm): pass --norm 2")
        if self.method in ("kw",) and self.norm != "inf":
            raise ValueError("--method kw trains against L-inf balls here (convex_adversarial's robust_loss): drop "
                             "--norm 2")
        if self.model == "c6f2" and self.method not in ("local-lip", "plain", "pgd", "ibp", "crown-ibp", "mtl-ibp"):
            raise ValueError(f"--model c6f2 has clipped ReLUs, which --method {self.method} does not handle; use "
                             f"local-lip, plain, pgd, ibp, crown-ibp or mtl-ibp")
        if not 0.0 <= self.adv_frac <= 1.0:
            raise ValueError(f"--adv-frac must lie in [0, 1], got {self.adv_frac}")
        if self.lipschitz_cert and self.norm != "2":
            raise ValueError("--lipschitz-cert certifies L2 balls: pass --norm 2")
        if self.kw_proj is not None and self.kw_proj < 1:
            raise ValueError("--kw-proj must be >= 1")
        if self.power_steps < 1:
            raise ValueError("--power-steps must be >= 1")
        if not (self.eps >= 0 and math.isfinite(self.eps)):
            raise ValueError(f"--eps must be a finite number >= 0, got {self.eps}")
        for name in ("epochs", "batch_size", "pgd_steps"):
            if getattr(self, name) < 1:
                raise ValueError(f"--{name.replace('_', '-')} must be >= 1")
        if self.warmup_epochs < 0 or (self.ramp_epochs is not None and self.ramp_epochs < 0):
            raise ValueError("--warmup-epochs and --ramp-epochs must be >= 0")


def _schedules(cfg: TrainConfig, steps_per_epoch: int) -> tuple[Any, ...]:
    """(eps(step), kappa(step), beta(step) or None, steps per epoch, MMR's lambda ramp, Local-Lip's state)."""
    warm = int(round(cfg.warmup_epochs * steps_per_epoch))
    ramp_e = cfg.ramp_epochs if cfg.ramp_epochs is not None else max(cfg.epochs - cfg.warmup_epochs, 0) / 2
    ramp = int(round(ramp_e * steps_per_epoch))
    lam = tr.LinearRamp(0.0, 1.0, warm, ramp)
    if cfg.method == "crown-ibp":
        return (*tr.crown_ibp_schedule(cfg.eps, warm, ramp, cfg.kappa_end, cfg.beta_end), steps_per_epoch, lam, None)
    eps_s, kappa_s = tr.gowal_schedule(cfg.eps, warm, ramp, cfg.kappa_end)
    state = tr.LocalLipState(seed=cfg.seed) if cfg.method == "local-lip" else None
    return eps_s, kappa_s, None, steps_per_epoch, lam, state


def _loss(cfg: TrainConfig, model: nn.Module, x: Tensor, y: Tensor, step: int, sched: tuple) -> tuple[Tensor, float]:
    eps_s, kappa_s, beta_s = sched[:3]
    e = eps_s(step)
    m = cfg.method
    if m == "plain" or (e == 0 and m not in ("pgd", "mmr")):
        return F.cross_entropy(model(x), y), e
    if m == "pgd":
        return tr.pgd_loss(model, x, y, cfg.eps, cfg.norm, steps=cfg.pgd_steps, x_min=0.0, x_max=1.0,
                           seed=step), cfg.eps
    if m == "ibp":
        return tr.ibp_loss(model, x, y, e, kappa=kappa_s(step), norm=cfg.norm, x_min=0.0, x_max=1.0), e
    if m == "crown-ibp":
        return tr.crown_ibp_loss(model, x, y, e, kappa=kappa_s(step), beta=beta_s(step), norm=cfg.norm,
                                 x_min=0.0, x_max=1.0), e
    if m == "kw":
        return tr.robust_loss(model, e, x, y, x_min=0.0, x_max=1.0, proj=cfg.kw_proj, seed=step)[0], e
    if m == "mmr":
        # the authors' ramps: lambda from 0 over the first 10 epochs (here: the warm-up + ramp steps), k_B from
        # 10% to 2% of the hidden units over the run
        total = max(1, cfg.epochs * sched[3])
        return tr.mmr_loss(model, x, y, cfg.eps, cfg.norm, lam=cfg.mmr_lambda * sched[4](step),
                           gamma_b=cfg.mmr_gamma_b, gamma_d=cfg.mmr_gamma_d, k_b=0.1 - 0.08 * min(step / total, 1.0),
                           adv_frac=cfg.adv_frac, pgd_steps=cfg.pgd_steps, x_min=0.0, x_max=1.0, seed=step), cfg.eps
    if m == "local-lip":
        return tr.local_lip_loss(model, x, y, e, kappa=kappa_s(step), power_steps=cfg.power_steps,
                                 state=sched[5]), e
    assert m == "mtl-ibp"
    return tr.mtl_ibp_loss(model, x, y, e, alpha=cfg.alpha, norm=cfg.norm, steps=cfg.pgd_steps, x_min=0.0,
                           x_max=1.0, seed=step), e


def _save(path: Path, obj: dict) -> None:
    tmp = path.with_suffix(".tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)


def evaluate_model(model: nn.Module, X: Tensor, y: Tensor, eps: float, method: str, pgd_steps: int = 20,
                   batch: int = 256, norm: str = "inf", lipschitz: bool = False) -> dict[str, Any]:
    """Clean, PGD and certified accuracy (``fastcert.certify`` with ``method``) at ``eps`` (``norm`` ball) in
    [0, 1]; ``lipschitz``: also the accuracy certified by the Lipschitz margin
    (:func:`fastcert.training.local_lip_certify`, L2)."""
    import fastcert

    model.eval()
    n = X.shape[0]
    clean = pgd_ok = cert = lip = 0
    for i in range(0, n, batch):
        xb, yb = X[i:i + batch], y[i:i + batch]
        with torch.no_grad():
            clean += int((model(xb).argmax(1) == yb).sum())
        if eps > 0:
            r = fastcert.attacks.pgd(model, xb, eps, norm, labels=yb, steps=pgd_steps, restarts=1, x_min=0.0,
                                     x_max=1.0)
            pgd_ok += int((r.logits.argmax(1) == yb).sum())
        else:
            pgd_ok = clean
        c = fastcert.certify(model, xb, eps, norm=norm, labels=yb, method=method, x_min=0.0, x_max=1.0)
        cert += int(c.certified.sum())
        if lipschitz:
            lip += int(tr.local_lip_certify(model, xb, yb, eps)[0].sum())
    res: dict[str, Any] = {"clean_acc": clean / n, "pgd_acc": pgd_ok / n, "certified_acc": cert / n, "n": n,
                           "eps": eps, "norm": norm, "cert_method": method}
    if lipschitz:
        res["lipschitz_certified_acc"] = lip / n
    return res


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


_RANK_ENV = "FASTCERT_TRAIN_RANK_JOB"


def _run_rank() -> None:
    """A rank started by :func:`_launch` (torchrun's environment plus the job in ``$FASTCERT_TRAIN_RANK_JOB``)."""
    job = json.loads(os.environ[_RANK_ENV])
    world = int(os.environ["WORLD_SIZE"])
    torch.set_num_threads(max(1, (os.cpu_count() or 1) // world))
    train(TrainConfig(**job["config"]), resume=job["resume"], quiet=job["quiet"])


def _launch(cfg: TrainConfig, nproc: int, resume: bool, quiet: bool) -> None:
    """Start ``nproc`` local ranks as torchrun does (fresh interpreters with ``RANK``, ``LOCAL_RANK``,
    ``WORLD_SIZE``, ``MASTER_ADDR``, ``MASTER_PORT``), wait for them; a failing rank's error is raised.

    As torchrun's agent does, this process hosts the rendezvous store (``TORCHELASTIC_USE_AGENT_STORE``) on a
    port the OS picks while it is bound, so no other program can take the port between choosing and using it.
    Each rank's stderr is relayed (rank 0's live, the others' when they end) and its last lines kept for the
    error."""
    import codecs
    import subprocess
    import threading
    from collections import deque
    from datetime import timedelta

    import torch.distributed as dist

    store = dist.TCPStore("127.0.0.1", 0, nproc, is_master=True, timeout=timedelta(minutes=30),
                          wait_for_workers=False)
    job = json.dumps({"config": asdict(cfg), "resume": resume, "quiet": quiet})
    procs, tails, relays = [], [], []
    for rank in range(nproc):
        env = dict(os.environ, RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(nproc), MASTER_ADDR="127.0.0.1",
                   MASTER_PORT=str(store.port), TORCHELASTIC_USE_AGENT_STORE="True", **{_RANK_ENV: job})
        p = subprocess.Popen([sys.executable, "-c", "from fastcert.trainer import _run_rank; _run_rank()"],
                             env=env, stderr=subprocess.PIPE)
        tail: deque[str] = deque(maxlen=2)

        def relay(p: Any = p, tail: deque = tail, live: bool = rank == 0) -> None:
            chunks, dec = [], codecs.getincrementaldecoder("utf-8")(errors="replace")
            for raw in iter(lambda: os.read(p.stderr.fileno(), 65536), b""):  # chunks: progress bars use \r
                text = dec.decode(raw)
                if live:
                    sys.stderr.write(text)
                    sys.stderr.flush()
                chunks.append(text)
                if len(chunks) > 64:
                    chunks = ["".join(chunks)[-20000:]]
            out = "".join(chunks)
            lines = [ln.strip() for ln in out.replace("\r", "\n").splitlines()]
            tail.extend(ln for ln in lines if ln.split(":", 1)[-1].strip(" ^~"))  # not the caret lines
            if not live and p.wait() != 0:
                sys.stderr.write(out)

        t = threading.Thread(target=relay, daemon=True)
        t.start()
        procs.append(p), tails.append(tail), relays.append(t)
    errs = []
    for rank, (p, tail, t) in enumerate(zip(procs, tails, relays)):
        p.wait()
        t.join()
        if p.returncode != 0:
            lines = [ln for ln in tail if ln]
            errs.append(f"rank {rank} exited with status {p.returncode}" + (": " + " | ".join(lines) if lines else ""))
    del store
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
    res = evaluate_model(model, Xte[:n], yte[:n], cfg.eps, CERT_METHOD[cfg.method], norm=cfg.norm,
                         lipschitz=cfg.lipschitz_cert)
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
            if cfg.method == "local-lip":
                tr.project_thresholds(model)
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
