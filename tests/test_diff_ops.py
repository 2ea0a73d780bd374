"""The differentiable ops (``fastcert.ops``): ``torch.library.opcheck`` (schema, fake tensors, autograd
registration, AOT dispatch) and ``torch.autograd.gradcheck`` in float64 for every op, on random inputs,
with the optional arguments present and absent; values against plain-torch formulas; errors name the op."""

from __future__ import annotations

import pytest
import torch
from torch.autograd import gradcheck

from fastcert import ops

D = torch.float64


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _box(B: int, n: int, seed: int, dtype: torch.dtype = D) -> tuple[torch.Tensor, torch.Tensor]:
    g = _gen(seed)
    l = torch.randn(B, n, generator=g, dtype=dtype)
    return l, l + torch.rand(B, n, generator=g, dtype=dtype)


def _req(*ts: torch.Tensor | None) -> tuple:
    return tuple(None if t is None else t.clone().requires_grad_() for t in ts)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("with_b", [True, False])
def test_ibp_affine(dtype: torch.dtype, with_b: bool) -> None:
    l, u = _box(4, 5, 0, dtype)
    g = _gen(1)
    W = torch.randn(3, 5, generator=g, dtype=dtype)
    b = torch.randn(3, generator=g, dtype=dtype) if with_b else None
    lo, hi = ops.ibp_affine(l, u, W, b)
    c, r = (l + u) / 2, (u - l) / 2
    mid = c @ W.T + (b if b is not None else 0)
    tol = 1e-12 if dtype == D else 1e-5
    torch.testing.assert_close(lo, mid - r @ W.abs().T, rtol=tol, atol=tol)
    torch.testing.assert_close(hi, mid + r @ W.abs().T, rtol=tol, atol=tol)
    args = _req(l, u, W, b)
    torch.library.opcheck(torch.ops.fastcert.ibp_affine.default, args)
    if dtype == D:
        assert gradcheck(ops.ibp_affine, args)


@pytest.mark.parametrize("mode", sorted(ops.RELU_MODES.values()))
def test_relu_relax(mode: int) -> None:
    l, u = _box(3, 8, 2)
    l = l - 0.5  # unstable, active and inactive neurons
    alpha = torch.rand(3, 8, generator=_gen(3), dtype=D) if mode == ops.RELU_MODES["alpha"] else None
    lo_s, up_s, up_b = ops.relu_relax(l, u, alpha, mode)
    unst = (l < 0) & (u > 0)
    torch.testing.assert_close(up_s, torch.where(unst, u / (u - l), (l >= 0).to(D)))
    torch.testing.assert_close(up_b, torch.where(unst, -l * u / (u - l), torch.zeros_like(l)))
    assert bool(((lo_s >= 0) & (lo_s <= 1)).all())
    args = _req(l, u, alpha) + (mode,)
    torch.library.opcheck(torch.ops.fastcert.relu_relax.default, args)
    assert gradcheck(lambda a, b, c: ops.relu_relax(a, b, c, mode), args[:3])


@pytest.mark.parametrize("per_row", [False, True])
@pytest.mark.parametrize("with_lo_b", [False, True])
def test_relax_back(per_row: bool, with_lo_b: bool) -> None:
    g = _gen(4)
    B, S, n = 3, 2, 5
    lam = torch.randn(B, S, n, generator=g, dtype=D)
    sh = (B, S, n) if per_row else (B, n)
    lo_s, up_s = torch.rand(sh, generator=g, dtype=D), torch.rand(sh, generator=g, dtype=D)
    lo_b = torch.randn(B, n, generator=g, dtype=D) if with_lo_b else None
    up_b = torch.randn(B, n, generator=g, dtype=D)
    out, bias = ops.relax_back(lam, lo_s, up_s, lo_b, up_b)
    ls = lo_s if per_row else lo_s[:, None]
    us = up_s if per_row else up_s[:, None]
    pos, neg = lam.clamp_min(0), lam.clamp_max(0)
    torch.testing.assert_close(out, pos * ls + neg * us)
    want = (neg * up_b[:, None]).sum(-1) + ((pos * lo_b[:, None]).sum(-1) if lo_b is not None else 0)
    torch.testing.assert_close(bias, want)
    args = _req(lam, lo_s, up_s, lo_b, up_b)
    torch.library.opcheck(torch.ops.fastcert.relax_back.default, args)
    assert gradcheck(ops.relax_back, args)


