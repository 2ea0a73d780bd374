"""Malformed, hostile and deeply nested VNN-LIB / counterexample input (issue #9, point 6).

Every case must either parse (legal input, at any nesting depth) or raise :class:`VnnlibError` naming the
problem, quickly and without a huge allocation: never RecursionError, MemoryError, a bare ValueError
from ``int()``, or a silently accepted non-finite / non-ASCII number. The last tests fuzz both parsers
(hypothesis over a token alphabet and mutations of a valid file).
"""

from __future__ import annotations

import dataclasses
import time

import numpy as np
import pytest
from fastcert.io.vnnlib import (
    VnnlibError,
    VnnlibLimits,
    load_vnnlib,
    parse_vnnlib,
    read_counterexample,
)
from hypothesis import given, settings
from hypothesis import strategies as st

_D = "(declare-const X_0 Real)(declare-const Y_0 Real)"
_B = "(assert (<= X_0 1))(assert (>= X_0 0))"


def _nest(op: str, n: int, inner: str) -> str:
    return f"({op} " * n + inner + ")" * n


# --------------------------------------------------------------------------- deep nesting works


@pytest.mark.parametrize("op,depth", [("and", 3000), ("or", 3000), ("and", 100_000)])
def test_deeply_nested_and_or_parse(op: str, depth: int) -> None:
    s = load_vnnlib((_D + _B + "(assert " + _nest(op, depth, "(<= Y_0 0.5)") + ")").encode())
    assert len(s) == 1 and s.n_inputs == 1 and s.n_outputs == 1
    A, b = s[0].constraints[0]
    np.testing.assert_array_equal(A, [[1.0]])
    np.testing.assert_array_equal(b, [0.5])


def test_alternating_and_or_nesting_gives_the_right_dnf() -> None:
    # (and (<= Y_0 k) (or (>= Y_0 -k) (and ... ))): 1001 terms, term j = {Y_0 <= 0..j, Y_0 >= -j}
    n = 1000
    inner = "(<= Y_0 -1)"
    for k in reversed(range(n)):
        inner = f"(and (<= Y_0 {k}) (or (>= Y_0 {-k}) {inner}))"
    s = parse_vnnlib(_D + _B + f"(assert {inner})")
    cons = s[0].constraints
    assert len(cons) == n + 1
    A, b = cons[3]  # Y_0 <= 0, 1, 2, 3 and Y_0 >= -3
    np.testing.assert_array_equal(A[:, 0], [1, 1, 1, 1, -1])
    np.testing.assert_array_equal(b, [0, 1, 2, 3, 3])


def test_deeply_nested_arithmetic_parses() -> None:
    # (<= (+ (+ ... (+ Y_0 1) ... 1) 1) 0): Y_0 + 3000 <= 0
    e = "Y_0"
    e = "(+ " * 3000 + e + " 1)" * 3000
    s = parse_vnnlib(_D + _B + f"(assert (<= {e} 0))")
    A, b = s[0].constraints[0]
    assert A[0, 0] == 1.0 and b[0] == -3000.0


def test_deeply_nested_error_is_a_clear_message() -> None:
    with pytest.raises(VnnlibError, match=r"'not' is not supported .* in \(not \(<= Y_0 0\)\)"):
        parse_vnnlib(_D + _B + "(assert " + _nest("and", 5000, "(not (<= Y_0 0))") + ")")
    with pytest.raises(VnnlibError, match=r"unsupported arithmetic 'max' in \(max \(max .*\.\.\.$"):
        parse_vnnlib(_D + _B + "(assert (<= Y_0 " + _nest("max", 5000, "1") + "))")
    with pytest.raises(VnnlibError, match=r"expected \(X_i value\), got \(\(\(\(.*\.\.\.$"):
        read_counterexample(b"(" * 5000 + b")" * 5000)


def test_dnf_limits_are_an_option_passed_in() -> None:
    """The normal-form limits are a frozen options object, not module globals: the limit given is the one
    enforced (and named), the default is untouched."""
    text = _D + _B + "(assert (and " + "(or (<= Y_0 0) (>= Y_0 1)) " * 3 + "))"  # 8 terms of 3 comparisons
    assert len(parse_vnnlib(text)[0].constraints) == 8
    with pytest.raises(VnnlibError, match=r"more than 7 terms"):
        parse_vnnlib(text, limits=VnnlibLimits(max_terms=7))
    with pytest.raises(VnnlibError, match=r"more than 20 comparisons"):
        parse_vnnlib(text, limits=VnnlibLimits(max_atoms=20))
    assert len(parse_vnnlib(text, limits=VnnlibLimits(max_terms=8, max_atoms=24))[0].constraints) == 8
    with pytest.raises(dataclasses.FrozenInstanceError):
        VnnlibLimits().max_terms = 1  # type: ignore[misc]  (frozen)


