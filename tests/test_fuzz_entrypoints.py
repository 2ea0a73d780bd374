"""Every public entry point fed bad input, in a child process (issue #9, point 9).

Each case must end with a ValueError / TypeError (``fastcert.UnsupportedError`` counts) carrying a
message ("bad"), or return normally where the input is fine ("ok": e.g. an eps that requires grad,
which is detached like x), or either ("any") where both are acceptable. A hard crash (SIGFPE,
SIGSEGV, abort, an out-of-memory kill) ends the child instead of this run: the test then names the
last case the child started and re-runs it alone to confirm.

One child per entry point runs all of that entry point's cases and reports one JSON line per case.
The cases are built only in the child (the lambdas below), so the parent never touches them.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import warnings
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pytest
import torch
from torch import nn

Case = tuple[str, str, Callable[[], Any]]  # (name, expect: bad | ok | any, thunk)

# Known problems in code outside this test's fix (group, case) -> where the fix goes. Each must still
# fail as described: once fixed, the test fails until the entry is removed (a strict xfail per case).
KNOWN: dict[tuple[str, str], str] = {}


# ------------------------------------------------------------------------------------------------
# inputs (built in the child only)
# ------------------------------------------------------------------------------------------------


def _mlp(n_in: int = 3, n_hidden: int = 4, n_out: int = 2) -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(n_in, n_hidden), nn.ReLU(), nn.Linear(n_hidden, n_out)).double().eval()


def _x(*shape: int) -> torch.Tensor:
    return torch.rand(*(shape or (2, 3)), dtype=torch.float64, generator=torch.Generator().manual_seed(1))


def _with(t: torch.Tensor, v: float) -> torch.Tensor:
    t = t.clone()
    t.view(-1)[-1] = v
    return t


def _grad(v: Any) -> torch.Tensor:
    return torch.as_tensor(v, dtype=torch.float64).clone().requires_grad_(True)


class _ScaledLinear(nn.Linear):
    def forward(self, z):
        return super().forward(z) * 2


class _Residual(nn.Sequential):
    def forward(self, z):
        return z + super().forward(z)


def _hooked() -> nn.Sequential:
    m = _mlp()
    m[0].register_forward_hook(lambda mod, inp, out: out * 2)
    return m


def _param(m: nn.Sequential, idx: int, t: torch.Tensor) -> nn.Sequential:
    m[idx].weight = nn.Parameter(t, requires_grad=False)
    return m


# (name, model factory, x factory, expect for the bounding entry points, expect for attacks.pgd,
# which runs the torch model as-is)
MODELS: list[tuple[str, Callable[[], Any], Callable[[], Any], str, str]] = [
    ("Linear(0,2) on zeros(1,0)", lambda: nn.Sequential(nn.Linear(0, 2)).double(),
     lambda: torch.zeros(1, 0, dtype=torch.float64), "bad", "any"),
    ("Linear(3,0)", lambda: nn.Sequential(nn.Linear(3, 0)).double(), _x, "bad", "any"),
    ("Conv2d(0,2) on zeros(1,0,4,4)", lambda: nn.Sequential(nn.Conv2d(0, 2, 3), nn.Flatten()).double(),
     lambda: torch.zeros(1, 0, 4, 4, dtype=torch.float64), "bad", "any"),
    ("model on meta", lambda: _mlp().to("meta"), _x, "bad", "bad"),
    ("complex weights", lambda: _mlp().to(torch.complex128), _x, "bad", "bad"),
    ("int weights", lambda: _param(_mlp(), 0, torch.ones(4, 3, dtype=torch.int64)), _x, "bad", "any"),
    ("sparse weight", lambda: _param(_mlp(), 0, _mlp()[0].weight.detach().to_sparse()), _x, "bad", "any"),
    ("half weights", lambda: _mlp().half(), _x, "ok", "ok"),  # pgd: an exact float64 copy, as certify
    ("nan weight", lambda: _param(_mlp(), 0, _with(_mlp()[0].weight.detach(), float("nan"))), _x, "bad", "any"),
    ("BatchNorm2d on flat", lambda: nn.Sequential(nn.Flatten(), nn.BatchNorm2d(3), nn.Linear(3, 2)).double().eval(),
     _x, "bad", "bad"),
    ("BatchNorm1d on 4-D", lambda: nn.Sequential(nn.BatchNorm1d(1), nn.Flatten(), nn.Linear(9, 2)).double().eval(),
     lambda: _x(2, 1, 3, 3), "bad", "bad"),
    ("ScaledLinear", lambda: nn.Sequential(_ScaledLinear(3, 2)).double(), _x, "bad", "ok"),
    ("Sequential subclass", lambda: _Residual(nn.Linear(3, 3), nn.ReLU()).double(), _x, "ok", "ok"),
    ("forward hook", _hooked, _x, "bad", "ok"),
    ("lazy uninitialised", lambda: nn.Sequential(nn.LazyLinear(2)).double(), _x, "bad", "any"),
    ("Conv2d stride 0", lambda: nn.Sequential(nn.Conv2d(1, 1, 3, stride=0), nn.Flatten()).double(),
     lambda: _x(1, 1, 6, 6), "bad", "bad"),
    ("AvgPool2d padding > k/2", lambda: nn.Sequential(nn.AvgPool2d(2, padding=2), nn.Flatten()).double(),
     lambda: _x(1, 1, 6, 6), "bad", "bad"),
    ("not a module", lambda: (lambda z: z), _x, "bad", "bad"),
    ("BatchNorm in training mode", lambda: nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4)).double(), _x,
     "bad", "bad"),
]

XS: list[tuple[str, str, Callable[[], Any]]] = [
    ("x nan", "bad", lambda: _with(_x(), float("nan"))),
    ("x inf", "bad", lambda: _with(_x(), float("inf"))),
    ("x complex", "bad", lambda: _x().to(torch.complex128)),
    ("x int64", "bad", lambda: (_x() * 10).long()),
    ("x float16", "bad", lambda: _x().half()),
    ("x sparse", "bad", lambda: _x().to_sparse()),
    ("x sparse csr", "bad", lambda: _x().to_sparse_csr()),
    ("x meta", "bad", lambda: _x().to("meta")),
    ("x zero features", "bad", lambda: torch.zeros(2, 0, dtype=torch.float64)),
    ("x empty batch", "bad", lambda: torch.zeros(0, 3, dtype=torch.float64)),
    ("x unbatched", "bad", lambda: _x()[0]),
    ("x wrong features", "bad", lambda: _x(2, 4)),
    ("x list", "bad", lambda: _x().tolist()),
    ("x numpy object", "bad", lambda: np.array([[object()] * 3] * 2)),
    ("x requires grad", "ok", lambda: _x().requires_grad_(True)),
]

EPS: list[tuple[str, str, Callable[[], Any]]] = [
    ("eps < 0", "bad", lambda: -0.1),
    ("eps nan", "bad", lambda: float("nan")),
    ("eps inf", "bad", lambda: float("inf")),
    ("eps complex", "bad", lambda: 0.1 + 1j),
    ("eps complex tensor", "bad", lambda: torch.tensor([0.1, 0.1], dtype=torch.complex128)),
    ("eps complex numpy", "bad", lambda: np.array([0.1, 0.1], dtype=np.complex128)),
    ("eps sparse", "bad", lambda: torch.tensor([0.1, 0.1], dtype=torch.float64).to_sparse()),
    ("eps meta", "bad", lambda: torch.tensor(0.1).to("meta")),
    ("eps str", "bad", lambda: "0.1"),
    ("eps None", "bad", lambda: None),
    ("eps bool", "bad", lambda: True),
    ("eps wrong shape", "bad", lambda: [0.1, 0.1, 0.1]),
    ("eps requires grad", "ok", lambda: _grad(0.05)),
    ("eps [B] requires grad", "ok", lambda: _grad([0.05, 0.01])),
    ("eps numpy float32", "ok", lambda: np.float32(0.05)),
]


def _box_cases(name: str) -> list[tuple[str, str, Callable[[], Any]]]:
    lo = name == "x_min"
    v = -1.0 if lo else 2.0
    return [
        (f"{name} nan", "bad", lambda: float("nan")),
        (f"{name} complex", "bad", lambda: v + 1j),
        (f"{name} meta", "bad", lambda: torch.tensor(v).to("meta")),
        (f"{name} sparse", "bad", lambda: torch.full((3,), v, dtype=torch.float64).to_sparse()),
        (f"{name} wrong shape", "bad", lambda: torch.full((5,), v, dtype=torch.float64)),
        (f"{name} str", "bad", lambda: "0"),
        (f"{name} excludes x", "bad", lambda: 0.99 if lo else 0.01),
        (f"{name} requires grad", "ok", lambda: _grad(v)),
    ]


C_CASES: list[tuple[str, str, Callable[[], Any]]] = [
    ("C nan", "bad", lambda: torch.tensor([[float("nan"), 1.0]], dtype=torch.float64)),
    ("C int", "bad", lambda: torch.eye(2, dtype=torch.int64)),
    ("C complex", "bad", lambda: torch.eye(2, dtype=torch.complex128)),
    ("C sparse", "bad", lambda: torch.eye(2, dtype=torch.float64).to_sparse()),
    ("C meta", "bad", lambda: torch.eye(2, dtype=torch.float64).to("meta")),
    ("C wrong shape", "bad", lambda: torch.ones(1, 3, dtype=torch.float64)),
    ("C list", "bad", lambda: [[1.0, -1.0]]),
    ("C empty", "any", lambda: torch.ones(0, 2, dtype=torch.float64)),  # bounds: [B, 0]; verify refuses
    ("C requires grad", "ok", lambda: torch.tensor([[1.0, -1.0]], dtype=torch.float64, requires_grad=True)),
]

LABELS: list[tuple[str, str, Callable[[], Any]]] = [
    ("labels float", "bad", lambda: torch.tensor([0.0, 1.0])),
    ("labels out of range", "bad", lambda: [0, 2]),
    ("labels negative", "bad", lambda: [-1, 0]),
    ("labels str", "bad", lambda: ["cat", "dog"]),
    ("labels wrong count", "bad", lambda: [0, 1, 1]),
    ("labels complex", "bad", lambda: torch.tensor([0, 1], dtype=torch.complex64)),
]


# ------------------------------------------------------------------------------------------------
# the cases of each entry point
# ------------------------------------------------------------------------------------------------


def _api_cases(call: Callable[..., Any], has_C: bool, has_labels: bool, pgd: bool = False) -> list[Case]:
    """The common cases of bounds / certify / verify / attacks.pgd; ``call(model, x, eps, **kw)``."""
    cases: list[Case] = [("good input", "ok", lambda: call(_mlp(), _x(), 0.05))]
    for name, make, mk_x, exp, exp_pgd in MODELS:
        cases.append((f"model: {name}", exp_pgd if pgd else exp,
                      lambda make=make, mk_x=mk_x: call(make(), mk_x(), 0.05)))
    for name, exp, mk in XS:
        cases.append((name, exp, lambda mk=mk: call(_mlp(), mk(), 0.05)))
    for name, exp, mk in EPS:
        cases.append((name, exp, lambda mk=mk: call(_mlp(), _x(), mk())))
    for box in ("x_min", "x_max"):
        for name, exp, mk in _box_cases(box):
            cases.append((name, exp, lambda mk=mk, box=box: call(_mlp(), _x(), 0.05, **{box: mk()})))
    if has_C:
        for name, exp, mk in C_CASES:
            cases.append((name, exp, lambda mk=mk: call(_mlp(), _x(), 0.05, C=mk())))
    if has_labels:
        for name, exp, mk in LABELS:
            cases.append((name, exp, lambda mk=mk: call(_mlp(), _x(), 0.05, labels=mk())))
    cases += [("norm 'fro'", "bad", lambda: call(_mlp(), _x(), 0.05, norm="fro")),
              ("norm complex", "bad", lambda: call(_mlp(), _x(), 0.05, norm=1j))]
    return cases


def _bounds_cases() -> list[Case]:
    import fastcert

    cases = _api_cases(lambda m, x, e, **kw: fastcert.bounds(m, x, e, **kw), True, False)
    return cases + [("method unknown", "bad", lambda: fastcert.bounds(_mlp(), _x(), 0.05, method="deeppoly")),
                    ("lower_slope unknown", "bad", lambda: fastcert.bounds(_mlp(), _x(), 0.05, lower_slope="x"))]


def _certify_cases() -> list[Case]:
    import fastcert

    return _api_cases(lambda m, x, e, **kw: fastcert.certify(m, x, e, **kw), False, True)


def _verify_cases() -> list[Case]:
    import fastcert

    cases = _api_cases(lambda m, x, e, **kw: fastcert.verify(m, x, e, time_limit=5.0, **kw), True, True)
    return cases + [("norm 2", "bad", lambda: fastcert.verify(_mlp(), _x(), 0.05, norm="2")),
                    ("time_limit nan", "bad", lambda: fastcert.verify(_mlp(), _x(), 0.05, time_limit=float("nan")))]


def _pgd_cases() -> list[Case]:
    import fastcert
    from fastcert import attacks

    def call(m, x, e, **kw):
        return attacks.pgd(m, x, e, steps=2, **kw)

    cases = _api_cases(call, False, True, pgd=True)
    return cases + [("a fastcert.Network", "bad", lambda: call(fastcert.Network.from_torch(_mlp()), _x(), 0.05)),
                    ("steps -1", "bad", lambda: attacks.pgd(_mlp(), _x(), 0.05, steps=-1))]


def _from_torch_cases() -> list[Case]:
    import fastcert

    def conv(make, mk_x):
        """Convert (building for x's shape, which runs every shape check) and bound at eps 0."""
        x = mk_x()
        net = fastcert.Network.from_torch(make(), input_shape=tuple(x.shape[1:]))
        return fastcert.bounds(net, x, 0.0, method="ibp")

    cases: list[Case] = [(name, exp, lambda make=make, mk_x=mk_x: conv(make, mk_x))
                         for name, make, mk_x, exp, _ in MODELS]
    for shape in (3, (0,), (3, 0), (-1,), (3.0,), (), "abc", (True,)):
        cases.append((f"input_shape {shape!r}", "bad",
                      lambda shape=shape: fastcert.Network.from_torch(_mlp(), input_shape=shape)))
    return cases


def _onnx_model(w: np.ndarray, in_shape: list[int], in_type: int | None = None) -> Any:
    from onnx import TensorProto, helper, numpy_helper

    x = helper.make_tensor_value_info("x", in_type or TensorProto.FLOAT, in_shape)
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, None)
    g = helper.make_graph([helper.make_node("MatMul", ["x", "W"], ["y"])], "g", [x], [y],
                          [numpy_helper.from_array(w, "W")])
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)])