def test_linear_back_and_concretize() -> None:
    g = _gen(5)
    lam = torch.randn(3, 2, 4, generator=g, dtype=D)
    W = torch.randn(4, 6, generator=g, dtype=D)
    torch.testing.assert_close(ops.linear_back(lam, W), lam @ W)
    args = _req(lam, W)
    torch.library.opcheck(torch.ops.fastcert.linear_back.default, args)
    assert gradcheck(ops.linear_back, args)
    lam6 = torch.randn(3, 2, 6, generator=g, dtype=D)
    c, r = torch.randn(3, 6, generator=g, dtype=D), torch.rand(3, 6, generator=g, dtype=D)
    want = (lam6 * c[:, None]).sum(-1) - (lam6.abs() * r[:, None]).sum(-1)
    torch.testing.assert_close(ops.concretize_box(lam6, c, r), want)
    args = _req(lam6, c, r)
    torch.library.opcheck(torch.ops.fastcert.concretize_box.default, args)
    assert gradcheck(ops.concretize_box, args)


def test_concretize_is_the_box_minimum() -> None:
    """No point of the box goes below concretize_box (sampled, and at the minimizing corner: equality)."""
    g = _gen(6)
    lam = torch.randn(2, 3, 5, generator=g, dtype=D)
    c, r = torch.randn(2, 5, generator=g, dtype=D), torch.rand(2, 5, generator=g, dtype=D)
    lb = ops.concretize_box(lam, c, r)
    z = c[:, None] + r[:, None] * (2 * torch.rand(2, 1000, 5, generator=g, dtype=D) - 1)
    vals = torch.einsum("bsn,bkn->bsk", lam, z)
    assert bool((vals >= lb[..., None]).all())
    corner = c[:, None] - torch.sign(lam) * r[:, None]
    torch.testing.assert_close((lam * corner).sum(-1), lb)


def test_errors_name_the_op() -> None:
    l, u = _box(2, 3, 7)
    with pytest.raises(TypeError, match=r"fastcert::ibp_affine: argument 'W' has dtype torch.float32"):
        ops.ibp_affine(l, u, torch.ones(2, 3), None)
    with pytest.raises(ValueError, match=r"fastcert::ibp_affine: l \(2, 3\), u \(2, 3\) must be \[B, n\], W \(2, 4\)"):
        ops.ibp_affine(l, u, torch.ones(2, 4, dtype=D), None)
    with pytest.raises(ValueError, match=r"fastcert::relax_back: lam must be \[B, S, n\]"):
        ops.relax_back(l, l, l, None, l)


@pytest.mark.cuda
def test_cuda_tensor_gets_an_error_naming_the_op() -> None:
    l, u = _box(2, 3, 8)
    with pytest.raises((NotImplementedError, RuntimeError), match=r"fastcert::ibp_affine"):
        ops.ibp_affine(l.cuda(), u.cuda(), torch.ones(2, 3, dtype=D, device="cuda"), None)


def test_ops_work_under_torch_compile_fake_tensors() -> None:
    """The fake implementations give the shapes torch.compile traces with (no data access)."""
    from torch._subclasses.fake_tensor import FakeTensorMode

    with FakeTensorMode():
        l = torch.empty(4, 5, dtype=D)
        lo, hi = ops.ibp_affine(l, l, torch.empty(3, 5, dtype=D), None)
        assert lo.shape == (4, 3) and hi.shape == (4, 3)
        out, bias = ops.relax_back(torch.empty(4, 2, 5, dtype=D), l, l, None, l)
        assert out.shape == (4, 2, 5) and bias.shape == (4, 2)