def test_dnf_blow_up_is_refused_with_the_limit_named() -> None:
    pair = "(or (<= Y_0 0) (>= Y_0 1)) "
    t0 = time.perf_counter()
    with pytest.raises(VnnlibError, match=r"disjunctive normal form has more than 1000000 terms"):
        parse_vnnlib(_D + _B + "(assert (and " + pair * 40 + "))")  # 2**40 terms
    # few terms but many comparisons in all: 1500 terms of 15,000 atoms (22.5 M > 20 M)
    big = "(and " + "(<= Y_0 0) " * 15_000 + ")"
    with pytest.raises(VnnlibError, match=r"more than 20000000 comparisons"):
        parse_vnnlib(_D + _B + f"(assert (and {big} (or " + "(<= Y_0 1) " * 1500 + ")))")
    assert time.perf_counter() - t0 < 30


# --------------------------------------------------------------------------- variable indices


def test_huge_variable_index_without_sizes_is_refused_without_allocating() -> None:
    text = "(declare-const X_100000000000 Real)(assert (<= X_100000000000 1))(assert (>= X_100000000000 0))"
    with pytest.raises(VnnlibError, match=r"declares X_100000000000 but not X_0: .* pass n_inputs"):
        load_vnnlib(text.encode())
    with pytest.raises(VnnlibError, match=r"declares X_100000000000 but the network has 4 inputs"):
        load_vnnlib(text.encode(), 4, 1)
    with pytest.raises(VnnlibError, match=r"declares Y_7 but not Y_0: .* pass n_outputs"):
        parse_vnnlib("(declare-const X_0 Real)(declare-const Y_7 Real)" + _B)
    # a gap (no X_1) is an error without n_inputs (the inputs are counted from the declarations) ...
    gap = "(declare-const X_0 Real)(declare-const X_2 Real)" + _B + "(assert (<= X_2 1))(assert (>= X_2 0))"
    with pytest.raises(VnnlibError, match=r"declares X_2 but not X_1"):
        parse_vnnlib(gap)
    # ... and with it, the undeclared X_1 is unbounded
    with pytest.raises(VnnlibError, match=r"input X_1 has no lower bound"):
        parse_vnnlib(gap, 3, 0)


@pytest.mark.parametrize("name,match", [
    ("X_" + "9" * 5000, "neither X_<i>"),  # int() would raise a bare ValueError (4300-digit limit)
    ("X_1000000000000000000", "below 10\\*\\*18"),
    ("X_00", "without leading zeros"),
    ("X_\u0663", "neither X_<i>"),  # an Arabic-Indic digit (int() reads it as 3)
    ("X_1.5", "neither X_<i>"),
])
def test_bad_variable_names(name: str, match: str) -> None:
    with pytest.raises(VnnlibError, match=match):
        parse_vnnlib(f"(declare-const {name} Real)" + _B)


def test_duplicate_declaration_is_refused() -> None:
    with pytest.raises(VnnlibError, match=r"variable X_0 is declared twice"):
        parse_vnnlib(_D + "(declare-const X_0 Real)" + _B)


@pytest.mark.parametrize("n", [-1, True, 2.5, "3", None])
def test_bad_sizes(n) -> None:
    if n is None:
        assert parse_vnnlib(_D + _B, None, None).n_inputs == 1
        return
    with pytest.raises(VnnlibError, match=r"n_inputs must be a non-negative int"):
        parse_vnnlib(_D + _B, n, 1)


def test_parse_vnnlib_needs_text() -> None:
    with pytest.raises(TypeError, match=r"parse_vnnlib expects the text as str.*load_vnnlib"):
        parse_vnnlib((_D + _B).encode())  # type: ignore[arg-type]


# --------------------------------------------------------------------------- numbers


@pytest.mark.parametrize("lit,match", [
    ("1e999", "out of the float64 range"), ("-1e999", "out of the float64 range"),
    ("nan", "unknown symbol 'nan'"), ("inf", "unknown symbol 'inf'"), ("Infinity", "unknown symbol"),
    ("1_0", "unknown symbol '1_0'"),  # float() accepts underscores
    ("\u0661", "unknown symbol"),  # float() accepts non-ASCII digits
    ("0x10", "unknown symbol"),
])
def test_bad_numeric_literals(lit: str, match: str) -> None:
    with pytest.raises(VnnlibError, match=match):
        parse_vnnlib(_D + _B + f"(assert (<= Y_0 {lit}))")


@pytest.mark.parametrize("expr", ["(* 1e300 1e300 Y_0)", "(* 1e300 (* 1e300 X_0))", "(+ 1e308 1e308)",
                                  "(/ Y_0 1e-320)", "(- (* -1e308 Y_0) (* 1e308 Y_0))"])