def _from_onnx_cases() -> list[Case]:
    import fastcert
    from onnx import TensorProto

    def load(src):
        return fastcert.Network.from_onnx(src)

    w = np.ones((3, 2), dtype=np.float32)
    return [
        ("good model", "ok", lambda: load(_onnx_model(w, [1, 3]).SerializeToString())),
        ("None", "bad", lambda: load(None)),
        ("an int", "bad", lambda: load(123)),
        ("empty bytes", "bad", lambda: load(b"")),
        ("garbage bytes", "bad", lambda: load(b"\x08\x07garbage\xff\xfe" * 10)),
        ("missing file", "bad", lambda: load("/nonexistent/model.onnx")),
        ("a directory", "bad", lambda: load(str(Path(__file__).parent))),
        ("MatMul weight 3x0", "bad", lambda: load(_onnx_model(np.ones((3, 0), np.float32), [1, 3]))),
        ("input dim 0", "bad", lambda: load(_onnx_model(np.ones((0, 2), np.float32), [1, 0]))),
        ("nan weight", "bad", lambda: load(_onnx_model(np.full((3, 2), np.nan, np.float32), [1, 3]))),
        ("complex weight", "bad", lambda: load(_onnx_model(np.ones((3, 2), np.complex64), [1, 3]))),
        ("int64 input", "bad", lambda: load(_onnx_model(np.ones((3, 2), np.int64), [1, 3], TensorProto.INT64))),
    ]


