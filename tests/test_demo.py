"""End-to-end tests of ``fastcert demo`` and the CLI, run in-process on a small slice."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch

from fastcert.cli import main
from fastcert.io import load_digits_tensors

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def test_load_digits_tensors_shapes() -> None:
    x_tr, y_tr, x_te, y_te = load_digits_tensors()
    assert x_tr.shape == (1347, 1, 8, 8) and x_te.shape == (450, 1, 8, 8)
    assert y_tr.shape == (1347,) and y_te.shape == (450,)
    assert x_tr.dtype == torch.float32 and y_tr.dtype == torch.int64
    assert float(x_tr.min()) == 0.0 and float(x_tr.max()) == 1.0
    assert set(y_te.tolist()) == set(range(10))
    x2 = load_digits_tensors(torch.float64)[2]
    assert x2.dtype == torch.float64 and torch.equal(x2.float(), x_te)  # fixed split


def _run_json(capsys: pytest.CaptureFixture[str], argv: list[str]) -> dict[str, Any]:
    assert main(argv) == 0
    out = capsys.readouterr().out
    return json.loads(out)  # stdout holds nothing but the JSON document


def test_demo_end_to_end(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                         capsys: pytest.CaptureFixture[str]) -> None:  # fmt: skip
    monkeypatch.setenv("FASTCERT_CACHE", str(tmp_path / "cache"))
    out_dir = tmp_path / "out"
    argv = ["demo", "--n-test", "40", "--eps", "0.01", "--methods", "ibp,crown",
            "--out", str(out_dir), "--json", "--quiet"]  # fmt: skip
    res = _run_json(capsys, argv)

    png = out_dir / "certified_accuracy.png"
    assert res["plot"] == str(png) and png.is_file()
    assert png.read_bytes()[:8] == PNG_MAGIC
    from PIL import Image

    with Image.open(png) as im:
        im.verify()
        assert im.format == "PNG" and im.size[0] > 100 and im.size[1] > 100

    assert res["eps"] == [0.0, 0.01]  # eps 0 is always added
    assert [m["name"] for m in res["models"]] == ["mlp", "cnn"]
    for model in res["models"]:
        assert model["n_test"] == 40 and not model["cached"]
        assert model["clean_accuracy"] > 0.8, model["name"]
        recs = {(r["method"], r["eps"]): r for r in model["results"]}
        assert set(recs) == {(m, e) for m in ("ibp", "crown") for e in (0.0, 0.01)}
        for r in recs.values():
            assert "error" not in r and "warning" not in r, r
            assert 0.0 <= r["certified_accuracy"] <= model["clean_accuracy"], (model["name"], r)
            assert r["time_s"] >= 0.0
        for method in ("ibp", "crown"):  # at eps = 0 the bounds are exact: certified == correct
            assert recs[(method, 0.0)]["n_certified"] == model["n_correct"], (model["name"], method)

    # The models were cached under $FASTCERT_CACHE; a second run reuses them (same accuracy).
    assert len(list((tmp_path / "cache" / "demo").glob("*.pt"))) == 2
    res2 = _run_json(capsys, ["demo", "--n-test", "40", "--eps", "0", "--methods", "ibp",
                              "--models", "mlp", "--no-plot", "--json", "--quiet"])  # fmt: skip
    (mlp2,) = res2["models"]
    assert mlp2["cached"] and res2["plot"] is None
    assert mlp2["n_correct"] == res["models"][0]["n_correct"]


def test_demo_human_output(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                           capsys: pytest.CaptureFixture[str]) -> None:  # fmt: skip
    monkeypatch.setenv("FASTCERT_CACHE", str(tmp_path / "cache"))
    assert main(["demo", "--n-test", "8", "--eps", "0.01", "--methods", "ibp", "--models", "mlp",
                 "--no-plot", "--quiet"]) == 0  # fmt: skip
    out = capsys.readouterr().out
    assert "clean accuracy" in out and "eps=0.01" in out and "ibp" in out
    assert not (tmp_path / "fastcert-demo-out").exists()


def test_cli_info_and_version(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["info"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert "blas" in info and "cuda" in info
    with pytest.raises(SystemExit) as exc:
        main(["--version"])
    assert exc.value.code == 0
    assert capsys.readouterr().out.startswith("fastcert ")


@pytest.mark.parametrize("argv", [
    ["demo", "--methods", "ibp,nope"],
    ["demo", "--models", "resnet"],
    ["demo", "--eps", "abc"],
    ["demo", "--eps", "-0.1"],
    ["demo", "--n-test", "0"],
    ["no-such-command"],
])  # fmt: skip
def test_cli_usage_errors(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    try:
        code = main(argv)
    except SystemExit as exc:  # argparse's own errors
        code = exc.code
    assert code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "error" in err, err
