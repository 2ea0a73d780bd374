"""``fastcert vnncomp`` / ``bench-suite`` (:mod:`fastcert.vnncomp`, :mod:`fastcert.vnncomp_suite`).

Synthetic instances (hand-built ONNX graphs) test the result file, its round trip through the io reader,
the verdict logic and the CLI's exit codes; the shared VNN-COMP instances test that no verdict ever
contradicts a published sat/unsat one (with a short time limit: ``timeout`` / ``unknown`` contradict
nothing). That every shipped counterexample file is accepted by the checker is tested in
``test_onnx_vnnlib.py::test_shared_counterexamples_are_confirmed``.
"""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from fastcert.cli import main
from fastcert.io import check_counterexample, read_counterexample
from fastcert.vnncomp import (
    VnnOptions,
    VnnResult,
    format_result,
    load_instance,
    resolve_path,
    solve_instance,
    write_result,
)
from shared_data import require_shared

onnx = pytest.importorskip("onnx", reason="the onnx package is not installed (pip install onnx)")
from onnx import TensorProto, helper, numpy_helper

# =========================================================================== synthetic instances

# y = (relu(x0) + relu(x1), relu(x0) - relu(x1)) on the box [0, 1]^2: y0 in [0, 2], y1 in [-1, 1]
W1 = np.array([[1.0, 0.0], [0.0, 1.0]])
W2 = np.array([[1.0, 1.0], [1.0, -1.0]])

BOX = "(declare-const X_0 Real)\n(declare-const X_1 Real)\n(declare-const Y_0 Real)\n(declare-const Y_1 Real)\n" \
      "(assert (>= X_0 0.0))\n(assert (<= X_0 1.0))\n(assert (>= X_1 0.0))\n(assert (<= X_1 1.0))\n"
SAT = BOX + "(assert (>= Y_1 0.5))\n"  # x = (1, 0) gives y1 = 1
UNSAT = BOX + "(assert (>= Y_0 2.5))\n"  # y0 <= 2 < 2.5 (CROWN proves it: the ReLUs are stable)
UNSAT_OR = BOX + "(assert (or (and (>= Y_0 2.5)) (and (<= Y_1 -1.5))))\n"


def _onnx_mlp(path: Path, unsupported: bool = False) -> Path:
    inits = [numpy_helper.from_array(W1.astype(np.float32), "W1"), numpy_helper.from_array(W2.astype(np.float32), "W2")]
    nodes = [helper.make_node("Gemm", ["x", "W1"], ["h"], transB=1), helper.make_node("Relu", ["h"], ["r"]),
             helper.make_node("Gemm", ["r", "W2"], ["y"], transB=1)]
    shape = [1, 2]
    if unsupported:  # an operator fastcert does not support (Erf): the instance is answered unknown
        nodes = [helper.make_node("Erf", ["x"], ["f"])] + nodes
        nodes[1].input[0] = "f"
    g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, shape)],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], inits)
    path.write_bytes(helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)]).SerializeToString())
    return path


@pytest.fixture()
def inst_dir(tmp_path: Path) -> Path:
    _onnx_mlp(tmp_path / "net.onnx")
    _onnx_mlp(tmp_path / "erf.onnx", unsupported=True)
    for name, text in (("sat", SAT), ("unsat", UNSAT), ("unsat_or", UNSAT_OR)):
        (tmp_path / f"{name}.vnnlib").write_text(text)
    return tmp_path


def test_sat_result_file_round_trips_through_the_reader(inst_dir: Path) -> None:
    inst = load_instance(inst_dir / "net.onnx", inst_dir / "sat.vnnlib")
    res = solve_instance(inst, 10.0)
    assert res.verdict == "sat" and res.stage == "attack", res
    out = inst_dir / "result.txt"
    write_result(out, res)
    text = out.read_text()
    assert text.splitlines()[0] == "sat" and text.splitlines()[1].startswith("((X_0 ")
    x, y = read_counterexample(out)
    np.testing.assert_array_equal(x, res.counterexample)  # repr() of a float64 is exact
    np.testing.assert_array_equal(y, res.output)
    assert inst.spec is not None
    ok, why = check_counterexample(inst.net, inst.spec, x)
    assert ok, why
    assert np.all(x.astype(np.float32).astype(np.float64) == x)  # float32-representable inputs when possible


