"""``fastcert.evaluate`` / ``fastcert evaluate``: the MMR-style robust-error table on a small digits model.

Invariants of every row: ``clean <= PGD <= lower <= upper <= bound`` (the MIP can only move samples
from "open" to falsified or verified), at eps = 0 all four errors coincide, and the per-sample statuses
add up to the fractions."""

from __future__ import annotations

import io
import json
import warnings
from pathlib import Path

import pytest
import torch
from fastcert.cli import main
from fastcert.evaluate import (
    STATUSES,
    EvaluationResult,
    evaluate,
    format_table,
    load_data,
)
from fastcert.io import load_digits_tensors
from torch import nn

N = 40


@pytest.fixture(scope="module")
def digits_model() -> tuple[nn.Module, torch.Tensor, torch.Tensor]:
    """A 64-32-10 ReLU MLP trained briefly on the digits (float64), and N test digits."""
    torch.manual_seed(0)
    x_tr, y_tr, x_te, y_te = load_digits_tensors(torch.float64)
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 10)).double()
    opt = torch.optim.Adam(model.parameters(), lr=2e-2)
    for _ in range(80):
        opt.zero_grad()
        nn.functional.cross_entropy(model(x_tr), y_tr).backward()
        opt.step()
    return model.eval(), x_te[:N], y_te[:N]


def _check_invariants(r: EvaluationResult) -> None:
    assert 0 <= r.clean_error <= r.pgd_error <= r.lower_bound <= r.upper_bound <= r.bound_error <= 1, r
    cnt = {s: r.status.count(s) for s in STATUSES}
    assert sum(cnt.values()) == r.n == N
    assert r.clean_error == cnt["misclassified"] / N
    assert r.upper_bound - r.lower_bound == pytest.approx(cnt["open"] / N)
    assert r.n_mip == cnt["mip-verified"] + cnt["mip-falsified"] + (cnt["open"] if r.n_mip else 0)
    assert set(r.times) == {"clean", "pgd", "bound", "mip", "total"} and all(t >= 0 for t in r.times.values())


def test_invariants_of_the_table(digits_model) -> None:
    model, x, y = digits_model
    rows = [evaluate(model, x, y, eps, mip_time_limit=2.0, pgd_steps=40, pgd_restarts=2) for eps in (0.0, 0.05, 0.12)]
    for r in rows:
        _check_invariants(r)
    r0 = rows[0]
    assert r0.clean_error == r0.pgd_error == r0.lower_bound == r0.upper_bound < 0.3
    assert rows[2].pgd_error >= rows[1].pgd_error  # (PGD is a heuristic, but this gap is large)
    assert any(r.n_mip for r in rows[1:]), "no sample reached the MIP: pick a larger eps for this test"
    table = format_table(rows, "digits")
    assert table.splitlines()[0] == "digits" and len(table.splitlines()) >= 5


def test_no_mip_for_non_relu_networks(digits_model) -> None:
    _, x, y = digits_model
    torch.manual_seed(1)
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 16), nn.Tanh(), nn.Linear(16, 10)).double().eval()
    r = evaluate(model, x, y, 0.05, method="ibp", pgd_steps=10, pgd_restarts=1)
    assert r.n_mip == 0 and r.upper_bound == r.bound_error
    assert "tanh" in r.mip_note or r.status.count("open") == 0
    rc = evaluate(model, x, y, 0.05, method="crown", pgd_steps=10, pgd_restarts=1)  # CROWN relaxes tanh
    assert rc.n_mip == 0 and rc.lower_bound <= rc.upper_bound
    with pytest.raises(NotImplementedError, match="ibp"):  # the KW dual is ReLU-only: says what to use
        evaluate(model, x, y, 0.05, method="kw", pgd_steps=10, pgd_restarts=1)