def _io_cases() -> list[Case]:
    from fastcert.io import load_vnnlib, read_counterexample

    return [
        ("load_vnnlib good", "ok", lambda: load_vnnlib(b"(declare-const X_0 Real)(declare-const Y_0 Real)"
                                                       b"(assert (>= X_0 0))(assert (<= X_0 1))(assert (>= Y_0 0))")),
        ("load_vnnlib None", "bad", lambda: load_vnnlib(None)),
        ("load_vnnlib int", "bad", lambda: load_vnnlib(123)),
        ("load_vnnlib garbage", "bad", lambda: load_vnnlib(b"((((")),
        ("load_vnnlib binary", "bad", lambda: load_vnnlib(b"\xff\xfe\x00garbage")),
        ("load_vnnlib missing file", "bad", lambda: load_vnnlib("/nonexistent/spec.vnnlib")),
        ("load_vnnlib nan bound", "bad", lambda: load_vnnlib(b"(declare-const X_0 Real)(declare-const Y_0 Real)"
                                                             b"(assert (>= X_0 nan))(assert (<= X_0 1))"
                                                             b"(assert (>= Y_0 0))")),
        ("read_counterexample None", "bad", lambda: read_counterexample(None)),
        ("read_counterexample garbage", "bad", lambda: read_counterexample(b"((X_0")),
        ("read_counterexample no X", "bad", lambda: read_counterexample(b"((Y_0 1.0))")),
    ]


