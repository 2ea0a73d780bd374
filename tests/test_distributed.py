"""The Ray runner (issue #13 point 5): ``fastcert robustness --ray`` with a local cluster of 2 workers gives
exactly the single-process rows and summary, printed in image order."""

from __future__ import annotations

import io
import json

import numpy as np
import pytest
import torch

from fastcert.cli import main
from fastcert.tasks import TaskConfig, run_robustness

ray = pytest.importorskip("ray", reason="Ray is an optional extra (pip install 'fastcert[ray]')")


def test_ray_results_equal_single_process(tmp_path, capsys) -> None:
    from fastcert.distributed import run_robustness_ray

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(6, 16), torch.nn.ReLU(), torch.nn.Linear(16, 4)).double().eval()
    x = torch.rand(11, 6, dtype=torch.float64)
    with torch.no_grad():
        y = model(x).argmax(1)
    torch.save(model, tmp_path / "m.pt")
    np.savez(tmp_path / "d.npz", x=x.numpy(), y=y.numpy())
    cfg = TaskConfig(model=str(tmp_path / "m.pt"), data=str(tmp_path / "d.npz"), numimage=11, steps=8, batch=3,
                     targettype="random")
    one = run_robustness(cfg, out=io.StringIO(), progress=False)
    buf = io.StringIO()
    two = run_robustness_ray(cfg, workers=2, out=buf, progress=False)
    assert [{k: v for k, v in r.items() if k != "time_s"} for r in two["rows"]] == \
        [{k: v for k, v in r.items() if k != "time_s"} for r in one["rows"]]
    assert two["avg_radius"] == one["avg_radius"] and two["workers"] == 2
    images = [int(line.split("image = ")[1].split(",")[0]) for line in buf.getvalue().splitlines()
              if line.startswith("[L1]")]
    assert images == list(range(11))
    rc = main(["robustness", "--model", cfg.model, "--data", cfg.data, "--numimage", "11", "--steps", "8",
               "--batch", "3", "--targettype", "random", "--ray", "--workers", "2", "-q", "--json"])
    assert rc == 0
    res = json.loads(capsys.readouterr().out)
    assert [r["radius"] for r in res["rows"]] == [r["radius"] for r in one["rows"]]


def test_ray_only_for_robustness(capsys) -> None:
    assert main(["lipschitz", "--ray", "-q"]) == 2
    assert "--ray runs the robustness task only" in capsys.readouterr().err