@pytest.mark.parametrize("name", ["unsat", "unsat_or"])
def test_unsat_by_bounds(inst_dir: Path, name: str) -> None:
    res = solve_instance(load_instance(inst_dir / "net.onnx", inst_dir / f"{name}.vnnlib"), 10.0)
    assert res.verdict == "unsat" and res.stage == "bounds:alpha-crown", res
    assert format_result(res) == "unsat\n" and res.counterexample is None


def test_unsupported_network_is_unknown_with_the_reason(inst_dir: Path) -> None:
    inst = load_instance(inst_dir / "erf.onnx", inst_dir / "sat.vnnlib")
    res = solve_instance(inst, 10.0)
    assert res.verdict == "unknown" and res.stage == "load" and "Erf" in res.reason


def test_format_result_rejects_bad_results() -> None:
    with pytest.raises(ValueError, match="verdict must be one of"):
        format_result(VnnResult("holds", ""))
    with pytest.raises(ValueError, match="counterexample"):
        format_result(VnnResult("sat", ""))
    for v in ("unsat", "timeout", "unknown"):
        assert format_result(VnnResult(v, "")) == v + "\n"


def test_resolve_path_finds_the_gzipped_copy(tmp_path: Path) -> None:
    (tmp_path / "a.vnnlib.gz").write_bytes(b"")
    assert resolve_path("a.vnnlib", tmp_path) == tmp_path / "a.vnnlib.gz"
    with pytest.raises(FileNotFoundError, match=r"no such file: .*b\.onnx \(nor b\.onnx\.gz\)"):
        resolve_path(tmp_path / "b.onnx")
    with pytest.raises(FileNotFoundError, match="directory"):
        resolve_path(tmp_path)


# =========================================================================== CLI