@pytest.mark.parametrize(("B", "S", "m", "n"), [(4, 9, 300, 1200), (64, 9, 200, 700)])
def test_large_ops_match_torch_autograd(B: int, S: int, m: int, n: int) -> None:
    """At sizes where the kernels split their GEMMs over the pool (by columns with few rows, by rows
    otherwise) and chunk their elementwise loops by columns, values and gradients equal plain-torch
    autograd of the same formulas (float64)."""
    g = _gen(7)
    l, u = _box(B, n, 8)
    W = torch.randn(m, n, generator=g, dtype=D)
    b = torch.randn(m, generator=g, dtype=D)
    lam = torch.randn(B, S, m, generator=g, dtype=D)
    lo_s, up_s = torch.rand(B, S, n, generator=g, dtype=D), torch.rand(B, n, generator=g, dtype=D)
    lo_b, up_b = torch.randn(B, n, generator=g, dtype=D), torch.randn(B, n, generator=g, dtype=D)
    lam[0, 0, :7] = 0  # zero coefficients take the lower side, as the kernels do

    def ours(l, u, W, b, lam, lo_s, up_s, lo_b, up_b):
        lo, hi = ops.ibp_affine(l, u, W, b)
        a = ops.linear_back(lam, W)
        a2, bias = ops.relax_back(a, lo_s, up_s, lo_b, up_b)
        return lo, hi, a2, bias, ops.concretize_box(a2, (lo[:, :1] + l) / 2, (hi[:, :1] - lo[:, :1]).abs() + u - l)

    def ref(l, u, W, b, lam, lo_s, up_s, lo_b, up_b):
        c, r = (l + u) / 2, (u - l) / 2
        mid, rad = c @ W.T + b, r @ W.abs().T
        lo, hi = mid - rad, mid + rad
        a = lam @ W
        pos = a >= 0
        a2 = torch.where(pos, a * lo_s, a * up_s[:, None])
        bias = torch.where(pos, a * lo_b[:, None], a * up_b[:, None]).sum(-1)
        cc, rr = (lo[:, :1] + l) / 2, (hi[:, :1] - lo[:, :1]).abs() + u - l
        conc = (a2 * cc[:, None]).sum(-1) - (a2.abs() * rr[:, None]).sum(-1)
        return lo, hi, a2, bias, conc

    args = _req(l, u, W, b, lam, lo_s, up_s, lo_b, up_b)
    args2 = _req(l, u, W, b, lam, lo_s, up_s, lo_b, up_b)
    got, want = ours(*args), ref(*args2)
    weights = [torch.randn(t.shape, generator=g, dtype=D) for t in want]
    for x, y in zip(got, want):
        torch.testing.assert_close(x, y, rtol=1e-10, atol=1e-10)
    g1 = torch.autograd.grad(got, args, weights)
    g2 = torch.autograd.grad(want, args2, weights)
    for i, (x, y) in enumerate(zip(g1, g2)):
        torch.testing.assert_close(x, y, rtol=1e-9, atol=1e-9, msg=lambda s, i=i: f"argument {i}: {s}")


def test_eager_fast_path_equals_the_registered_op() -> None:
    """``ops.<name>`` (the eager fast path: the kernel under a plain autograd.Function) gives bitwise the
    values and gradients of the registered ``torch.ops.fastcert.<name>`` on the same inputs, through a
    composite of every op; and it routes fake tensors to the registered op (no data access)."""
    from torch._subclasses.fake_tensor import FakeTensor, FakeTensorMode

    g = _gen(11)
    l, u = _box(3, 6, 12)
    W = torch.randn(4, 6, generator=g, dtype=D)
    b = torch.randn(4, generator=g, dtype=D)
    lam = torch.randn(3, 2, 4, generator=g, dtype=D)
    alpha = torch.rand(3, 4, generator=g, dtype=D)

    def run(f) -> tuple:
        ins = _req(l, u, W, b, lam, alpha)
        lo, hi = f("ibp_affine")(ins[0], ins[1], ins[2], ins[3])
        lo_s, up_s, up_b = f("relu_relax")(lo, hi, ins[5], ops.RELU_MODES["alpha"])
        a, bias = f("relax_back")(ins[4], lo_s, up_s, None, up_b)
        a2 = f("linear_back")(a, ins[2])
        out = f("concretize_box")(a2, (ins[0] + ins[1]) / 2, (ins[1] - ins[0]) / 2) + bias
        grads = torch.autograd.grad(out.square().sum(), ins)
        return (out.detach(), *grads)

    fast = run(lambda name: getattr(ops, name))
    registered = run(lambda name: getattr(torch.ops.fastcert, name).default)
    for x, y in zip(fast, registered, strict=True):
        assert torch.equal(x, y)
    with FakeTensorMode():
        fl = torch.empty(4, 5, dtype=D)
        lo, _ = ops.ibp_affine(fl, fl, torch.empty(3, 5, dtype=D), None)
        assert isinstance(lo, FakeTensor) and lo.shape == (4, 3)