def _io_limit_cases() -> list[Case]:
    """The parser limits of issue #9 point 6 (another part of the issue: parsers get limits and
    iterative descent)."""
    from fastcert.io import load_vnnlib, read_counterexample

    nested = b"(declare-const X_0 Real)(declare-const Y_0 Real)(assert " + b"(and " * 3000 + b"(>= X_0 0)" + \
        b")" * 3000 + b")(assert (<= X_0 1))(assert (>= Y_0 0))"
    return [
        ("load_vnnlib 3000 nested and", "ok", lambda: load_vnnlib(nested)),  # legal: parses iteratively
        ("load_vnnlib X_100000000000", "bad", lambda: load_vnnlib(b"(declare-const X_100000000000 Real)")),
        ("read_counterexample X_1000000000000", "bad", lambda: read_counterexample(b"((X_1000000000000 1.0))")),
    ]


GROUPS: dict[str, Callable[[], list[Case]]] = {
    "bounds": _bounds_cases, "certify": _certify_cases, "verify": _verify_cases, "attacks.pgd": _pgd_cases,
    "Network.from_torch": _from_torch_cases, "Network.from_onnx": _from_onnx_cases, "io": _io_cases,
    "io limits": _io_limit_cases,
}


# ------------------------------------------------------------------------------------------------
# the child: run the cases of one group, one JSON line per case (a "start" line first, flushed)
# ------------------------------------------------------------------------------------------------


