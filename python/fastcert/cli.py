"""The ``fastcert`` command line: ``fastcert <subcommand> [options]``.

Subcommands are registered in :data:`SUBCOMMANDS` as ``(name, help, add_arguments, run)``;
``run(args) -> int`` imports its heavy dependencies (torch, ...) lazily so that
``fastcert --version`` and ``fastcert info`` stay fast (as fast as ``import fastcert`` allows:
the package imports torch).

* ``demo``: certified accuracy of two small digit models (offline).
* ``info``: how the compiled core was built.
* ``vnncomp NET.onnx SPEC.vnnlib --timeout T --out RESULT``: one VNN-COMP instance
  (:mod:`fastcert.vnncomp`); the result file holds ``sat`` / ``unsat`` / ``timeout`` / ``unknown``
  and, for ``sat``, the counterexample. ``--json`` adds one JSON line with the start-up and solve times.
* ``serve --socket PATH``: a warm process that answers ``vnncomp --server PATH`` requests (networks
  stay loaded); the client then costs only the interpreter and this module, provided ``import fastcert``
  itself is light (see docs/vnncomp.md: today the package ``__init__`` imports torch eagerly).
* ``bench-suite DIR/instances.csv``: every instance of a benchmark folder in one process, compared with
  the published verdicts and the competition tools (:mod:`fastcert.vnncomp_suite`); exit status 1 on
  any contradiction with a published sat/unsat verdict.
* ``evaluate``: clean / PGD / MIP-lower / certified-upper robust error table (:mod:`fastcert.evaluate`).

Errors exit non-zero with a one-line ``fastcert: error: ...`` on stderr
(set ``FASTCERT_DEBUG=1`` for the traceback).
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import io
import json
import math
import os
import sys
import time
from collections.abc import Callable, Sequence
from typing import NoReturn

from fastcert.cli_args import UsageError as _UsageError
from fastcert.cli_args import add_model_arg as _add_model_arg
from fastcert.cli_args import positive_int as _positive_int
from fastcert.cli_tasks import add_task, task_runner

__all__ = ["SUBCOMMANDS", "build_parser", "main"]

EXIT_USAGE = 2


class _Parser(argparse.ArgumentParser):
    """ArgumentParser whose usage errors are one line on stderr (exit status 2)."""

    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message} (see '{self.prog} --help')\n")


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("fastcert")
    except PackageNotFoundError:  # running from a source tree that is not installed
        return "unknown"


def _float_list(text: str) -> list[float]:
    """Parse ``"0.01,0.02"`` into ``[0.01, 0.02]``."""
    try:
        values = [float(t) for t in text.split(",") if t.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers, got {text!r}") from None
    if not values:
        raise argparse.ArgumentTypeError("expected at least one value")
    for v in values:
        if not (v >= 0 and v != float("inf")):  # also rejects nan
            raise argparse.ArgumentTypeError(f"eps must be finite and >= 0, got {v}")
    return values


def _str_list(text: str) -> list[str]:
    values = [t.strip() for t in text.split(",") if t.strip()]
    if not values:
        raise argparse.ArgumentTypeError("expected at least one value")
    return values


# --------------------------------------------------------------------------------------- info
def _add_info(p: argparse.ArgumentParser) -> None:
    p.add_argument("--compact", action="store_true", help="print on one line")


def _run_info(args: argparse.Namespace) -> int:
    from fastcert import build_info

    print(json.dumps(build_info(), indent=None if args.compact else 2, sort_keys=True))
    return 0


# --------------------------------------------------------------------------------------- demo
_DEMO_METHODS = ("ibp", "fastlin", "kw", "crown", "crown-ibp")
_DEMO_EPS = "0,0.005,0.01,0.02,0.05"


def _add_demo(p: argparse.ArgumentParser) -> None:
    p.add_argument("--eps", type=_float_list, default=_float_list(_DEMO_EPS), metavar="E1,E2,...",
                   help=f"Linf radii, in [0,1] pixel units (default {_DEMO_EPS}; 0 is always added)")
    p.add_argument("--methods", type=_str_list, default=list(_DEMO_METHODS), metavar="M1,M2,...",
                   help=f"certification methods, from {','.join(_DEMO_METHODS)} (default: all)")
    p.add_argument("--n-test", type=_positive_int, default=None, metavar="N",
                   help="certify only the first N test digits (default: all 450)")
    p.add_argument("--batch-size", type=_positive_int, default=128, metavar="B",
                   help="samples per certify() call (default 128)")
    p.add_argument("--models", type=_str_list, default=["mlp", "cnn"], metavar="M1,M2",
                   help="which demo models, from mlp,cnn (default: both)")
    p.add_argument("--out", default="fastcert-demo-out", metavar="DIR",
                   help="directory for certified_accuracy.png (default ./fastcert-demo-out)")
    p.add_argument("--no-plot", action="store_true", help="do not write the PNG plot")
    p.add_argument("--retrain", action="store_true", help="train again, ignoring cached models")
    p.add_argument("--json", action="store_true",
                   help="print results as JSON on stdout (the human-readable table goes to stderr)")
    p.add_argument("--quiet", "-q", action="store_true", help="no progress bars")  # fmt: skip


def _run_demo(args: argparse.Namespace) -> int:
    bad = [m for m in args.methods if m not in _DEMO_METHODS]
    if bad:
        raise _UsageError(f"unknown method(s) {','.join(bad)} (choose from {','.join(_DEMO_METHODS)})")
    bad = [m for m in args.models if m not in ("mlp", "cnn")]
    if bad:
        raise _UsageError(f"unknown model(s) {','.join(bad)} (choose from mlp,cnn)")
    from fastcert.demo import run_demo

    return run_demo(
        eps=args.eps, methods=args.methods, n_test=args.n_test, out=args.out, plot=not args.no_plot,
        retrain=args.retrain, json_output=args.json, quiet=args.quiet, batch_size=args.batch_size,
        models=args.models,
    )  # fmt: skip


# ------------------------------------------------------------------------------------ vnncomp
def _process_age_s() -> float | None:
    """Seconds since this process started (Linux ``/proc``, 10 ms resolution), else None."""
    try:
        with open("/proc/self/stat") as f:
            start_ticks = int(f.read().rsplit(")", 1)[1].split()[19])
        with open("/proc/uptime") as f:
            uptime = float(f.read().split()[0])
        return max(0.0, uptime - start_ticks / os.sysconf("SC_CLK_TCK"))
    except (OSError, ValueError, IndexError, AttributeError):
        return None


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not (value > 0 and value != float("inf")):
        raise argparse.ArgumentTypeError(f"expected a finite number > 0, got {text}")
    return value


def _add_vnncomp(p: argparse.ArgumentParser) -> None:
    p.add_argument("onnx", metavar="NET.onnx", help="the network (ONNX; X.onnx.gz is found for X.onnx)")
    p.add_argument("vnnlib", metavar="SPEC.vnnlib", help="the property (VNN-LIB; plain or gzipped)")
    p.add_argument("--timeout", type=_positive_float, default=60.0, metavar="T",
                   help="time limit in seconds for the solve, start-up excluded (default 60)")
    p.add_argument("--out", metavar="RESULT", help="write the VNN-COMP result file here")
    p.add_argument("--json", action="store_true",
                   help="print one JSON line (verdict, reason, startup_s, solve_s, ...) instead of the verdict")
    p.add_argument("--seed", type=int, default=0, help="seed of the attack's random restarts (default 0)")
    p.add_argument("--no-mip", action="store_true", help="attack and incomplete bounds only")
    p.add_argument("--server", metavar="SOCKET",
                   help="send the instance to a warm 'fastcert serve --socket SOCKET' process (solved here if "
                        "none answers)")


def _ask_server(sock_path: str, req: dict, timeout: float) -> dict | None:
    """One request to a ``fastcert serve`` process; None when none listens at ``sock_path``."""
    import socket

    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        s.settimeout(5.0)
        s.connect(sock_path)
        s.settimeout(timeout)
        s.sendall((json.dumps(req) + "\n").encode())
        data = b""
        while not data.endswith(b"\n"):
            chunk = s.recv(65536)
            if not chunk:
                break
            data += chunk
    except (FileNotFoundError, ConnectionRefusedError):
        return None
    finally:
        s.close()
    if not data:
        raise RuntimeError(f"the server at {sock_path} closed the connection without an answer (did it crash? "
                           f"see its log)")
    return json.loads(data)


def _report_vnncomp(args: argparse.Namespace, rec: dict, import_s: float | None) -> int:
    rec["import_s"] = None if import_s is None else round(import_s, 4)
    rec["startup_s"] = round((import_s or 0.0) + rec["load_s"], 4)
    if rec["verdict"] in ("unknown", "timeout"):
        print(f"fastcert vnncomp: {rec['verdict']}: {rec['reason']}", file=sys.stderr)
    print(json.dumps(rec) if args.json else rec["verdict"])
    return 0


def _run_vnncomp(args: argparse.Namespace) -> int:
    import_s = _process_age_s()  # interpreter + `import fastcert` so far
    if args.server:
        req = {"onnx": os.path.abspath(args.onnx), "vnnlib": os.path.abspath(args.vnnlib), "timeout": args.timeout,
               "out": os.path.abspath(args.out) if args.out else None, "seed": args.seed, "use_mip": not args.no_mip}
        rec = _ask_server(args.server, req, args.timeout + 120.0)
        if rec is not None:
            if "error" in rec:
                if rec.get("kind") == "usage":
                    raise _UsageError(rec["error"])
                raise RuntimeError(f"server: {rec['error']}")
            rec["server"] = args.server
            return _report_vnncomp(args, rec, import_s)
        print(f"fastcert vnncomp: no server at {args.server}; solving in this process", file=sys.stderr)
    t0 = time.perf_counter()
    from fastcert.vnncomp import (
        load_instance,
        result_record,
        solve_instance,
        write_result,
    )

    import_s = None if import_s is None else import_s + time.perf_counter() - t0
    try:
        inst = load_instance(args.onnx, args.vnnlib)
    except FileNotFoundError as exc:
        raise _UsageError(str(exc)) from None
    res = solve_instance(inst, args.timeout, seed=args.seed, use_mip=not args.no_mip)
    if args.out:
        write_result(args.out, res)
    return _report_vnncomp(args, result_record(inst, res, args.timeout, args.out), import_s)


# -------------------------------------------------------------------------------------- serve
def _add_serve(p: argparse.ArgumentParser) -> None:
    p.add_argument("--socket", required=True, metavar="PATH", help="the Unix socket to listen on")
    p.add_argument("--idle-timeout", type=_positive_float, default=None, metavar="S",
                   help="stop after S seconds without a request (default: never)")
    p.add_argument("--preload", action="append", default=[], metavar="NET.onnx",
                   help="load this network before listening (repeatable)")
    p.add_argument("--stop", action="store_true", help="ask the server listening on --socket to stop, and exit")


def _run_serve(args: argparse.Namespace) -> int:
    if args.stop:
        rec = _ask_server(args.socket, {"cmd": "shutdown"}, 30.0)
        if rec is None:
            print(f"fastcert serve: no server at {args.socket}", file=sys.stderr)
            return 1
        return 0
    from fastcert.vnncomp import serve

    try:
        return serve(args.socket, idle_timeout=args.idle_timeout, preload=tuple(args.preload))
    except FileNotFoundError as exc:
        raise _UsageError(str(exc)) from None


# -------------------------------------------------------------------------------- bench-suite
def _add_bench_suite(p: argparse.ArgumentParser) -> None:
    p.add_argument("instances", metavar="BENCHMARK_DIR/instances.csv",
                   help="a VNN-COMP instances.csv; verdicts.csv beside it and ../results_csv/ are used if present")
    p.add_argument("--timeout-scale", type=_positive_float, default=1.0, metavar="S",
                   help="multiply every instance's time limit by S (default 1)")
    p.add_argument("--limit", type=_positive_int, default=None, metavar="N", help="run only the first N instances")
    p.add_argument("--out", metavar="results.csv", help="write the per-instance rows to this CSV file")
    p.add_argument("--json", action="store_true",
                   help="print the summary as JSON on stdout (the table goes to stderr)")
    p.add_argument("--seed", type=int, default=0, help="seed of the attacks (default 0)")
    p.add_argument("--no-mip", action="store_true", help="attack and incomplete bounds only")
    p.add_argument("--quiet", "-q", action="store_true", help="no progress bar")
    p.add_argument("--ray", nargs="?", const="", default=None, metavar="ADDRESS",
                   help="spread the instances over Ray workers, one instance each at a time (a local Ray when no "
                        "ADDRESS is given; needs pip install 'fastcert[ray]')")
    p.add_argument("--workers", type=_positive_int, default=2, help="Ray workers (default 2)")


def _run_bench_suite(args: argparse.Namespace) -> int:
    import_s = _process_age_s()
    from fastcert.vnncomp_suite import format_summary, run_suite, suite_json, write_rows

    if not os.path.isfile(args.instances):
        raise _UsageError(f"no such file: {args.instances}; pass a benchmark folder's instances.csv")
    kw = {"timeout_scale": args.timeout_scale, "limit": args.limit, "seed": args.seed, "use_mip": not args.no_mip,
          "progress": not args.quiet}
    try:
        if args.ray is not None:
            from fastcert.distributed import run_suite_ray

            res = run_suite_ray(args.instances, address=args.ray or None, workers=args.workers, **kw)
        else:
            res = run_suite(args.instances, **kw)
    except ValueError as exc:
        raise _UsageError(str(exc)) from None
    if args.out:
        write_rows(res, args.out)
    format_summary(res, sys.stderr if args.json else sys.stdout)
    if import_s is not None:
        print(f"process start-up (interpreter + import fastcert): {import_s:.2f} s, once for the whole suite",
              file=sys.stderr if args.json else sys.stdout)
    if args.json:
        print(json.dumps(suite_json(res, {"process_import_s": import_s})))
    return 1 if res.contradictions else 0


# ----------------------------------------------------------------------------------- evaluate
_EVAL_METHODS = ("crown", "alpha-crown", "crown-ibp", "fastlin", "kw", "ibp")


def _add_evaluate(p: argparse.ArgumentParser) -> None:
    _add_model_arg(p)
    p.add_argument("--data", default=None, metavar="digits|PATH",
                   help="'digits' (default: scikit-learn's test split), an .npz with x and y, or a CSV of "
                        "label,pixels 0..255 rows")
    p.add_argument("--eps", type=_float_list, default=[0.05], metavar="E1,E2,...",
                   help="radii, one table row each (default 0.05)")
    p.add_argument("--n", type=_positive_int, default=100, metavar="N", help="first N samples (default 100)")
    p.add_argument("--method", default="crown", choices=_EVAL_METHODS,
                   help="incomplete bound for the upper bound (default crown)")
    p.add_argument("--norm", default="inf", choices=("inf", "1", "2"), help="ball norm (default inf)")
    p.add_argument("--mip-time-limit", type=float, default=10.0, metavar="S",
                   help="MIP seconds per sample left open by PGD and the bound (default 10; 0 disables the MIP)")
    p.add_argument("--pgd-steps", type=_positive_int, default=100, metavar="K", help="PGD steps (default 100)")
    p.add_argument("--pgd-restarts", type=_positive_int, default=5, metavar="R", help="PGD restarts (default 5)")
    p.add_argument("--x-min", type=float, default=0.0, help="input domain lower end (default 0)")
    p.add_argument("--x-max", type=float, default=1.0, help="input domain upper end (default 1)")
    p.add_argument("--seed", type=int, default=0, help="PGD seed (default 0)")
    p.add_argument("--json", action="store_true", help="print the rows as JSON on stdout (the table goes to stderr)")
    p.add_argument("--quiet", "-q", action="store_true", help="no progress bars")


def _run_evaluate(args: argparse.Namespace) -> int:
    if not (args.mip_time_limit >= 0 and math.isfinite(args.mip_time_limit)):
        raise _UsageError(f"--mip-time-limit must be a finite number >= 0, got {args.mip_time_limit}")
    if args.x_min > args.x_max:
        raise _UsageError(f"--x-min {args.x_min} > --x-max {args.x_max}")
    from fastcert.evaluate import run_evaluate

    try:
        rows = run_evaluate(model=args.model, data=args.data, eps=args.eps, n=args.n, method=args.method,
                            norm=args.norm, mip_time_limit=args.mip_time_limit, pgd_steps=args.pgd_steps,
                            pgd_restarts=args.pgd_restarts, x_min=args.x_min, x_max=args.x_max, seed=args.seed,
                            quiet=args.quiet, out=sys.stderr if args.json else sys.stdout)
    except FileNotFoundError as exc:
        raise _UsageError(str(exc)) from None
    if args.json:
        print(json.dumps([{k: v for k, v in r.as_dict().items() if k != "status"} for r in rows]))
    return 0


# ---------------------------------------------------------------------------------- registry
Subcommand = tuple[str, str, Callable[[argparse.ArgumentParser], None], Callable[[argparse.Namespace], int]]

# --------------------------------------------------------------------------------------- train
def _add_train(p: argparse.ArgumentParser) -> None:
    from fastcert.trainer import DATASETS, METHODS, MODELS, NOT_YET, TrainConfig

    d = TrainConfig()
    p.add_argument("--method", default=d.method, choices=(*METHODS, *NOT_YET),
                   help=f"training method (default {d.method})")
    p.add_argument("--model", default=d.model, choices=MODELS, help=f"architecture (default {d.model})")
    p.add_argument("--data", default=d.data, metavar="{" + ",".join(DATASETS) + ",PATH}",
                   help="data set: digits (bundled, default), mnist / fashion-mnist / cifar10 (files in --data-dir), "
                        "or a folder with IDX files or CIFAR-10 binary batches")
    p.add_argument("--data-dir", default=None, metavar="DIR", help="folder of the mnist / fashion-mnist / cifar10 files")
    p.add_argument("--eps", type=float, default=d.eps, help=f"radius in [0, 1] pixel units (default {d.eps})")
    p.add_argument("--norm", default=d.norm, choices=("inf", "2"),
                   help="the ball's norm (default inf; local-lip needs 2)")
    p.add_argument("--epochs", type=_positive_int, default=d.epochs, help=f"epochs (default {d.epochs})")
    p.add_argument("--batch-size", type=_positive_int, default=d.batch_size, metavar="B")
    p.add_argument("--lr", type=float, default=d.lr, help=f"Adam learning rate (default {d.lr})")
    p.add_argument("--seed", type=int, default=d.seed)
    p.add_argument("--warmup-epochs", type=float, default=d.warmup_epochs,
                   help=f"clean-training epochs before the eps ramp (default {d.warmup_epochs})")
    p.add_argument("--ramp-epochs", type=float, default=None,
                   help="epochs over which eps (and kappa, beta) ramp (default: half of the epochs after the warm-up)")
    p.add_argument("--kappa-end", type=float, default=d.kappa_end, help=f"final kappa (default {d.kappa_end})")
    p.add_argument("--beta-end", type=float, default=d.beta_end, help="CROWN-IBP's final beta (default 0)")
    p.add_argument("--alpha", type=float, default=d.alpha, help=f"MTL-IBP's alpha (default {d.alpha})")
    p.add_argument("--pgd-steps", type=_positive_int, default=d.pgd_steps, help="PGD steps (pgd, mtl-ibp)")
    p.add_argument("--mmr-lambda", type=float, default=d.mmr_lambda, help="MMR's lambda (ramped from 0 as eps is)")
    p.add_argument("--mmr-gamma-b", type=float, default=None, help="MMR's gamma_B (default: eps)")
    p.add_argument("--mmr-gamma-d", type=float, default=None, help="MMR's gamma_D (default: eps)")
    p.add_argument("--adv-frac", type=float, default=d.adv_frac,
                   help="MMR: the share of each batch replaced by PGD points (default 0)")
    p.add_argument("--power-steps", type=_positive_int, default=d.power_steps,
                   help="Local-Lip: power-iteration steps per training step (default 1)")
    p.add_argument("--kw-proj", type=_positive_int, default=None, metavar="K",
                   help="kw: estimate the intermediate bounds from K random Cauchy projections (convex_adversarial's "
                        "proj; default: exact)")
    p.add_argument("--lipschitz-cert", action="store_true",
                   help="also report accuracy certified by the L2 local-Lipschitz margin (sound; exact per-sample "
                        "norms are costly on MNIST-sized layers)")
    p.add_argument("--eval-n", type=_positive_int, default=None, metavar="N",
                   help="evaluate on the first N test images (default: all)")
    p.add_argument("--out", default=d.out, metavar="DIR",
                   help="folder for checkpoint.pt, log.csv, curves.png, model.pt, final.json")
    p.add_argument("--resume", action="store_true", help="continue the run whose checkpoint is in --out")
    p.add_argument("--nproc", type=_positive_int, default=1, metavar="N",
                   help="data-parallel processes on this machine (torch.distributed, gloo); under torchrun the "
                        "launcher's group is used instead")
    p.add_argument("--json", action="store_true", help="print the final evaluation as JSON on stdout")
    p.add_argument("--quiet", "-q", action="store_true", help="no progress bars")


def _run_train(args: argparse.Namespace) -> int:
    from fastcert.trainer import TrainConfig, train

    cfg = TrainConfig(method=args.method, model=args.model, data=args.data, data_dir=args.data_dir, eps=args.eps,
                      epochs=args.epochs, batch_size=args.batch_size, lr=args.lr, seed=args.seed,
                      warmup_epochs=args.warmup_epochs, ramp_epochs=args.ramp_epochs, kappa_end=args.kappa_end,
                      beta_end=args.beta_end, alpha=args.alpha, pgd_steps=args.pgd_steps, eval_n=args.eval_n,
                      out=args.out, norm=args.norm, mmr_lambda=args.mmr_lambda, mmr_gamma_b=args.mmr_gamma_b,
                      mmr_gamma_d=args.mmr_gamma_d, adv_frac=args.adv_frac, power_steps=args.power_steps,
                      lipschitz_cert=args.lipschitz_cert, kw_proj=args.kw_proj)
    try:
        cfg.check()
    except ValueError as exc:
        raise _UsageError(str(exc)) from exc
    res = train(cfg, resume=args.resume, quiet=args.quiet, nproc=args.nproc)
    if not res:  # a torchrun rank other than 0
        return 0
    if args.json:
        print(json.dumps(res))
    else:
        print(f"{cfg.method} {cfg.model} on {cfg.data}, eps {cfg.eps}: clean {res['clean_acc']:.4f}  "
              f"PGD {res['pgd_acc']:.4f}  certified ({res['cert_method']}) {res['certified_acc']:.4f}  "
              + (f"certified (Lipschitz margin) {res['lipschitz_certified_acc']:.4f}  "
                 if "lipschitz_certified_acc" in res else "") +
              f"on {res['n']} test images; {res['train_seconds']:.1f} s; files in {cfg.out}")
    return 0


SUBCOMMANDS: list[Subcommand] = [
    ("demo", "train two small digit classifiers and plot certified accuracy (offline)", _add_demo, _run_demo),
    ("info", "print how the compiled core was built (BLAS, OpenMP, CUDA) as JSON", _add_info, _run_info),
    ("vnncomp", "decide one VNN-COMP instance (ONNX + VNN-LIB) and write the result file", _add_vnncomp,
     _run_vnncomp),
    ("serve", "keep a warm process for 'fastcert vnncomp --server' (a Unix socket)", _add_serve, _run_serve),
    ("bench-suite", "run a VNN-COMP benchmark folder and compare with published verdicts and tools",
     _add_bench_suite, _run_bench_suite),
    ("evaluate", "clean / PGD / MIP-lower / certified-upper robust error table (MMR-style)", _add_evaluate,
     _run_evaluate),
    ("train", "certified / adversarial training (IBP, CROWN-IBP, KW, MMR, Local-Lip, PGD, MTL-IBP) with curves",
     _add_train, _run_train),
    ("robustness", "certified radius per image by bisection (the CROWN / RecurJac reference's robustness task)",
     add_task, task_runner("robustness")),
    ("lipschitz", "local Lipschitz bounds over log-spaced radii per image (the reference's lipschitz task)",
     add_task, task_runner("lipschitz")),
    ("landscape", "R_max: the largest radius where some gradient entry keeps its sign (the landscape task)",
     add_task, task_runner("landscape")),
]


def build_parser() -> argparse.ArgumentParser:
    """The ``fastcert`` argument parser with every subcommand of :data:`SUBCOMMANDS`."""
    parser = _Parser(prog="fastcert", description="Fast, sound neural-network robustness verification.")
    parser.add_argument("--version", action="version", version=f"fastcert {_version()}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    for name, help_text, add_arguments, run in SUBCOMMANDS:
        p = sub.add_parser(name, help=help_text, description=help_text)
        add_arguments(p)
        p.set_defaults(_run=run)
    return parser


@contextlib.contextmanager
def _c_stdout_to_stderr():
    """While a ``--json`` command runs, what C libraries write to file descriptor 1 (HiGHS prints its
    banner there when a solver is created) goes to stderr, so that stdout holds the JSON alone. Python's
    ``sys.stdout``, when it is the process's real stdout, keeps writing to the original descriptor."""
    try:
        real = sys.stdout.fileno() == 1
    except (AttributeError, OSError, ValueError, io.UnsupportedOperation):
        real = False  # e.g. captured by a test harness: only the C-level descriptor is redirected
    sys.stdout.flush()
    saved = os.dup(1)
    os.dup2(2, 1)
    old = sys.stdout
    if real:
        sys.stdout = open(saved, "w", buffering=1 if old.line_buffering else -1, closefd=False,  # noqa: SIM115
                          encoding=old.encoding, errors=old.errors)
    try:
        yield
    finally:
        sys.stdout.flush()
        try:  # C stdio buffers what it printed (fully buffered on a pipe): out before fd 1 is restored
            ctypes.CDLL(None).fflush(None)
        except (OSError, AttributeError):  # pragma: no cover - no C library handle on this platform
            pass
        if real:
            sys.stdout.close()
            sys.stdout = old
        os.dup2(saved, 1)
        os.close(saved)


