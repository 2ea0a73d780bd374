"""Issue #10, point 7: frictions a new user hit (each failed before its fix)."""

from __future__ import annotations

import inspect
import json
import subprocess
import sys

import pytest
import torch
from torch import nn

import fastcert
from fastcert import mip


def test_evaluate_json_stdout_is_json_only() -> None:
    """`fastcert evaluate --json` printed HiGHS's banner on stdout (C-level output, fd 1) before the JSON."""
    out = subprocess.run([sys.executable, "-m", "fastcert", "evaluate", "--n", "10", "--eps", "0.1", "--json",
                          "--quiet", "--mip-time-limit", "1", "--pgd-steps", "5", "--pgd-restarts", "1"],
                         capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-2000:]
    rows = json.loads(out.stdout)  # nothing but the JSON document
    assert rows and rows[0]["n"] == 10
    if rows[0]["n_mip"]:  # a solver was created, so HiGHS's banner went somewhere: to stderr
        assert "HiGHS" in out.stderr


def test_verify_stops_early_by_default() -> None:
    assert inspect.signature(mip.verify).parameters["early_stop"].default is True
    torch.manual_seed(0)
    m = nn.Sequential(nn.Linear(2, 4), nn.ReLU(), nn.Linear(4, 2)).double().eval()
    r = fastcert.verify(m, torch.rand(1, 2, dtype=torch.float64), 0.05, time_limit=10.0)[0][0]
    assert r.verdict in ("verified", "falsified") and r.min_value is None


@pytest.mark.parametrize("case", ["conversion", "method"])
def test_one_exception_type_for_not_supported(case: str) -> None:
    """Hardtanh raised ValueError at conversion, Sigmoid under CROWN UnsupportedError (not a ValueError).
    Both are supported now: an unsupported layer (GELU) at conversion and a method that does not cover a
    layer (KW on a sigmoid) raise the same type, a ValueError."""
    act = nn.GELU() if case == "conversion" else nn.Sigmoid()
    m = nn.Sequential(nn.Linear(2, 2), act, nn.Linear(2, 1)).double().eval()
    with pytest.raises(fastcert.UnsupportedError) as info:
        fastcert.bounds(m, torch.zeros(1, 2, dtype=torch.float64), 0.1, method="kw")
    assert isinstance(info.value, ValueError)


def test_certify_says_when_labels_are_the_predictions() -> None:
    torch.manual_seed(0)
    m = nn.Sequential(nn.Linear(2, 3)).double().eval()
    x = torch.rand(4, 2, dtype=torch.float64)
    assert fastcert.certify(m, x, 0.01).labels_from_prediction
    assert not fastcert.certify(m, x, 0.01, labels=[0, 1, 2, 0]).labels_from_prediction


def test_pgd_accepts_a_float32_model_with_float64_input() -> None:
    """certify accepted a float32 model with float64 x, attacks.pgd refused it: now it attacks an exact
    float64 copy (the function certify bounds); the model itself is left untouched."""
    from fastcert import attacks

    torch.manual_seed(0)
    m = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3)).eval()  # float32
    x = torch.rand(5, 4, dtype=torch.float64)
    res = attacks.pgd(m, x, 0.3, labels=[0, 1, 2, 0, 1], steps=10, seed=0)
    assert res.x_adv.dtype == torch.float64
    assert next(m.parameters()).dtype == torch.float32
    cert = fastcert.certify(m, x, 0.3, labels=[0, 1, 2, 0, 1])
    assert not (cert.certified & res.success).any()