def _run_case(thunk: Callable[[], Any]) -> dict[str, str]:
    import fastcert

    try:
        thunk()
    except (ValueError, TypeError, fastcert.UnsupportedError, FileNotFoundError, IsADirectoryError) as exc:
        # (a path that is missing or a directory gets Python's own clear error)
        return {"outcome": "bad", "type": type(exc).__name__, "msg": str(exc)[:300]}
    except BaseException as exc:  # noqa: BLE001 - reported, the parent decides
        return {"outcome": "other", "type": type(exc).__name__, "msg": str(exc)[:300]}
    return {"outcome": "ok", "type": "", "msg": ""}


def _child(group: str, first: int, last: int) -> None:
    """Run cases ``first .. last - 1`` of ``group``, printing a start line and a result line each."""
    torch.set_num_threads(1)
    warnings.simplefilter("ignore")
    out = sys.stdout
    sys.stdout = open(os.devnull, "w")  # HiGHS banners and the like; results go to the real stdout
    for name, _, thunk in GROUPS[group]()[first:last]:
        out.write(json.dumps({"case": name, "start": True}) + "\n")
        out.flush()
        out.write(json.dumps({"case": name, **_run_case(thunk)}) + "\n")
        out.flush()


def _spawn(group: str, first: int, last: int, timeout: float) -> tuple[int | None, list[dict]]:
    """Run a child; returns (its exit status, or None on a timeout; the JSON records it printed)."""
    code = (f"import sys; sys.path.insert(0, {str(Path(__file__).parent)!r}); import test_fuzz_entrypoints as f; "
            f"f._child({group!r}, {first}, {last})")
    env = dict(os.environ, OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1", MKL_NUM_THREADS="1")

    def limit() -> None:  # a runaway allocation fails in the child, not on the machine
        import resource

        resource.setrlimit(resource.RLIMIT_AS, (6 << 30, 6 << 30))

    try:
        p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=timeout, env=env,
                           preexec_fn=limit)
        rc, text = p.returncode, p.stdout
    except subprocess.TimeoutExpired as exc:
        rc = None
        text = exc.stdout.decode() if isinstance(exc.stdout, bytes) else (exc.stdout or "")
    return rc, [json.loads(line) for line in text.splitlines() if line.startswith("{")]


