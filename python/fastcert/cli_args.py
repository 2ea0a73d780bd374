"""Argument helpers shared by the ``fastcert`` subcommands (:mod:`fastcert.cli`, :mod:`fastcert.cli_tasks`)."""

from __future__ import annotations

import argparse


def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected an integer >= 1, got {value}")
    return value


class UsageError(Exception):
    """Bad arguments found after parsing; exits with status 2."""


def add_model_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", default=None, metavar="PATH|mlp|cnn",
                   help="an .onnx file, a torch.save()d nn.Module (.pt/.pth), or the demo's 'mlp' (default) / 'cnn'")


__all__ = ["UsageError", "add_model_arg", "positive_int"]
