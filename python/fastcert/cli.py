"""The ``fastcert`` command line: ``fastcert <subcommand> [options]``.

Subcommands are registered in :data:`SUBCOMMANDS` as ``(name, help, add_arguments, run)``;
``run(args) -> int`` imports its heavy dependencies (torch, ...) lazily so that
``fastcert --version`` and ``fastcert info`` stay fast. Future subcommands (``vnncomp``,
``bench-suite``, ``evaluate``) plug in the same way.

Errors exit non-zero with a one-line ``fastcert: error: ...`` on stderr
(set ``FASTCERT_DEBUG=1`` for the traceback).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Callable, NoReturn, Sequence

__all__ = ["main", "build_parser", "SUBCOMMANDS"]

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


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected an integer >= 1, got {value}")
    return value


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


# ---------------------------------------------------------------------------------- registry
Subcommand = tuple[str, str, Callable[[argparse.ArgumentParser], None], Callable[[argparse.Namespace], int]]

SUBCOMMANDS: list[Subcommand] = [
    ("demo", "train two small digit classifiers and plot certified accuracy (offline)", _add_demo, _run_demo),
    ("info", "print how the compiled core was built (BLAS, OpenMP, CUDA) as JSON", _add_info, _run_info),
]


class _UsageError(Exception):
    """Bad arguments found after parsing; exits with status 2."""


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


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``fastcert`` console script; returns the exit status."""
    parser = build_parser()
    args = parser.parse_args(list(argv) if argv is not None else None)
    if getattr(args, "_run", None) is None:
        parser.print_help(sys.stderr)
        return EXIT_USAGE
    try:
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


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