def _dispatch(parser: argparse.ArgumentParser, args: argparse.Namespace) -> int:
    if getattr(args, "_run", None) is None:
        parser.print_help(sys.stderr)
        return EXIT_USAGE
    try:
        if getattr(args, "json", False):
            with _c_stdout_to_stderr():
                return int(args._run(args))
        return int(args._run(args))
    except _UsageError as exc:
        print(f"fastcert {args.command}: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print("fastcert: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # e.g. `fastcert demo --json | head`
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 1
    except Exception as exc:
        if os.environ.get("FASTCERT_DEBUG"):
            raise
        msg = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        print(f"fastcert: error: {msg}", file=sys.stderr)
        return 1


# Commands after which the console script leaves without the interpreter's teardown: with torch loaded it
# takes 0.2-1 s (module and allocator clean-up), which VNN-COMP counts as run time. Their files are
# written and closed (atomic rename) before they return.
_FAST_EXIT = ("vnncomp",)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``fastcert`` console script; returns the exit status.

    Run as the console script (``argv`` None), ``vnncomp`` ends the process with ``os._exit`` once its
    output is flushed, skipping the interpreter's teardown; called with ``argv`` it always returns."""
    parser = build_parser()
    args = parser.parse_args(list(argv) if argv is not None else None)
    rc = _dispatch(parser, args)
    if argv is None and getattr(args, "command", None) in _FAST_EXIT:
        try:
            sys.stdout.flush()
            sys.stderr.flush()
        finally:
            os._exit(rc)
    return rc


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
