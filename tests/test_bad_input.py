"""Every bad input to ``fastcert.bounds`` / ``fastcert.certify`` / ``Network.from_torch`` gets a
ValueError or TypeError whose message names the problem and the fix (asserted on key words), never
a crash deep inside a kernel, a silently wrong answer, or NaN bounds. Good inputs that look unusual
(numpy arrays, non-contiguous tensors, float32 x with a float64 model, ...) must just work.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

import fastcert

from strategies import one_torch_thread


@pytest.fixture(autouse=True, scope="module")
def _single_torch_thread():
    with one_torch_thread():
        yield


def _mlp(n_in: int = 3, n_out: int = 2) -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(n_in, 4), nn.ReLU(), nn.Linear(4, n_out)).double().eval()


def _cnn() -> nn.Sequential:  # 1x6x6 -> 2x4x4
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(1, 2, 3), nn.ReLU(), nn.Flatten(), nn.Linear(32, 3)).double().eval()


X = torch.rand(2, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
XI = torch.rand(2, 1, 6, 6, dtype=torch.float64, generator=torch.Generator().manual_seed(2))


def _raises(exc, *words: str, fn, **kw):
    """fn(**kw) must raise ``exc`` (ValueError / TypeError) with every word in its message
    (case-insensitive); returns the message."""
    with pytest.raises(exc) as info:
        fn(**kw)
    msg = str(info.value)
    for w in words:
        assert w.lower() in msg.lower(), f"message does not mention {w!r}: {msg!r}"
    return msg


BAD = (ValueError, TypeError)

# ------------------------------------------------------------------------------------------------
# x
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("api", ["bounds", "certify"])
@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
def test_nonfinite_x(api: str, bad: float) -> None:
    x = X.clone()
    x[1, 2] = bad
    _raises(ValueError, "x", "nan", fn=getattr(fastcert, api), model=_mlp(), x=x, eps=0.1)


@pytest.mark.parametrize("api", ["bounds", "certify"])
@pytest.mark.parametrize("dtype", [torch.int64, torch.int32, torch.uint8, torch.bool, torch.float16,
                                   torch.bfloat16, torch.complex64])
def test_x_bad_dtype(api: str, dtype: torch.dtype) -> None:
    x = (X * 10).to(dtype) if dtype != torch.bool else X > 0.5
    msg = _raises(TypeError, "dtype", fn=getattr(fastcert, api), model=_mlp(), x=x, eps=0.1)
    assert ".float()" in msg or ".double()" in msg or "float32" in msg


def test_x_integer_numpy() -> None:
    _raises(TypeError, "dtype", fn=fastcert.bounds, model=_mlp(), x=np.ones((2, 3), dtype=np.int64), eps=0.1)


def test_x_not_an_array() -> None:
    _raises(TypeError, "x", "tensor", fn=fastcert.bounds, model=_mlp(), x=X.tolist(), eps=0.1)


def test_x_shape_does_not_match_the_model() -> None:
    model = nn.Sequential(nn.Linear(20, 5), nn.ReLU(), nn.Linear(5, 2)).double()
    msg = _raises(ValueError, "20", "19", fn=fastcert.bounds, model=model, x=torch.rand(3, 19, dtype=torch.float64),
                  eps=0.1)
    assert "Linear" in msg and "position 0" in msg


def test_x_unbatched() -> None:
    _raises(ValueError, "batch", fn=fastcert.bounds, model=_mlp(), x=X[0], eps=0.1)


def test_image_into_mlp_without_flatten() -> None:
    _raises(ValueError, "Flatten", fn=fastcert.bounds, model=_mlp(36, 2), x=XI, eps=0.1)


def test_flat_x_into_conv() -> None:
    _raises(ValueError, "[C, H, W]", fn=fastcert.bounds, model=_cnn(), x=XI.reshape(2, 36), eps=0.1)


def test_conv_channel_mismatch() -> None:
    _raises(ValueError, "channels", fn=fastcert.bounds, model=_cnn(), x=torch.rand(2, 3, 6, 6, dtype=torch.float64),
            eps=0.1)


def test_network_built_for_another_shape() -> None:
    net = fastcert.Network.from_torch(_mlp(), input_shape=(3,))
    _raises(ValueError, "shape", "(3,)", fn=fastcert.bounds, model=net, x=X.reshape(2, 1, 3), eps=0.1)


def test_x_on_the_meta_device() -> None:
    """A meta tensor (no values; ``.cpu()`` cannot help) is refused by name (a GPU tensor: .cpu(),
    test_x_on_cuda)."""
    _raises(ValueError, "meta", fn=fastcert.bounds, model=_mlp(), x=X.to("meta"), eps=0.1)


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_x_on_cuda() -> None:
    _raises(ValueError, ".cpu()", fn=fastcert.bounds, model=_mlp(), x=X.cuda(), eps=0.1)


def test_empty_batch() -> None:
    """B = 0: either empty results or a ValueError that says the batch is empty (not a RuntimeError
    from a reshape)."""
    x = torch.zeros(0, 3, dtype=torch.float64)
    for api in (fastcert.bounds, fastcert.certify):
        try:
            res = api(_mlp(), x, 0.1)
        except ValueError as exc:
            assert "empty" in str(exc).lower() or "batch" in str(exc).lower(), str(exc)
        else:
            out = res.lower if hasattr(res, "lower") else res.certified
            assert out.shape[0] == 0


# ------------------------------------------------------------------------------------------------
# eps
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("eps", [-0.1, -1e-300, torch.tensor([0.1, -0.2], dtype=torch.float64)])
def test_negative_eps(eps) -> None:
    _raises(ValueError, "eps", ">= 0", fn=fastcert.bounds, model=_mlp(), x=X, eps=eps)


@pytest.mark.parametrize("eps", [float("nan"), float("inf")])
def test_nonfinite_eps(eps: float) -> None:
    _raises(ValueError, "eps", "finite", fn=fastcert.bounds, model=_mlp(), x=X, eps=eps)


@pytest.mark.parametrize("eps", [[0.1, 0.2, 0.3], torch.ones(2, 1, dtype=torch.float64) * 0.1,
                                 torch.ones(2, 3, dtype=torch.float64) * 0.1, np.zeros(1)])
def test_eps_wrong_shape(eps) -> None:
    msg = _raises(ValueError, "eps", "shape", fn=fastcert.bounds, model=_mlp(), x=X, eps=eps)
    assert "[2]" in msg or "one entry per sample" in msg


@pytest.mark.parametrize("eps", ["0.1", None, object()])
def test_eps_not_a_number(eps) -> None:
    """eps of the wrong type: the message must at least say that eps is the problem."""
    _raises(BAD, "eps", fn=fastcert.bounds, model=_mlp(), x=X, eps=eps)


def test_eps_overflowing_the_box_is_not_nan() -> None:
    """A finite but astronomically large eps must not produce NaN bounds (raise, or give +-inf)."""
    try:
        res = fastcert.bounds(_mlp(), X, 1e308)
    except ValueError as exc:
        assert "eps" in str(exc)
        return
    assert not torch.isnan(res.lower).any() and not torch.isnan(res.upper).any(), (res.lower, res.upper)


# ------------------------------------------------------------------------------------------------
# x_min / x_max
# ------------------------------------------------------------------------------------------------


def test_x_below_x_min() -> None:
    _raises(ValueError, "x_min", fn=fastcert.bounds, model=_mlp(), x=X, eps=0.1, x_min=0.5)


def test_x_above_x_max() -> None:
    _raises(ValueError, "x_max", fn=fastcert.bounds, model=_mlp(), x=X, eps=0.1, x_max=0.5)


def test_x_outside_per_feature_box() -> None:
    x_min = torch.tensor([0.0, X[:, 1].max().item() + 0.01, 0.0], dtype=torch.float64)
    _raises(ValueError, "x_min", fn=fastcert.bounds, model=_mlp(), x=X, eps=0.1, x_min=x_min)


def test_x_outside_box_in_certify() -> None:
    _raises(ValueError, "x_max", fn=fastcert.certify, model=_mlp(), x=X + 2, eps=0.1, x_min=0.0, x_max=1.0)


def test_x_min_wrong_shape() -> None:
    _raises(ValueError, "x_min", "broadcast", fn=fastcert.bounds, model=_mlp(), x=X, eps=0.1, x_min=torch.zeros(5))


def test_x_min_nan() -> None:
    _raises(ValueError, "x_min", "finite", fn=fastcert.bounds, model=_mlp(), x=X, eps=0.1, x_min=float("nan"))


# ------------------------------------------------------------------------------------------------
# C
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("shape", [(2,), (1, 3), (3, 1, 2), (2, 1, 3), (1, 1, 1, 2)])
def test_C_wrong_shape(shape) -> None:
    msg = _raises(ValueError, "C", fn=fastcert.bounds, model=_mlp(), x=X, eps=0.1,
                  C=torch.ones(*shape, dtype=torch.float64))
    assert "[S, 2]" in msg, msg


def test_C_nonfinite() -> None:
    _raises(ValueError, "C", "nan", fn=fastcert.bounds, model=_mlp(), x=X, eps=0.1,
            C=torch.tensor([[float("nan"), 1.0]], dtype=torch.float64))


def test_C_integer_dtype() -> None:
    _raises(TypeError, "C", "dtype", fn=fastcert.bounds, model=_mlp(), x=X, eps=0.1, C=torch.eye(2, dtype=torch.int64))


def test_C_list() -> None:
    _raises(TypeError, "C", fn=fastcert.bounds, model=_mlp(), x=X, eps=0.1, C=[[1.0, -1.0]])


# ------------------------------------------------------------------------------------------------
# labels
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("labels", [[0, 2], [-1, 0], torch.tensor([5, 0])])
def test_labels_out_of_range(labels) -> None:
    _raises(ValueError, "labels", "[0, 2)", fn=fastcert.certify, model=_mlp(), x=X, eps=0.1, labels=labels)


@pytest.mark.parametrize("labels", [torch.tensor([0.0, 1.0]), np.array([0.0, 1.0]), [0.5, 1.0],
                                    torch.tensor([True, False])])
def test_labels_not_integers(labels) -> None:
    _raises(TypeError, "labels", "integer", fn=fastcert.certify, model=_mlp(), x=X, eps=0.1, labels=labels)


def test_labels_wrong_count() -> None:
    _raises(ValueError, "labels", "one entry per sample", fn=fastcert.certify, model=_mlp(), x=X, eps=0.1,
            labels=[0, 1, 1])


def test_labels_strings() -> None:
    _raises(BAD, "labels", fn=fastcert.certify, model=_mlp(), x=X, eps=0.1, labels=["cat", "dog"])


# ------------------------------------------------------------------------------------------------
# method / norm
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("method", ["deeppoly", "CROWN-IBP-x", "", "alpha-crown-x", "alpha"])
def test_unknown_method(method: str) -> None:
    msg = _raises(ValueError, "method", fn=fastcert.bounds, model=_mlp(), x=X, eps=0.1, method=method)
    for m in ("ibp", "crown", "fastlin", "kw", "crown-ibp", "alpha-crown"):
        assert m in msg
    _raises(ValueError, "method", fn=fastcert.certify, model=_mlp(), x=X, eps=0.1, method=method)


@pytest.mark.parametrize("norm", ["fro", "3", 0, "", "nuc", 2.5])
def test_unknown_norm(norm) -> None:
    msg = _raises(ValueError, "norm", fn=fastcert.bounds, model=_mlp(), x=X, eps=0.1, norm=norm)
    assert "'inf'" in msg and "'2'" in msg and "'1'" in msg
    _raises(ValueError, "norm", fn=fastcert.certify, model=_mlp(), x=X, eps=0.1, norm=norm)


@pytest.mark.parametrize("norm", ["inf", "2", "1", 2, 1, float("inf"), np.inf, "L2", "linf", "Linf", "l1"])
def test_norm_spellings_accepted(norm) -> None:
    res = fastcert.bounds(_mlp(), X, 0.1, norm=norm)
    assert res.norm in ("inf", "2", "1")


# ------------------------------------------------------------------------------------------------
# the model
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("where", ["weight", "bias"])
@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
@pytest.mark.parametrize("layer", [0, 2])
def test_nonfinite_weights(where: str, bad: float, layer: int) -> None:
    model = _mlp()
    with torch.no_grad():
        getattr(model[layer], where).view(-1)[1] = bad
    msg = _raises(ValueError, "nan or inf", where, fn=fastcert.bounds, model=model, x=X, eps=0.1)
    assert f"position {layer}" in msg
    _raises(ValueError, "nan or inf", fn=fastcert.Network.from_torch, model=model)


def test_nonfinite_conv_weight() -> None:
    model = _cnn()
    with torch.no_grad():
        model[0].weight[0, 0, 1, 1] = float("nan")
    _raises(ValueError, "nan or inf", "position 0", fn=fastcert.bounds, model=model, x=XI, eps=0.1)


@pytest.mark.parametrize("what", ["running_var", "running_mean", "weight", "bias"])
def test_nonfinite_batchnorm(what: str) -> None:
    model = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4), nn.ReLU(), nn.Linear(4, 2)).double().eval()
    with torch.no_grad():
        getattr(model[1], what)[0] = float("nan")
    _raises(ValueError, "nan or inf", "BatchNorm", fn=fastcert.bounds, model=model, x=X, eps=0.1)


def test_negative_running_var() -> None:
    model = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4), nn.ReLU(), nn.Linear(4, 2)).double().eval()
    with torch.no_grad():
        model[1].running_var[0] = -1.0
    _raises(ValueError, "BatchNorm", fn=fastcert.bounds, model=model, x=X, eps=0.1)


@pytest.mark.parametrize("mean,std", [([float("nan")] * 3, [1.0] * 3), ([float("inf")] * 3, [1.0] * 3),
                                      ([0.0] * 3, [1e-320] * 3)])
def test_nonfinite_normalize(mean, std) -> None:
    """Normalize with a NaN / inf mean, or a std so small that 1/std overflows: a ValueError (as for
    every other non-finite parameter), not NaN bounds."""
    model = nn.Sequential(fastcert.Normalize(mean, std), nn.Linear(3, 2)).double()
    _raises(ValueError, "Normalize", fn=fastcert.bounds, model=model, x=X, eps=0.1)


def test_weights_overflow_in_float32() -> None:
    """float32 x with a float64 weight that float32 cannot represent (1e300 -> inf): a ValueError
    naming the dtype, not NaN bounds."""
    model = _mlp()
    with torch.no_grad():
        model[0].weight[0, 0] = 1e300
    try:
        res = fastcert.bounds(model, X.float(), 0.1)
    except ValueError as exc:
        assert "float32" in str(exc) or "float64" in str(exc) or "overflow" in str(exc), str(exc)
        return
    assert not torch.isnan(res.lower).any() and not torch.isnan(res.upper).any(), (res.lower, res.upper)


def test_huge_weights_never_nan_bounds() -> None:
    """Finite float64 weights whose products overflow: raise, or return (possibly infinite) bounds,
    but never NaN."""
    model = nn.Sequential(nn.Linear(3, 2)).double()
    with torch.no_grad():
        model[0].weight.fill_(1e308)
        model[0].bias.fill_(0.5)
    x = torch.tensor([[0.5, 0.5, 0.5], [0.9, 0.9, 0.9], [0.1, 0.1, 0.1]], dtype=torch.float64)  # f(x[0]) = 1.5e308
    try:
        res = fastcert.bounds(model, x, 0.1)
    except ValueError as exc:
        assert "overflow" in str(exc) or "large" in str(exc) or "finite" in str(exc), str(exc)
        return
    assert not torch.isnan(res.lower).any() and not torch.isnan(res.upper).any(), (res.lower, res.upper)


def test_batchnorm_in_training_mode() -> None:
    model = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4), nn.ReLU(), nn.Linear(4, 2)).double()  # train()
    _raises(ValueError, "eval()", fn=fastcert.bounds, model=model, x=X, eps=0.1)
    _raises(ValueError, "eval()", fn=fastcert.certify, model=model, x=X, eps=0.1)
    model.eval()
    model[1].train()  # only the BatchNorm in training mode
    _raises(ValueError, "eval()", "position 1", fn=fastcert.bounds, model=model, x=X, eps=0.1)


def test_batchnorm2d_in_training_mode() -> None:
    model = nn.Sequential(nn.Conv2d(1, 2, 3), nn.BatchNorm2d(2), nn.ReLU(), nn.Flatten(), nn.Linear(32, 2)).double()
    _raises(ValueError, "eval()", fn=fastcert.bounds, model=model, x=XI, eps=0.1)


def test_batchnorm_without_running_stats() -> None:
    model = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4, track_running_stats=False), nn.Linear(4, 2)).double()
    model.eval()
    _raises(ValueError, "BatchNorm", "running", fn=fastcert.bounds, model=model, x=X, eps=0.1)


def test_dropout_in_training_mode() -> None:
    model = nn.Sequential(nn.Linear(3, 4), nn.Dropout(0.5), nn.ReLU(), nn.Linear(4, 2)).double()
    _raises(ValueError, "Dropout", "eval()", fn=fastcert.bounds, model=model, x=X, eps=0.1)


@pytest.mark.parametrize("make,name,pos", [
    (lambda: nn.Sequential(nn.Conv2d(1, 2, 3), nn.ReLU(), nn.MaxPool2d(2, dilation=2), nn.Flatten(),
                           nn.Linear(2, 2)), "MaxPool2d", 2),
    (lambda: nn.Sequential(nn.Flatten(), nn.Linear(36, 4), nn.LSTM(4, 4)), "LSTM", 2),
    (lambda: nn.Sequential(nn.Flatten(), nn.Linear(36, 4), nn.Softmax(dim=1)), "Softmax", 2),
    (lambda: nn.Sequential(nn.Flatten(), nn.Sequential(nn.Linear(36, 4), nn.GELU()), nn.Linear(4, 2)), "GELU", 2),
    (lambda: nn.Sequential(nn.Flatten(), nn.Linear(36, 4), nn.SiLU(), nn.Linear(4, 2)), "SiLU", 2),
    (lambda: nn.Sequential(nn.Conv2d(1, 2, 3), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(2, 2)),
     "AdaptiveAvgPool2d", 1),
])
def test_unsupported_layer_named_with_position(make, name: str, pos: int) -> None:
    model = make().double().eval()
    msg = _raises(ValueError, name, f"position {pos}", fn=fastcert.bounds, model=model, x=XI, eps=0.1)
    assert "supports" in msg or "supported" in msg
    _raises(ValueError, name, fn=fastcert.Network.from_torch, model=model)


def test_custom_module() -> None:
    """A custom module's forward is traced (torch.fx); what it cannot express is refused naming the node."""
    class MyNet(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.lin = nn.Linear(3, 2)

        def forward(self, z):
            return self.lin(z)

    class Shifted(MyNet):
        def forward(self, z):
            return self.lin(z) + 1.0

    class Branchy(MyNet):
        def forward(self, z):
            return self.lin(z) if z.sum() > 0 else -self.lin(z)

    model = MyNet().double()
    assert torch.equal(fastcert.Network.from_torch(model).forward(X), model(X))
    _raises(ValueError, "traced node", "add", "constant", fn=fastcert.bounds, model=Shifted().double(), x=X, eps=0.1)
    _raises(ValueError, "Branchy", "torch.fx", fn=fastcert.bounds, model=Branchy().double(), x=X, eps=0.1)


def test_not_a_module() -> None:
    _raises(TypeError, "nn.Module", fn=fastcert.bounds, model=lambda z: z, x=X, eps=0.1)


def test_empty_model() -> None:
    _raises(ValueError, "no layers", fn=fastcert.bounds, model=nn.Sequential(), x=X, eps=0.1)


@pytest.mark.parametrize("kw,word", [
    (dict(groups=2), "groups"),
    (dict(dilation=2), "dilation"),
    (dict(padding="same"), "padding"),
    (dict(padding=1, padding_mode="reflect"), "padding_mode"),
    (dict(padding=1, padding_mode="circular"), "padding_mode"),
])
def test_unsupported_conv(kw, word: str) -> None:
    conv = nn.Conv2d(2, 2, 3, **kw)
    model = nn.Sequential(conv, nn.Flatten(), nn.LazyLinear(2)).double()
    x = torch.rand(1, 2, 6, 6, dtype=torch.float64)
    model(x)  # materialise the lazy layer
    model.eval()
    msg = _raises(ValueError, "Conv2d", word, "position 0", fn=fastcert.bounds, model=model, x=x, eps=0.1)
    assert "groups=1" in msg


def test_unsupported_flatten_and_pool() -> None:
    _raises(ValueError, "Flatten", "start_dim", fn=fastcert.bounds,
            model=nn.Sequential(nn.Flatten(2), nn.Linear(6, 2)).double(), x=XI, eps=0.1)
    _raises(ValueError, "AvgPool2d", "ceil_mode", fn=fastcert.bounds,
            model=nn.Sequential(nn.AvgPool2d(4, ceil_mode=True), nn.Flatten(), nn.Linear(4, 2)).double(), x=XI,
            eps=0.1)


def test_normalize_channel_mismatch() -> None:
    model = nn.Sequential(fastcert.Normalize([0.1, 0.2], [1.0, 1.0]), nn.Flatten(), nn.Linear(36, 2)).double()
    _raises(ValueError, "Normalize", "channels", fn=fastcert.bounds, model=model, x=XI, eps=0.1)


def test_normalize_constructor() -> None:
    with pytest.raises(ValueError, match="std"):
        fastcert.Normalize([0.1], [0.0])
    with pytest.raises(ValueError, match="std"):
        fastcert.Normalize([0.1], [-1.0])
    with pytest.raises(ValueError, match="mean"):
        fastcert.Normalize([0.1, 0.2], [1.0])


@pytest.mark.parametrize("act", [nn.Tanh, nn.Sigmoid, lambda: nn.LeakyReLU(0.1)])
def test_kw_refuses_non_relu_activations(act) -> None:
    """The Kolter-Wong dual is defined for ReLU networks: refused by name, naming the methods that work."""
    model = nn.Sequential(nn.Linear(3, 4), act(), nn.Linear(4, 2)).double()
    with pytest.raises(fastcert.UnsupportedError) as info:
        fastcert.bounds(model, X, 0.1, method="kw")
    assert isinstance(info.value, NotImplementedError)
    assert "ibp" in str(info.value) and "crown" in str(info.value)  # names the fix
    with pytest.raises(fastcert.UnsupportedError):
        fastcert.certify(model, X, 0.1, method="kw")
    for method in ("ibp", "fastlin", "crown", "crown-ibp"):  # and the others work
        fastcert.bounds(model, X, 0.1, method=method)


# ------------------------------------------------------------------------------------------------
# good inputs that must work
# ------------------------------------------------------------------------------------------------


def test_numpy_inputs_work() -> None:
    model = _mlp()
    ref = fastcert.bounds(model, X, 0.1, C=torch.tensor([[1.0, -1.0]], dtype=torch.float64))
    res = fastcert.bounds(model, X.numpy(), np.float64(0.1), C=np.array([[1.0, -1.0]]), x_min=np.float64(0.0),
                          x_max=np.ones(3))
    assert isinstance(res.lower, torch.Tensor) and res.lower.dtype == torch.float64
    # the domain box can only tighten the bound, up to the rigorous rounding slack (which depends on the
    # box's centre and so may grow by a few ulps when the box is clipped)
    assert (res.lower >= ref.lower - 1e-14 * (1 + ref.lower.abs())).all()
    r32 = fastcert.bounds(model, X.numpy().astype(np.float32), 0.1)
    assert r32.lower.dtype == torch.float32
    c = fastcert.certify(model, X.numpy(), np.array([0.01, 0.02]), labels=np.array([0, 1]))
    assert c.certified.shape == (2,)


def test_noncontiguous_inputs_work() -> None:
    model = _mlp()
    xt = X.t().contiguous().t()
    assert not xt.is_contiguous()
    a = fastcert.bounds(model, X, 0.1)
    b = fastcert.bounds(model, xt, 0.1)
    assert torch.equal(a.lower, b.lower) and torch.equal(a.upper, b.upper)
    xf = np.asfortranarray(X.numpy())
    c = fastcert.bounds(model, xf, 0.1)
    assert torch.equal(a.lower, c.lower)
    C = torch.tensor([[1.0, 0.0], [0.0, 1.0]], dtype=torch.float64).t()  # transposed view
    d = fastcert.bounds(model, X, 0.1, C=C)
    assert torch.equal(a.lower, d.lower)


def test_x_requiring_grad_works() -> None:
    x = X.clone().requires_grad_(True)
    res = fastcert.bounds(_mlp(), x, 0.1)
    assert res.lower.shape == (2, 2)


def test_float32_model_float64_x_and_vice_versa() -> None:
    model = _mlp()
    r64 = fastcert.bounds(model.float(), X, 0.1)
    assert r64.lower.dtype == torch.float64
    r32 = fastcert.bounds(_mlp(), X.float(), 0.1)
    assert r32.lower.dtype == torch.float32


def test_labels_numpy_and_per_sample_eps() -> None:
    res = fastcert.certify(_mlp(), X, torch.tensor([0.0, 0.1], dtype=torch.float64), labels=np.array([1, 0]))
    assert res.labels.tolist() == [1, 0]


# ------------------------------------------------------------------------------------------------
# Network.from_torch is a snapshot (issue #9, point 3)
# ------------------------------------------------------------------------------------------------


def test_snapshot_reproducer() -> None:
    """The issue's reproducer: a Network converted without input_shape must not see in-place changes
    to the Linear weights (it used to keep their storage while copying the BatchNorm statistics)."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4, eps=0.0), nn.ReLU(), nn.Linear(4, 2)).double().eval()
    with torch.no_grad():
        model[1].running_mean.uniform_(-1, 1)
        model[1].running_var.uniform_(0.5, 2)
    x = torch.rand(1, 3, dtype=torch.float64)
    net = fastcert.Network.from_torch(model)
    with torch.no_grad():
        y = model(x)
        model[0].weight.mul_(2)
        model[0].bias.mul_(2)
        model[1].running_mean.mul_(2)
        model[1].running_var.mul_(4)
    res = fastcert.bounds(net, x, 0.0, method="ibp")
    assert (res.lower <= y).all() and (y <= res.upper).all(), (res.lower, res.upper, y)


def _bn_first() -> nn.Sequential:  # BatchNorm with no affine layer before it: kept as its own layer
    return nn.Sequential(nn.BatchNorm1d(3), nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2))


def _cnn_all() -> nn.Sequential:  # 1x6x6
    return nn.Sequential(fastcert.Normalize([0.3], [0.7]), nn.Conv2d(1, 2, 3), nn.BatchNorm2d(2), nn.LeakyReLU(0.1),
                         nn.AvgPool2d(2), nn.Flatten(), nn.Linear(8, 2))


def _mutate(attr: str):
    def f(m: nn.Module) -> None:
        with torch.no_grad():
            t = getattr(m, attr)
            if isinstance(t, torch.Tensor):
                t.mul_(1.5).add_(0.25)
            elif attr == "negative_slope":
                m.negative_slope = 0.7
            else:  # AvgPool2d: a divisor instead of the window size
                m.divisor_override = 1
    return f


@pytest.mark.parametrize("make,idx,attr", [
    (_mlp, 0, "weight"), (_mlp, 2, "bias"), (_bn_first, 0, "running_mean"), (_bn_first, 0, "running_var"),
    (_bn_first, 0, "weight"), (_bn_first, 0, "bias"), (_cnn_all, 0, "mean"), (_cnn_all, 0, "std"),
    (_cnn_all, 1, "weight"), (_cnn_all, 1, "bias"), (_cnn_all, 2, "running_mean"), (_cnn_all, 2, "weight"),
    (_cnn_all, 3, "negative_slope"), (_cnn_all, 4, "divisor_override"),
])
@pytest.mark.parametrize("with_shape", [False, True])
def test_snapshot_every_parameter(make, idx: int, attr: str, with_shape: bool) -> None:
    """Every parameter and buffer of every layer type, changed in place after conversion, with and
    without input_shape: the Network keeps computing the network it was converted from (and the
    change does matter: a fresh conversion sees it)."""
    torch.manual_seed(1)
    model = make().double().eval()
    x = XI[:1] if make is _cnn_all else X[:1]
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.running_mean.uniform_(-1, 1)
                m.running_var.uniform_(0.5, 2)
        y = model(x)
    net = fastcert.Network.from_torch(model, input_shape=tuple(x.shape[1:]) if with_shape else None)
    _mutate(attr)(model[idx])
    with torch.no_grad():
        assert not torch.allclose(model(x), y)
    for method in ("ibp",) if make is _cnn_all else ("ibp", "crown"):  # (no CROWN for LeakyReLU yet)
        res = fastcert.bounds(net, x, 0.0, method=method)
        assert (res.lower <= y).all() and (y <= res.upper).all(), (method, res.lower, res.upper, y)
    assert torch.allclose(net(x), y, rtol=1e-12, atol=1e-12)


# ------------------------------------------------------------------------------------------------
# module behaviour the structure does not show (point 4) and models torch refuses (point 7)
# ------------------------------------------------------------------------------------------------


class _ScaledLinear(nn.Linear):
    def forward(self, z):
        return super().forward(z) * 2


class _Residual(nn.Sequential):
    def forward(self, z):
        return z + super().forward(z)


class _ShiftedConv(nn.Conv2d):
    def _conv_forward(self, z, w, b):
        return super()._conv_forward(z + 1, w, b)


class _NegNormalize(fastcert.Normalize):
    def forward(self, z):
        return -super().forward(z)


def _instance_forward() -> nn.Sequential:
    m = _mlp()
    m[2].forward = lambda z: nn.functional.linear(z, m[2].weight, m[2].bias) + 1
    return m


@pytest.mark.parametrize("make,x,words", [
    (lambda: nn.Sequential(_ScaledLinear(3, 2)), X, ["position 0", "_ScaledLinear", "overrides forward"]),
    (lambda: nn.Sequential(_ShiftedConv(1, 2, 3), nn.Flatten(), nn.Linear(32, 2)), XI, ["_ShiftedConv",
                                                                                        "_conv_forward"]),
    (lambda: nn.Sequential(_NegNormalize([0.5], [0.2]), nn.Flatten(), nn.Linear(36, 2)), XI, ["_NegNormalize"]),
    (_instance_forward, X, ["position 2", "overrides forward"]),
])
def test_overridden_forward_is_refused(make, x, words) -> None:
    """A subclass (or instance) with its own forward computes something its structure does not show
    (the reproducer: ScaledLinear gave bounds of half of f(x)): refused by name."""
    model = make().double().eval()
    _raises(ValueError, *words, fn=fastcert.bounds, model=model, x=x, eps=0.0)
    _raises(ValueError, *words, fn=fastcert.Network.from_torch, model=model)


@pytest.mark.parametrize("make,x", [
    (lambda: nn.Sequential(nn.Flatten(), _Residual(nn.Linear(36, 36), nn.ReLU()), nn.Linear(36, 2)), XI),
    (lambda: _Residual(nn.Linear(3, 3)), X),
])
def test_sequential_subclass_with_forward_is_traced(make, x) -> None:
    """A container whose forward adds a skip connection (refused before the graph IR) is traced with
    torch.fx: the network computes what the module computes, and the bounds hold at sampled points."""
    torch.manual_seed(0)
    model = make().double().eval()
    net = fastcert.Network.from_torch(model)
    assert torch.allclose(net.forward(x), model(x), rtol=1e-12, atol=1e-12)
    res = fastcert.bounds(model, x, 0.05, method="crown")
    pts = x + (torch.rand(200, *x.shape, dtype=torch.float64) * 2 - 1) * 0.05
    ys = model(pts.reshape(-1, *x.shape[1:])).reshape(200, x.shape[0], -1)
    assert (ys >= res.lower).all() and (ys <= res.upper).all()


def test_plain_subclass_is_accepted() -> None:
    class MyLinear(nn.Linear):  # no behaviour of its own
        pass

    torch.manual_seed(0)
    a = nn.Sequential(MyLinear(3, 2)).double().eval()
    b = nn.Sequential(nn.Linear(3, 2)).double().eval()
    b.load_state_dict(a.state_dict())
    assert torch.equal(fastcert.bounds(a, X, 0.1).lower, fastcert.bounds(b, X, 0.1).lower)


@pytest.mark.parametrize("where", ["leaf", "container"])
@pytest.mark.parametrize("kind", ["forward", "forward_pre", "forward_kwargs", "forward_always"])
def test_forward_hooks_are_refused(where: str, kind: str) -> None:
    model = _mlp()
    target = model[2] if where == "leaf" else model
    if kind == "forward_pre":
        target.register_forward_pre_hook(lambda mod, inp: (inp[0] * 2,))
    elif kind == "forward_kwargs":
        target.register_forward_hook(lambda mod, args, kwargs, out: out * 2, with_kwargs=True)
    else:
        target.register_forward_hook(lambda mod, inp, out: out * 2, always_call=kind == "forward_always")
    words = ["hooks", "'2'" if where == "leaf" else "the model"]
    _raises(ValueError, *words, fn=fastcert.bounds, model=model, x=X, eps=0.0)
    _raises(ValueError, *words, fn=fastcert.Network.from_torch, model=model)


@pytest.mark.parametrize("pre", [False, True])
def test_global_forward_hooks_are_refused(pre: bool) -> None:
    reg = (torch.nn.modules.module.register_module_forward_pre_hook if pre
           else torch.nn.modules.module.register_module_forward_hook)
    handle = reg((lambda mod, inp: None) if pre else (lambda mod, inp, out: None))
    try:
        _raises(ValueError, "global", "hooks", fn=fastcert.bounds, model=_mlp(), x=X, eps=0.0)
    finally:
        handle.remove()
    fastcert.bounds(_mlp(), X, 0.0)  # and after removing it, the model converts


def test_backward_hooks_are_harmless() -> None:
    model = _mlp()
    model[0].register_full_backward_hook(lambda mod, gi, go: None)
    assert torch.equal(fastcert.bounds(model, X, 0.1).lower, fastcert.bounds(_mlp(), X, 0.1).lower)


@pytest.mark.filterwarnings("ignore:.*weight_norm.*is deprecated")
@pytest.mark.parametrize("how", ["weight_norm", "prune"])
def test_weight_recomputing_pre_hooks_are_refused(how: str) -> None:
    """torch.nn.utils.weight_norm and prune recompute the weight in a forward pre-hook."""
    model = _mlp()
    if how == "prune":
        import torch.nn.utils.prune as prune

        prune.l1_unstructured(model[0], "weight", amount=0.5)
    else:
        torch.nn.utils.weight_norm(model[0])
    _raises(ValueError, "pre-hooks", "'0'", how, fn=fastcert.bounds, model=model, x=X, eps=0.0)


class _Double(nn.Module):
    def forward(self, w):
        return 2 * w


@pytest.mark.parametrize("param", ["weight_norm", "spectral_norm", "custom"])
def test_parametrized_weight_is_read_as_forward_sees_it(param: str) -> None:
    """torch.nn.utils.parametrize: the effective weight (m.weight evaluates the parametrization) is
    bounded, not the stored original; in training mode (spectral_norm's power iteration would move
    the weight at every forward) it is refused."""
    model = _mlp()
    if param == "custom":
        torch.nn.utils.parametrize.register_parametrization(model[0], "weight", _Double())
    else:
        getattr(torch.nn.utils.parametrizations, param)(model[0])
    model.train()
    if param == "spectral_norm":
        _raises(ValueError, "parametrized", "eval()", fn=fastcert.bounds, model=model, x=X, eps=0.0)
    model.eval()
    with torch.no_grad():
        y = model(X)
    res = fastcert.bounds(model, X, 0.0)
    assert (res.lower <= y).all() and (y <= res.upper).all(), (res.lower, res.upper, y)


def test_repeated_module_runs_twice() -> None:
    """nn.Sequential(l, ReLU(), l) runs l twice; named_children() lists it once (bounds of l, ReLU)."""
    torch.manual_seed(0)
    lin = nn.Linear(3, 3)
    model = nn.Sequential(lin, nn.ReLU(), lin).double().eval()
    with torch.no_grad():
        y = model(X)
    res = fastcert.bounds(model, X, 0.0)
    assert (res.lower <= y).all() and (y <= res.upper).all(), (res.lower, res.upper, y)


def test_uninitialised_lazy_module() -> None:
    _raises(ValueError, "lazy", "run the model once", fn=fastcert.bounds,
            model=nn.Sequential(nn.LazyLinear(2)).double(), x=X, eps=0.0)


@pytest.mark.parametrize("make,x,words", [
    (lambda: nn.Sequential(nn.Flatten(), nn.BatchNorm2d(3), nn.Linear(3, 2)), X[:1], ["BatchNorm2d", "[B, C, H, W]"]),
    (lambda: nn.Sequential(nn.BatchNorm1d(1), nn.Flatten(), nn.Linear(36, 2)), XI[:1], ["BatchNorm1d", "[B, C]"]),
    (lambda: nn.Sequential(nn.AvgPool2d(2, padding=2), nn.Flatten(), nn.Linear(25, 2)), XI, ["AvgPool2d", "padding"]),
    (lambda: nn.Sequential(nn.AvgPool2d(2, divisor_override=0), nn.Flatten(), nn.Linear(9, 2)), XI,
     ["divisor_override"]),
    (lambda: nn.Sequential(nn.AvgPool2d(2, stride=0), nn.Flatten(), nn.Linear(9, 2)), XI, ["stride"]),
    (lambda: nn.Sequential(nn.Conv2d(1, 1, 3, stride=0), nn.Flatten(), nn.Linear(16, 2)), XI, ["stride"]),
    (lambda: nn.Sequential(nn.Conv2d(1, 1, 3, padding=-1), nn.Flatten(), nn.Linear(4, 2)), XI, ["padding"]),
])
def test_models_torch_refuses(make, x, words) -> None:
    """Shapes and settings torch's own forward refuses are refused, not given bounds."""
    model = make().double().eval()
    with pytest.raises((ValueError, RuntimeError)):
        model(x)
    _raises(ValueError, *words, fn=fastcert.bounds, model=model, x=x, eps=0.0)


def test_nan_leaky_slope() -> None:
    model = nn.Sequential(nn.Linear(3, 4), nn.LeakyReLU(float("nan")), nn.Linear(4, 2)).double().eval()
    _raises(ValueError, "negative_slope", "position 1", fn=fastcert.bounds, model=model, x=X, eps=0.0, method="ibp")


def test_batchnorm1d_on_sequences_works() -> None:
    """BatchNorm1d on [B, C, L] is what torch accepts: bounds at eps 0 contain torch's output."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.BatchNorm1d(2), nn.Flatten(), nn.Linear(6, 2)).double().eval()
    x = torch.rand(2, 2, 3, dtype=torch.float64)
    with torch.no_grad():
        model[0].running_mean.uniform_(-1, 1)
        y = model(x)
    res = fastcert.bounds(model, x, 0.0)
    assert (res.lower <= y).all() and (y <= res.upper).all()


@pytest.mark.parametrize("dtype,exc,word", [(torch.complex128, TypeError, "complex"),
                                            (torch.int64, TypeError, "dtype")])
def test_non_real_weights(dtype, exc, word: str) -> None:
    """Complex weights used to lose their imaginary part with a warning; integer weights are not
    floating point either."""
    model = _mlp()
    model[0].weight = nn.Parameter(model[0].weight.detach().to(dtype), requires_grad=False)
    _raises(exc, word, "position 0", fn=fastcert.bounds, model=model, x=X, eps=0.0)
    _raises(exc, word, fn=fastcert.Network.from_torch, model=model)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_weights_are_exact(dtype) -> None:
    """Every half / bfloat16 number is a float64 number: the network is bounded with those exact weights."""
    model = _mlp().to(dtype)
    ref = _mlp()
    ref.load_state_dict({k: v.double() for k, v in model.state_dict().items()})
    a, b = fastcert.bounds(model, X, 0.1), fastcert.bounds(ref, X, 0.1)
    assert torch.equal(a.lower, b.lower) and torch.equal(a.upper, b.upper)


@pytest.mark.parametrize("shape", [3, (0,), (3, 0), (-1,), (3.0,), ()])
def test_bad_input_shape(shape) -> None:
    _raises(BAD, "input_shape", fn=fastcert.Network.from_torch, model=_mlp(), input_shape=shape)


@pytest.mark.parametrize("method", ["ibp", "crown", "kw"])
def test_interval_overflow_names_the_layer_even_when_a_relu_hides_it(method: str) -> None:
    """float32 overflow in the first layer's interval (its magnitude g is inf), hidden from the output by the
    ReLU (every pre-activation is below -3e38, so the ReLU outputs 0): refused, naming that layer."""
    m = nn.Sequential(nn.Linear(2, 3), nn.ReLU(), nn.Linear(3, 1)).eval()
    with torch.no_grad():
        m[0].weight.fill_(-3e38)
        m[0].bias.zero_()
    with pytest.raises(ValueError, match=r"overflow in position 0 .*Linear.*float64 inputs"):
        fastcert.bounds(m, torch.ones(1, 2), 0.5, method=method)
    r = fastcert.bounds(m, torch.ones(1, 2, dtype=torch.float64), 0.5, method=method)  # in range there
    assert torch.isfinite(r.lower).all() and torch.isfinite(r.upper).all()


def test_interval_overflow_at_the_output_is_refused() -> None:
    m = nn.Sequential(nn.Linear(2, 1)).eval()
    with torch.no_grad():
        m[0].weight.fill_(3e38)
    with pytest.raises(ValueError, match="overflow"):
        fastcert.bounds(m, torch.ones(1, 2), 0.5, method="ibp")