def test_cli_vnncomp_writes_the_result_and_json(inst_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = inst_dir / "r.txt"
    rc = main(["vnncomp", str(inst_dir / "net.onnx"), str(inst_dir / "sat.vnnlib"), "--timeout", "10", "--out",
               str(out), "--json"])
    assert rc == 0
    rec = json.loads(capsys.readouterr().out)
    assert rec["verdict"] == "sat" and out.read_text().startswith("sat\n(")
    for k in ("startup_s", "load_s", "solve_s"):
        assert isinstance(rec[k], float) and rec[k] >= 0
    assert main(["vnncomp", str(inst_dir / "net.onnx"), str(inst_dir / "unsat.vnnlib"), "--out", str(out)]) == 0
    assert capsys.readouterr().out.strip() == "unsat" and out.read_text() == "unsat\n"


def test_cli_vnncomp_unknown_goes_to_stderr_with_the_reason(inst_dir: Path,
                                                            capsys: pytest.CaptureFixture[str]) -> None:
    out = inst_dir / "r.txt"
    assert main(["vnncomp", str(inst_dir / "erf.onnx"), str(inst_dir / "sat.vnnlib"), "--out", str(out)]) == 0
    cap = capsys.readouterr()
    assert cap.out.strip() == "unknown" and out.read_text() == "unknown\n"
    assert "Erf" in cap.err and "unsupported ONNX operator" in cap.err


@pytest.mark.parametrize("which", ["onnx", "vnnlib"])
def test_cli_vnncomp_bad_paths_exit_2(inst_dir: Path, which: str, capsys: pytest.CaptureFixture[str]) -> None:
    net = str(inst_dir / ("missing.onnx" if which == "onnx" else "net.onnx"))
    spec = str(inst_dir / ("missing.vnnlib" if which == "vnnlib" else "sat.vnnlib"))
    out = inst_dir / "r.txt"
    assert main(["vnncomp", net, spec, "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert f"missing.{which}" in err and "no such file" in err and "check the path" in err
    assert not out.exists()


def test_cli_usage_errors_exit_2(inst_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as e:
        main(["vnncomp", str(inst_dir / "net.onnx"), str(inst_dir / "sat.vnnlib"), "--timeout", "-1"])
    assert e.value.code == 2 and "expected a finite number > 0" in capsys.readouterr().err
    assert main(["bench-suite", str(inst_dir / "nope.csv")]) == 2
    assert "no such file" in capsys.readouterr().err
    (inst_dir / "bad.csv").write_text("net.onnx,sat.vnnlib\n")
    assert main(["bench-suite", str(inst_dir / "bad.csv")]) == 2
    assert "3 columns" in capsys.readouterr().err


def test_warm_server_and_client(inst_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    import tempfile
    import threading

    from fastcert.vnncomp import serve

    sock = os.path.join(tempfile.mkdtemp(prefix="fc", dir="/tmp"), "s.sock")  # short: AF_UNIX paths <= 107 bytes
    ready = threading.Event()

    class _Log:
        def write(self, s: str) -> None:
            if "listening" in s:
                ready.set()

        def flush(self) -> None:
            pass

    th = threading.Thread(target=serve, args=(sock,), kwargs={"idle_timeout": 60, "log": _Log(),
                                                              "preload": (str(inst_dir / "net.onnx"),)})
    th.start()
    try:
        assert ready.wait(60)
        out = inst_dir / "r.txt"
        for name, verdict in (("sat", "sat"), ("unsat", "unsat"), ("sat", "sat")):
            assert main(["vnncomp", str(inst_dir / "net.onnx"), str(inst_dir / f"{name}.vnnlib"), "--server", sock,
                         "--out", str(out), "--json"]) == 0
            rec = json.loads(capsys.readouterr().out)
            assert rec["verdict"] == verdict and rec["server"] == sock and out.read_text().startswith(verdict)
            assert rec["load_s"] < 5 and rec["startup_s"] >= rec["load_s"]
        assert main(["vnncomp", str(inst_dir / "missing.onnx"), str(inst_dir / "sat.vnnlib"), "--server", sock]) == 2
        assert "no such file" in capsys.readouterr().err
    finally:
        assert main(["serve", "--socket", sock, "--stop"]) == 0
        th.join(30)
    assert not th.is_alive() and not os.path.exists(sock)
    # no server: solved in this process, with a note
    assert main(["vnncomp", str(inst_dir / "net.onnx"), str(inst_dir / "unsat.vnnlib"), "--server", sock]) == 0
    cap = capsys.readouterr()
    assert cap.out.strip() == "unsat" and "no server" in cap.err
    assert main(["serve", "--socket", sock, "--stop"]) == 1


def _suite(inst_dir: Path, published: dict[str, str]) -> Path:
    names = ["sat", "unsat", "unsat_or"]
    with open(inst_dir / "instances.csv", "w") as f:
        f.writelines(f"net.onnx,{n}.vnnlib,5\n" for n in names)
    with open(inst_dir / "verdicts.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["onnx", "vnnlib", "timeout_s", "verdict"])
        w.writerows(["net.onnx", f"{n}.vnnlib", 5, published.get(n, n.split("_")[0])] for n in names)
    return inst_dir / "instances.csv"


def test_cli_bench_suite_rows_summary_and_json(inst_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    csv_path = _suite(inst_dir, {})
    out = inst_dir / "results.csv"
    assert main(["bench-suite", str(csv_path), "--out", str(out), "--json", "--quiet"]) == 0
    cap = capsys.readouterr()
    rec = json.loads(cap.out)
    assert rec["counts"] == {"sat": 1, "unsat": 2, "timeout": 0, "unknown": 0} and rec["solved"] == 3
    assert rec["contradictions"] == [] and "no contradiction" in cap.err
    with open(out, newline="") as f:
        rows = list(csv.DictReader(f))
    assert [(r["verdict"], r["published"], r["agrees"]) for r in rows] == [
        ("sat", "sat", "yes"), ("unsat", "unsat", "yes"), ("unsat", "unsat", "yes")]
    assert all(float(r["startup_s"]) >= 0 and float(r["time_s"]) >= 0 for r in rows)


def test_bench_suite_on_ray_equals_single_process(inst_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """``bench-suite --ray`` (a local Ray, 2 workers): the rows of the single-process run, in instance order."""
    pytest.importorskip("ray", reason="Ray is an optional extra (pip install 'fastcert[ray]')")
    csv_path = _suite(inst_dir, {})
    runs = []
    for extra in ([], ["--ray", "--workers", "2"]):
        out = inst_dir / f"rows{len(runs)}.csv"
        assert main(["bench-suite", str(csv_path), "--json", "--quiet", "--out", str(out), *extra]) == 0
        with open(out, newline="") as f:
            runs.append((json.loads(capsys.readouterr().out), list(csv.DictReader(f))))
    (one, rows1), (two, rows2) = runs
    keys = ("onnx", "vnnlib", "verdict", "published", "agrees", "solved", "stage")
    assert [{k: r[k] for k in keys} for r in rows2] == [{k: r[k] for k in keys} for r in rows1]
    assert two["counts"] == one["counts"] and two["solved"] == 3


def test_cli_bench_suite_contradiction_exits_1_loudly(inst_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    csv_path = _suite(inst_dir, {"unsat": "sat"})  # a (deliberately wrong) published verdict
    assert main(["bench-suite", str(csv_path), "--quiet"]) == 1
    cap = capsys.readouterr()
    assert "CONTRADICTION" in cap.out and "unsat.vnnlib" in cap.out and "CONTRADICTION" in cap.err


def test_console_script_reports_startup(inst_dir: Path) -> None:
    """A cold process: the JSON line's startup_s covers the interpreter and the imports."""
    t0 = time.perf_counter()
    p = subprocess.run([sys.executable, "-m", "fastcert", "vnncomp", str(inst_dir / "net.onnx"),
                        str(inst_dir / "unsat.vnnlib"), "--json"], check=False, capture_output=True, text=True,
                       timeout=120,
                       env={**os.environ, "OMP_WAIT_POLICY": "PASSIVE"})
    wall = time.perf_counter() - t0
    assert p.returncode == 0, p.stderr
    rec = json.loads(p.stdout)
    assert rec["verdict"] == "unsat"
    if sys.platform.startswith("linux"):
        assert 0 < rec["import_s"] <= rec["startup_s"] <= wall + 0.05
    print(f"\ncold start-up: {rec['startup_s']:.2f} s (imports {rec['import_s']:.2f} s, load {rec['load_s']:.3f} s), "
          f"solve {rec['solve_s']:.3f} s, process wall {wall:.2f} s")


# =========================================================================== shared VNN-COMP instances

BENCHMARKS = ["vnncomp2021/mnistfc", "vnncomp2021/eran", "vnncomp2021/verivital", "vnncomp2021/marabou-cifar10",
              "vnncomp2022/mnist_fc", "vnncomp2022/acasxu", "vnncomp2022/oval21"]
SHARED_TIMEOUT_S = 0.5  # per instance: attack + incomplete bounds (too short for the MIP to start)


@pytest.mark.shared_data
@pytest.mark.parametrize("bench", BENCHMARKS)
def test_published_verdicts_are_never_contradicted(bench: str, tmp_path: Path) -> None:
    d = require_shared(f"{bench}/verdicts.csv").parent
    with open(d / "verdicts.csv", newline="") as f:
        rows = [r for r in csv.DictReader(f) if r["verdict"] in ("sat", "unsat")]
    assert rows
    cache: dict = {}
    solved = {"sat": 0, "unsat": 0}
    bad = []
    t0 = time.perf_counter()
    for r in rows:
        inst = load_instance(r["onnx"], r["vnnlib"], base=d, cache=cache)
        res = solve_instance(inst, SHARED_TIMEOUT_S)
        if res.verdict in ("sat", "unsat"):
            solved[res.verdict] += 1
            if res.verdict != r["verdict"]:
                bad.append(f"{r['onnx']} {r['vnnlib']}: fastcert {res.verdict}, published {r['verdict']} "
                           f"({r['confidence']}): {res.reason}")
        if res.verdict == "sat":  # the written file is read back and re-checked independently
            write_result(tmp_path / "r.txt", res)
            x, _ = read_counterexample(tmp_path / "r.txt")
            ok, why = check_counterexample(inst.net, inst.spec, x)
            assert ok, f"{r['vnnlib']}: {why}"
    n_pub = {v: sum(r["verdict"] == v for r in rows) for v in ("sat", "unsat")}
    print(f"\n{bench}: solved sat {solved['sat']}/{n_pub['sat']}, unsat {solved['unsat']}/{n_pub['unsat']} "
          f"at {SHARED_TIMEOUT_S} s per instance ({time.perf_counter() - t0:.1f} s)")
    assert not bad, "contradictions with published verdicts:\n" + "\n".join(bad)



# =========================================================================== counterexamples proved exactly


def _onnx_chain(path: Path, layers: list) -> Path:
    """Gemm (W, b) / "relu" entries -> an ONNX graph on a [1, n] input (weights exact in float32)."""
    inits, nodes, cur = [], [], "x"
    for i, L in enumerate(layers):
        if L == "relu":
            nodes.append(helper.make_node("Relu", [cur], [f"r{i}"]))
            cur = f"r{i}"
            continue
        W, b = np.asarray(L[0], dtype=np.float32), np.asarray(L[1], dtype=np.float32)
        inits += [numpy_helper.from_array(W, f"W{i}"), numpy_helper.from_array(b, f"b{i}")]
        nodes.append(helper.make_node("Gemm", [cur, f"W{i}", f"b{i}"], [f"h{i}"], transB=1))
        cur = f"h{i}"
    nodes[-1].output[0] = "y"
    n_in = np.asarray(layers[0][0]).shape[1]
    g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, n_in])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], inits)
    path.write_bytes(helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)]).SerializeToString())
    return path


# h = (x + 660000, x), g = (h0 - 660000, h1): in float64 g0 = 0 for 0 < x < 5.8e-11, exactly g0 = x
ROUND = [([[1.0], [1.0]], [660000.0, 0.0]), "relu", ([[1.0, 0.0], [0.0, 1.0]], [-660000.0, 0.0]), "relu"]
ROUND_BOX = "(declare-const X_0 Real)\n(declare-const Y_0 Real)\n(declare-const Y_1 Real)\n" \
            "(assert (>= X_0 0.00000000002))\n(assert (<= X_0 0.00000000004))\n"


@pytest.mark.parametrize("kind", ["margin", "output", "equal", "true"])
def test_rounding_only_violations_are_never_sat(tmp_path: Path, kind: str) -> None:
    """Issue #9, point 8: the float64 forward pass violates these specs, exact arithmetic does not (the
    network's output at every x of the box: y0 = x/2 > 0 ("margin"), y0 = x + 660000 > 660000 ("output"),
    y0 = x != 0 = y1 ("equal")); "true" holds with room (y0 = x/2 <= 2e-11 < 1e-7) and must stay sat."""
    last = {"margin": [[1.0, -0.5], [0.0, 0.0]], "equal": [[1.0, 0.0], [0.0, 0.0]], "true": [[1.0, -0.5], [0.0, 0.0]]}
    if kind == "output":
        layers: list = [([[1.0], [1.0]], [660000.0, 0.0])]
        spec = "(assert (<= Y_0 660000.0))\n"
    else:
        layers = ROUND + [(last[kind], [0.0, 0.0])]
        spec = {"margin": "(assert (<= Y_0 0.0))\n", "equal": "(assert (= Y_0 Y_1))\n",
                "true": "(assert (<= Y_0 0.0000001))\n"}[kind]
    _onnx_chain(tmp_path / "net.onnx", layers)
    (tmp_path / "spec.vnnlib").write_text(ROUND_BOX + spec)
    inst = load_instance(tmp_path / "net.onnx", tmp_path / "spec.vnnlib")
    assert inst.spec is not None and inst.net is not None
    y = inst.net.forward(torch.tensor([[3e-11]], dtype=torch.float64))[0].numpy()
    assert check_counterexample(inst.net, inst.spec, np.array([3e-11]))[0]  # float64 says violated
    res = solve_instance(inst, 5.0)
    if kind == "true":
        assert res.verdict == "sat", res.reason
        write_result(tmp_path / "r.txt", res)
        x, _ = read_counterexample(tmp_path / "r.txt")
        np.testing.assert_array_equal(x, res.counterexample)
        assert 2e-11 <= x[0] <= 4e-11
    else:
        assert res.verdict != "sat", (res.reason, y)


# =========================================================================== one pipeline, each stage once


def _count_stages(monkeypatch: pytest.MonkeyPatch) -> dict:
    """Count the pipeline's incomplete-bound passes and attack phases (by their restarts)."""
    import fastcert.mip.property as prop

    calls: dict = {"bounds": 0, "attacks": []}
    bounds, attack = prop.network_bounds, prop.minimize_spec

    def count_bounds(*a, **k):
        calls["bounds"] += 1
        return bounds(*a, **k)

    def count_attack(*a, **k):
        calls["attacks"].append(k["restarts"])
        return attack(*a, **k)

    monkeypatch.setattr(prop, "network_bounds", count_bounds)
    monkeypatch.setattr(prop, "minimize_spec", count_attack)
    return calls


def test_each_stage_runs_once(inst_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Issue #10 point 6: attack -> bounds -> attack -> LP -> MIP, each once (before, the MIP stage ran
    CROWN and an 8-restart PGD again); a sat found by the first attack stops everything."""
    calls = _count_stages(monkeypatch)
    res = solve_instance(load_instance(inst_dir / "net.onnx", inst_dir / "sat.vnnlib"), 10.0)
    assert res.verdict == "sat" and res.stage == "attack" and calls == {"bounds": 0, "attacks": [2]}
    calls = _count_stages(monkeypatch)
    res = solve_instance(load_instance(inst_dir / "net.onnx", inst_dir / "unsat_or.vnnlib"), 10.0)
    assert res.verdict == "unsat" and calls == {"bounds": 1, "attacks": [2]}  # one box, one bounds pass


@pytest.mark.shared_data
def test_each_stage_runs_once_up_to_the_mip(monkeypatch: pytest.MonkeyPatch) -> None:
    d = require_shared("vnncomp2022/mnist_fc")
    calls = _count_stages(monkeypatch)
    inst = load_instance("onnx/mnist-net_256x2.onnx.gz", "vnnlib/prop_11_0.05.vnnlib.gz", base=d)
    res = solve_instance(inst, 60.0, options=VnnOptions(bab_fraction=0.0))  # the LP / MIP path alone
    assert res.verdict == "unsat" and res.stage == "mip", res
    assert calls["bounds"] == 1  # the MIP stage reuses the bounds stage's row bounds
    assert calls["attacks"][:2] == [2, 4] and all(r == 1 for r in calls["attacks"][2:])  # then LP-point polish only
    assert res.details["open_after_bounds"] > 0 and res.details["open"] == 0
