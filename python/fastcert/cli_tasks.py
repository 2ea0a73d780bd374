"""The ``fastcert robustness | lipschitz | landscape`` subcommands (the CROWN / RecurJac reference's tasks,
:mod:`fastcert.tasks`): their arguments and runner."""

from __future__ import annotations

import argparse
import json
import math
import sys
from collections.abc import Callable

from fastcert.cli_args import UsageError, add_model_arg, positive_int


def add_task(p: argparse.ArgumentParser) -> None:
    from fastcert.tasks import JAC_ALGS, LAYER_ALGS

    add_model_arg(p)
    p.add_argument("--data", default=None, metavar="digits|mnist|fashion-mnist|PATH",
                   help="'digits' (default: scikit-learn's test split), mnist / fashion-mnist (IDX files in "
                        "--data-dir, test split), an .npz with x and y, or a CSV of label,pixels 0..255 rows")
    p.add_argument("--data-dir", default=None, metavar="DIR", help="folder of the mnist / fashion-mnist IDX files")
    p.add_argument("--numimage", type=positive_int, default=10, metavar="N", help="images (default 10)")
    p.add_argument("--startimage", type=int, default=0, metavar="I", help="first image (default 0)")
    p.add_argument("--norm", default="inf", choices=("i", "1", "2", "inf"), help="ball norm (default inf)")
    p.add_argument("--eps", type=float, default=0.005, help="first radius of the search (default 0.005)")
    p.add_argument("--targettype", default="untargeted", metavar="untargeted|runnerup|least|random|CLASS",
                   help="which margin is certified (default untargeted: every other class)")
    p.add_argument("--layerbndalg", default="crown-adaptive", choices=sorted(LAYER_ALGS),
                   help="layer-wise bound (default crown-adaptive)")
    p.add_argument("--jacbndalg", default="disable", choices=JAC_ALGS,
                   help="certify by a Jacobian / Lipschitz bound instead (default disable)")
    p.add_argument("--lipsdir", type=int, default=-1, choices=(-1, 1),
                   help="Jacobian bound's recursion: -1 backward from the output, 1 forward from the input "
                        "(default -1)")
    p.add_argument("--lipsshift", type=int, default=1, choices=(0, 1),
                   help="forward recursion: 1 starts after the first layer, 0 at the input (default 1)")
    p.add_argument("--steps", type=positive_int, default=15, help="search steps (default 15)")
    p.add_argument("--lipsteps", type=positive_int, default=10,
                   help="robustness: sub-intervals of the Lipschitz integration; lipschitz: number of radii "
                        "(default 10)")
    p.add_argument("--liplogstart", type=float, default=-3.0, help="lipschitz: log10 of the first radius (-3)")
    p.add_argument("--liplogend", type=float, default=0.0, help="lipschitz: log10 of the last radius (0)")
    p.add_argument("--seed", type=int, default=0, help="seed of --targettype random (default 0)")
    p.add_argument("--batch", type=positive_int, default=32, help="images per bound call (default 32)")
    p.add_argument("--x-min", type=float, default=None, help="input domain lower end (default: none)")
    p.add_argument("--x-max", type=float, default=None, help="input domain upper end (default: none)")
    p.add_argument("--plot", default=None, metavar="PNG",
                   help="write a figure (lipschitz: constant vs eps, log axes; else a histogram of the radii)")
    p.add_argument("--json", action="store_true", help="print the result as JSON on stdout (lines go to stderr)")
    p.add_argument("--quiet", "-q", action="store_true", help="no progress bars")
    p.add_argument("--ray", nargs="?", const="", default=None, metavar="ADDRESS",
                   help="robustness: spread the batches over Ray workers (a local Ray when no ADDRESS is given; "
                        "needs pip install 'fastcert[ray]')")
    p.add_argument("--workers", type=positive_int, default=2, help="Ray workers (default 2)")


def task_runner(task: str) -> Callable[[argparse.Namespace], int]:
    def run(args: argparse.Namespace) -> int:
        from fastcert import tasks

        keys = ("model", "data", "data_dir", "numimage", "startimage", "norm", "eps", "targettype", "layerbndalg",
                "jacbndalg", "steps", "lipsteps", "liplogstart", "liplogend", "seed", "lipsdir", "lipsshift", "batch",
                "x_min", "x_max")
        cfg = tasks.TaskConfig(**{k: getattr(args, k) for k in keys})
        if not (math.isfinite(cfg.eps) and cfg.eps > 0):
            raise UsageError(f"--eps must be a finite number > 0, got {cfg.eps}")
        if cfg.startimage < 0:
            raise UsageError(f"--startimage must be >= 0, got {cfg.startimage}")
        try:
            tasks.resolve(cfg)
        except ValueError as exc:
            raise UsageError(str(exc)) from None
        fn = {"robustness": tasks.run_robustness, "lipschitz": tasks.run_lipschitz,
              "landscape": tasks.run_landscape}[task]
        if args.ray is not None:
            if task != "robustness":
                raise UsageError(f"--ray runs the robustness task only (not {task})")
            from functools import partial

            from fastcert.distributed import run_robustness_ray

            fn = partial(run_robustness_ray, address=args.ray or None, workers=args.workers)
        try:
            res = fn(cfg, out=sys.stderr if args.json else sys.stdout, progress=not args.quiet)
        except FileNotFoundError as exc:
            raise UsageError(str(exc)) from None
        if args.plot:
            tasks.plot(res, args.plot)
        if args.json:
            print(json.dumps(res))
        return 0

    return run


__all__ = ["add_task", "task_runner"]
