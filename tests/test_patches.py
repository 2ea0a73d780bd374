"""The windowed (patches) back-substitution for convolution layers equals the full-width rows.

``linear_bounds._intermediate_patches`` bounds a convolution's neurons with rows restricted to their
receptive fields; it must give the bounds of the full-width pass (``BoundOptions(patches="never")``) up to the order
of the sums, for every stride / padding / kernel shape, norm, method, and for degenerate balls, and the
result must contain the sampled outputs (the soundness suite covers that on random networks too).
"""

from __future__ import annotations

import fastcert
import pytest
import torch
from fastcert.algorithms import linear_bounds as lb
from torch import nn

# (out channels, kernel, stride, padding) per conv layer; input 2 x 11 x 11
CONFIGS = [
    [(3, 3, 2, 1), (4, 3, 1, 1)],
    [(3, 4, 2, 1), (5, 4, 2, 1)],
    [(4, 3, 1, 0), (3, 2, 2, 2), (2, 3, 1, 1)],  # padding larger than the kernel's half, three convs
    [(2, 5, 3, 2), (3, 1, 1, 0)],  # 1x1 kernel
    [(3, (3, 2), (2, 1), (1, 0)), (2, (2, 3), (1, 2), (0, 1))],  # non-square kernel, stride, padding
]


def _model(cfg: list, seed: int, act: type[nn.Module] = nn.ReLU) -> nn.Sequential:
    torch.manual_seed(seed)
    layers: list[nn.Module] = []
    C, H, W = 2, 11, 11
    for oc, k, s, p in cfg:
        conv = nn.Conv2d(C, oc, k, stride=s, padding=p)
        layers += [conv, act()]
        kh, kw = conv.kernel_size
        (sh, sw), (ph, pw) = conv.stride, conv.padding
        C, H, W = oc, (H + 2 * ph - kh) // sh + 1, (W + 2 * pw - kw) // sw + 1
    layers += [nn.Flatten(), nn.Linear(C * H * W, 6), nn.ReLU(), nn.Linear(6, 3)]
    return nn.Sequential(*layers).double()


def _both(model: nn.Module, x: torch.Tensor, eps: float, norm: str, method: str,
          monkeypatch: pytest.MonkeyPatch) -> tuple[fastcert.BoundsResult, fastcert.BoundsResult, int]:
    calls = [0]
    orig = lb.intermediate_patches

    def counted(*a, **k):  # type: ignore[no-untyped-def]
        calls[0] += 1
        return orig(*a, **k)

    monkeypatch.setattr(lb, "intermediate_patches", counted)
    r1 = fastcert.bounds(model, x, eps, norm=norm, method=method, options=fastcert.BoundOptions(patches="always"))
    r2 = fastcert.bounds(model, x, eps, norm=norm, method=method, options=fastcert.BoundOptions(patches="never"))
    return r1, r2, calls[0]


@pytest.mark.parametrize("cfg", range(len(CONFIGS)))
@pytest.mark.parametrize("method", ["crown", "fastlin", "crown-ibp"])
@pytest.mark.parametrize("norm", ["inf", "2", "1"])
def test_patches_equal_full_width(cfg: int, method: str, norm: str, monkeypatch: pytest.MonkeyPatch) -> None:
    for seed, eps in enumerate([0.0, 0.02, 0.3]):
        model = _model(CONFIGS[cfg], seed)
        x = torch.rand(3, 2, 11, 11, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
        r1, r2, calls = _both(model, x, eps, norm, method, monkeypatch)
        if method != "crown-ibp":
            assert calls >= 1  # the windowed path did run (crown-ibp takes intermediate bounds from IBP)
        scale = 1 + r2.lower.abs().max().item() + r2.upper.abs().max().item()
        assert (r1.lower - r2.lower).abs().max().item() <= 1e-12 * scale
        assert (r1.upper - r2.upper).abs().max().item() <= 1e-12 * scale


def test_patches_sound_against_samples_float32() -> None:
    """float32 windowed bounds contain the float64 outputs of points sampled in the ball (corners too)."""
    model = _model(CONFIGS[0], 3).float()
    g = torch.Generator().manual_seed(3)
    x = torch.rand(4, 2, 11, 11, generator=g)
    eps = 0.05
    r = fastcert.bounds(model, x, eps, method="crown")
    m64 = model.double()
    for _ in range(20):
        corner = torch.randint(0, 2, x.shape, generator=g).double() * 2 - 1
        uni = torch.rand(x.shape, generator=g, dtype=torch.float64) * 2 - 1
        for d in (corner, uni):
            y = m64(x.double() + eps * d)
            assert (r.lower.double() <= y).all() and (y <= r.upper.double()).all()


def test_auto_takes_the_cheaper_layout() -> None:
    """"auto" windows the rows where that is fewer multiply-adds, and keeps full-width rows where the
    window covers the image (deep chains on small images) or few neurons need bounds."""
    torch.manual_seed(0)
    big = nn.Sequential(nn.Conv2d(3, 16, 4, 2, 1), nn.ReLU(), nn.Conv2d(16, 32, 4, 2, 1), nn.ReLU(), nn.Flatten(),
                        nn.Linear(32 * 8 * 8, 10)).double()
    layers = fastcert.Network.from_torch(big).layers_for((3, 32, 32))
    steps = lb.patch_steps(layers, 3)
    assert steps == [1]
    assert lb.patches_cheaper(layers, 3, steps, None)  # 16x4x4 window vs 16x16x16 image
    need = torch.zeros(2, 32 * 8 * 8, dtype=torch.bool)
    need[0, :3] = True  # three neurons of channel 0: full-width rows are cheaper than 64 windows
    assert not lb.patches_cheaper(layers, 3, steps, need)
    need[:, :] = True
    assert lb.patches_cheaper(layers, 3, steps, need)
    small = nn.Sequential(nn.Conv2d(2, 3, 3, 1, 1), nn.ReLU(), nn.Conv2d(3, 3, 3, 1, 1), nn.ReLU(),
                          nn.Conv2d(3, 3, 3, 1, 1), nn.ReLU(), nn.Flatten(), nn.Linear(3 * 3 * 3, 2)).double()
    layers = fastcert.Network.from_torch(small).layers_for((2, 3, 3))
    steps = lb.patch_steps(layers, 5)
    assert steps == [3, 1]
    assert not lb.patches_cheaper(layers, 5, steps, None)  # 7x7 windows on a 3x3 image