def test_mip_disabled(digits_model) -> None:
    model, x, y = digits_model
    r = evaluate(model, x, y, 0.1, mip_time_limit=0, pgd_steps=20, pgd_restarts=1)
    _check_invariants(r)
    assert r.n_mip == 0 and r.upper_bound == r.bound_error
    assert r.status.count("open") == 0 or "disabled" in r.mip_note


def test_cli_with_a_saved_model_and_onnx(digits_model, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    model, x, _ = digits_model
    pt = tmp_path / "m.pt"
    torch.save(model, pt)
    argv = ["evaluate", "--n", str(N), "--eps", "0.05", "--mip-time-limit", "1", "--pgd-steps", "20",
            "--pgd-restarts", "1", "--json", "--quiet"]
    assert main([*argv, "--model", str(pt)]) == 0
    cap = capsys.readouterr()
    (rec,) = json.loads(cap.out)
    assert rec["n"] == N and rec["eps"] == 0.05 and "clean%" in cap.err
    assert 0 <= rec["clean_error"] <= rec["pgd_error"] <= rec["lower_bound"] <= rec["upper_bound"] <= 1

    buf = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model.float(), (x[:1].float(),), buf, dynamo=False, input_names=["x"],
                          output_names=["y"])
    model.double()
    (tmp_path / "m.onnx").write_bytes(buf.getvalue())
    assert main([*argv, "--model", str(tmp_path / "m.onnx")]) == 0
    (rec2,) = json.loads(capsys.readouterr().out)
    assert rec2["clean_error"] == rec["clean_error"]  # float32 ONNX weights: same predictions here
    assert 0 <= rec2["clean_error"] <= rec2["pgd_error"] <= rec2["lower_bound"] <= rec2["upper_bound"] <= 1


def test_cli_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["evaluate", "--model", str(tmp_path / "missing.pt")]) == 2
    assert "no such model file" in capsys.readouterr().err
    assert main(["evaluate", "--data", str(tmp_path / "missing.npz")]) == 2
    assert "no such data file" in capsys.readouterr().err
    assert main(["evaluate", "--mip-time-limit", "-1"]) == 2
    torch.save({"w": torch.zeros(1)}, tmp_path / "sd.pt")
    assert main(["evaluate", "--model", str(tmp_path / "sd.pt")]) == 1
    assert "not an nn.Module" in capsys.readouterr().err


def test_load_data_npz_and_csv(tmp_path: Path) -> None:
    import numpy as np

    np.savez(tmp_path / "d.npz", x=np.random.rand(5, 1, 4, 4), y=np.arange(5))
    x, y, _ = load_data(str(tmp_path / "d.npz"), 3, None)
    assert x.shape == (3, 1, 4, 4) and x.dtype == torch.float64 and y.tolist() == [0, 1, 2]
    (tmp_path / "d.csv").write_text("7,0,255,0,255\n2,255,255,0,0\n")
    x, y, _ = load_data(str(tmp_path / "d.csv"), 10, None)
    assert x.shape == (2, 1, 2, 2) and y.tolist() == [7, 2] and float(x.max()) == 1.0
    with pytest.raises(ValueError, match="values per sample"):
        load_data(str(tmp_path / "d.csv"), 10, (1, 3, 3))


def test_open_samples_of_a_tanh_network_say_why_no_mip() -> None:
    """Samples neither attacked nor certified on a tanh network: no MIP, and the note names tanh (the check
    once looked only at ReLU-family layers and missed the tanh primitive)."""
    torch.manual_seed(1)
    m = nn.Sequential(nn.Flatten(), nn.Linear(4, 16), nn.Tanh(), nn.Linear(16, 3)).double().eval()
    x = torch.rand(20, 1, 2, 2, dtype=torch.float64)
    with torch.no_grad():
        y = m(x).argmax(1)
    r = evaluate(m, x, y, 0.3, method="ibp", pgd_steps=2, pgd_restarts=1)
    assert r.status.count("open") > 0 and r.n_mip == 0
    assert "tanh" in r.mip_note and "ReLU" in r.mip_note
