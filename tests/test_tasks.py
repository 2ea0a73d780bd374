"""``fastcert robustness`` / ``lipschitz`` / ``landscape`` (the CROWN / RecurJac reference's tasks, issue #13
point 4): a line per image and the final average line, JSON for pipelines equal to the library's results,
PNG figures, and knob errors that name the knob."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

import fastcert
from fastcert.cli import main


@pytest.fixture()
def files(tmp_path):
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(6, 16), torch.nn.Tanh(), torch.nn.Linear(16, 16), torch.nn.ReLU(),
                                torch.nn.Linear(16, 4)).double().eval()
    x = torch.rand(7, 6, dtype=torch.float64)
    with torch.no_grad():
        y = model(x).argmax(1)
    y[3] = (y[3] + 1) % 4  # one misclassified image
    torch.save(model, tmp_path / "m.pt")
    np.savez(tmp_path / "d.npz", x=x.numpy(), y=y.numpy())
    return model, x, y, str(tmp_path / "m.pt"), str(tmp_path / "d.npz"), tmp_path


def test_robustness_lines_json_and_equality_with_the_library(files, capsys) -> None:
    model, x, y, mpath, dpath, tmp = files
    rc = main(["robustness", "--model", mpath, "--data", dpath, "--numimage", "6", "--startimage", "1",
               "--steps", "8", "--eps", "0.01", "--batch", "4", "-q", "--plot", str(tmp / "h.png")])
    assert rc == 0
    out = capsys.readouterr().out.splitlines()
    assert sum(line.startswith("[L1]") for line in out) == 6 and out[-1].startswith("[L0]")
    assert "misclassified, skipped" in "\n".join(out) and "numimage = 5 (of 6" in out[-1]
    assert (tmp / "h.png").stat().st_size > 1000
    rc = main(["robustness", "--model", mpath, "--data", dpath, "--numimage", "6", "--startimage", "1",
               "--steps", "8", "--eps", "0.01", "--batch", "4", "-q", "--json"])
    res = json.loads(capsys.readouterr().out)
    want = fastcert.certified_radius(model, x[1:7], method="crown", steps=8, eps_init=0.01, labels=y[1:7])
    got = torch.tensor([r["radius"] for r in res["rows"]], dtype=torch.float64)
    assert torch.equal(got, want.radius)  # batching (4 + 2) changes nothing
    assert res["avg_radius"] == pytest.approx(float(want.radius[want.upper > 0].mean()))


def test_lipschitz_and_landscape_tasks(files, capsys) -> None:
    model, x, y, mpath, dpath, tmp = files
    rc = main(["lipschitz", "--model", mpath, "--data", dpath, "--numimage", "3", "--lipsteps", "4",
               "--liplogstart", "-2", "--liplogend", "1", "--targettype", "runnerup", "-q", "--json",
               "--plot", str(tmp / "l.png")])
    assert rc == 0
    res = json.loads(capsys.readouterr().out)
    assert res["eps"] == pytest.approx([0.01, 0.1, 1.0, 10.0]) and len(res["rows"]) == 3
    assert all(a <= b for a, b in zip(res["avg_lipschitz"], res["avg_lipschitz"][1:]))
    assert (tmp / "l.png").stat().st_size > 1000
    rc = main(["landscape", "--model", mpath, "--data", dpath, "--numimage", "3", "--targettype", "least",
               "--steps", "6", "-q", "--json"])
    assert rc == 0
    res = json.loads(capsys.readouterr().out)
    assert len(res["rows"]) == 3 and all(r["r_max"] >= 0 for r in res["rows"])


def test_lipsdir_and_lipsshift_reach_the_jacobian_bound(files, capsys) -> None:
    """--lipsdir 1 --lipsshift 0 gives the library's forward-recursion curve, row for row."""
    model, x, y, mpath, dpath, _ = files
    rc = main(["lipschitz", "--model", mpath, "--data", dpath, "--numimage", "2", "--lipsteps", "3",
               "--liplogstart", "-2", "--liplogend", "0", "--targettype", "1", "--lipsdir", "1", "--lipsshift",
               "0", "-q", "--json"])
    assert rc == 0
    res = json.loads(capsys.readouterr().out)
    C = torch.zeros(2, 1, 4, dtype=torch.float64)
    C[torch.arange(2), 0, y[:2]] = 1
    C[:, 0, 1] -= 1
    want = fastcert.lipschitz_curve(model, x[:2], "inf", "recurjac", C, -2, 0, 3, direction="forward", shift=0)
    got = torch.tensor([r["lipschitz"] for r in res["rows"]], dtype=torch.float64)  # [2, E]
    assert torch.equal(got, want.constant[:, :, 0].T)
    back = fastcert.lipschitz_curve(model, x[:2], "inf", "recurjac", C, -2, 0, 3)
    assert not torch.equal(got, back.constant[:, :, 0].T)  # the knob changed the recursion


@pytest.mark.parametrize("argv", [["--lipsdir", "0"], ["--lipsshift", "2"]])
def test_bad_recursion_knobs_are_refused_by_argparse(files, capsys, argv) -> None:
    _, _, _, mpath, dpath, _ = files
    with pytest.raises(SystemExit) as exc:
        main(["lipschitz", *argv, "--model", mpath, "--data", dpath, "-q"])
    assert exc.value.code == 2 and f"argument {argv[0]}: invalid choice" in capsys.readouterr().err


@pytest.mark.parametrize(("argv", "match"), [
    (["robustness", "--targettype", "closest"], "target must be one of"),
    (["landscape"], "landscape bounds one margin per image"),
    (["robustness", "--eps", "0"], "--eps must be a finite number > 0"),
    (["robustness", "--data", "mnist"], "--data-dir"),
    (["robustness", "--startimage", "100000"], "past the"),
])
def test_bad_knobs_name_the_knob(files, capsys, argv, match) -> None:
    _, _, _, mpath, dpath, _ = files
    data = [] if "--data" in argv else ["--data", dpath]
    rc = main([*argv, "--model", mpath, *data, "--numimage", "2", "-q"])
    assert rc != 0
    assert match in capsys.readouterr().err