def test_overflowing_coefficients_are_refused(expr: str) -> None:
    # a box bound -c/a with a = inf would come out as 0 (narrower than the true region)
    with pytest.raises(VnnlibError, match=r"overflows float64"):
        parse_vnnlib(_D + _B + f"(assert (<= {expr} 1))")


def test_overflowing_difference_of_sides_is_refused() -> None:
    with pytest.raises(VnnlibError, match=r"difference of the two sides overflows"):
        parse_vnnlib(_D + _B + "(assert (<= (* 1e308 Y_0) (* -1e308 Y_0)))")


def test_valid_number_forms_still_parse() -> None:
    s = parse_vnnlib(_D + "(assert (<= X_0 .5))(assert (>= X_0 -1.))(assert (<= Y_0 +2E-3))")
    assert s[0].lo[0] == -1.0 and s[0].hi[0] == 0.5 and s[0].constraints[0][1][0] == 2e-3


# --------------------------------------------------------------------------- counterexamples


def test_counterexample_huge_index_is_refused_without_allocating() -> None:
    t0 = time.perf_counter()
    with pytest.raises(VnnlibError, match=r"X_0 is missing \(the file gives X_1000000000000"):
        read_counterexample(b"((X_1000000000000 1.0))")
    with pytest.raises(VnnlibError, match=r"Y_1 is missing"):
        read_counterexample(b"((X_0 1.0) (Y_0 1) (Y_2 3))")
    assert time.perf_counter() - t0 < 1


@pytest.mark.parametrize("data,match", [
    (b"((X_0 1e999))", "out of the float64 range"),
    (b"((X_0 nan))", "bad value 'nan'"),
    (b"((X_0 -inf))", "bad value '-inf'"),
    (b"((X_0 1_0))", "bad value '1_0'"),
    (b"((X_" + b"9" * 5000 + b" 1))", "unknown variable"),
    (b"((X_01 1))", "unknown variable 'X_01'"),
    (b"((X_0 1) (X_0 2))", "X_0 given twice"),
    (b"", "expected one list"),
    (b"\xff\xfe((X_0 1))", "not a text file"),
    (b"((X_0 1)", "never closed"),
    (b"((X_0 1)))", "unbalanced"),
    (b"((Y_0 1))", "no X_i values"),
])
def test_counterexample_malformed(data: bytes, match: str) -> None:
    with pytest.raises(VnnlibError, match=match):
        read_counterexample(data)


def test_counterexample_valid_still_reads() -> None:
    x, y = read_counterexample(b"sat\n((X_1 -2.5e-1) (X_0 1) (Y_0 .5))")
    np.testing.assert_array_equal(x, [1.0, -0.25])
    np.testing.assert_array_equal(y, [0.5])


# --------------------------------------------------------------------------- fuzzing

_TOKENS = ["(", ")", "(", ")", "declare-const", "X_0", "X_1", "Y_0", "Y_1", "Real", "Int", "Bool", "assert",
           "and", "or", "not", "<=", ">=", "<", ">", "=", "+", "-", "*", "/", "1e999", "-1e999", "nan", "inf",
           "0.5", "-1", "0", "1e-320", "1e300", "X_01", "X_\u0663", "1_0", "true", "false", "sat", ";c\n",
           "X_99999999999", "\x00", "ite", "1e308"]
_VALID = ("(declare-const X_0 Real) (declare-const Y_0 Real) (assert (<= X_0 1)) (assert (>= X_0 0)) "
          "(assert (or (and (<= Y_0 1) (>= Y_0 0)) (<= (* 2 Y_0) -1)))")


def _only_vnnlib_errors(data: bytes) -> None:
    for call in (lambda: load_vnnlib(data), lambda: load_vnnlib(data, 2, 2), lambda: read_counterexample(data)):
        try:
            call()
        except VnnlibError:
            pass


@settings(max_examples=300)
@given(st.lists(st.sampled_from(_TOKENS), max_size=40), st.binary(max_size=3))
def test_fuzz_token_soup(toks: list[str], junk: bytes) -> None:
    _only_vnnlib_errors(" ".join(toks).encode() + junk)


@settings(max_examples=300)
@given(st.lists(st.tuples(st.integers(0, 60), st.sampled_from(["ins", "del", "set"]), st.sampled_from(_TOKENS)),
                max_size=4))
def test_fuzz_mutated_valid_file(edits: list[tuple[int, str, str]]) -> None:
    toks = _VALID.replace("(", " ( ").replace(")", " ) ").split()
    for k, how, t in edits:
        k = min(k, len(toks) - 1)
        if how == "ins":
            toks.insert(k, t)
        elif how == "del" and len(toks) > 1:
            del toks[k]
        else:
            toks[k] = t
    _only_vnnlib_errors(" ".join(toks).encode())