def _run_group(group: str) -> tuple[dict[str, dict], list[str]]:
    """All results of ``group`` and the hard crashes: after a child dies, the case it was running
    is re-run alone (to confirm and name it) and a new child goes on with the next case."""
    names = [name for name, _, _ in GROUPS[group]()]
    done: dict[str, dict] = {}
    crashes: list[str] = []
    first = 0
    while first < len(names):
        rc, recs = _spawn(group, first, len(names), timeout=300.0)
        done.update({r["case"]: r for r in recs if "outcome" in r})
        if rc == 0:
            break
        started = [r["case"] for r in recs if r.get("start")]
        if not started or started[-1] in done:  # died before or after the cases: report and stop
            crashes.append(f"the child ended with status {rc} outside any case")
            break
        i = names.index(started[-1])
        alone = _spawn(group, i, i + 1, timeout=120.0)[0]
        crashes.append(f"{names[i]!r}: the child ended with status {rc} (None: timed out; < 0: killed by that "
                       f"signal, -8 = SIGFPE, -11 = SIGSEGV); run alone: status {alone}")
        first = i + 1
    return done, crashes


def _check_group(group: str) -> int:
    expected = {name: exp for name, exp, _ in GROUPS[group]()}
    done, problems = _run_group(group)
    known = []
    for name, exp in expected.items():
        r = done.get(name)
        if r is None:
            continue
        if r["outcome"] == "other" or (exp != "any" and r["outcome"] != exp):
            problem = f"{name!r}: expected {exp}, got {r['outcome']} {r['type']}: {r['msg']}"
        elif r["outcome"] == "bad" and len(r["msg"].strip()) < 10:
            problem = f"{name!r}: {r['type']} without a useful message: {r['msg']!r}"
        elif (group, name) in KNOWN:
            problems.append(f"{name!r} is fixed: remove it from KNOWN")
            continue
        else:
            continue
        (known if (group, name) in KNOWN else problems).append(problem)
    assert not problems, f"{group}: {len(problems)} problem(s):\n" + "\n".join(problems)
    assert len(done) == len(expected)
    if known:
        warnings.warn(f"{group}: {len(known)} known problem(s) still open (see KNOWN):\n" + "\n".join(known))
    return len(done)


@pytest.mark.parametrize("group", [g for g in GROUPS if g != "io limits"])
def test_entry_point_rejects_bad_input(group: str) -> None:
    if group == "Network.from_onnx":
        pytest.importorskip("onnx")
    _check_group(group)


def test_parser_limits() -> None:
    _check_group("io limits")
