"""Issue #13 point 7: average certified L-inf radius of Fast-Lin, CROWN, alpha-CROWN and RecurJac (Lipschitz
certification) on MNIST MLPs, with time per image, and the Lipschitz-vs-eps curve of RecurJac, Fast-Lip and
the spectral bound on a 7-layer MLP.

    python -m benches.radius_table --data-dir ../shared/data/mnist --epochs 2 --images 20 --out .benchmarks/radius

Models are trained here (plain cross-entropy, Adam, the given epochs on the MNIST training set; seed 0) and
saved under --out, so a rerun reuses them: a 3x1024 ReLU MLP, a 3x1024 tanh MLP (the reference's
``mnist_3_1024`` shapes) and a 7x100 ReLU MLP for the curve. Radii: the first --images test images classified
correctly, the runner-up target (one margin row: RecurJac costs one recursion per row), 15 search steps from
eps 0.005 (the reference's defaults), inputs in [0, 1]; Lipschitz certification with --lipsteps
sub-intervals. alpha-CROWN (20 Adam iterations per bound, its slopes of the intermediate bounds optimized
too: ~100 s per call on the 3x1024 ReLU model and a 5-image batch) is searched from CROWN's radius of each
image (alpha-CROWN is never looser than CROWN, so that eps is certified), doubling then bisecting for
--alpha-steps steps; its time per image includes CROWN's search. --no-curve skips the Lipschitz curve (the
rows then go to radius_rows.json).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
from torch import nn

import fastcert
from fastcert.io.datasets import load_idx_dataset


def mlp(widths: list[int], act: type[nn.Module]) -> nn.Sequential:
    layers: list[nn.Module] = [nn.Flatten()]
    n = 784
    for w in widths:
        layers += [nn.Linear(n, w), act()]
        n = w
    layers.append(nn.Linear(n, 10))
    return nn.Sequential(*layers)


def train(model: nn.Module, X: torch.Tensor, y: torch.Tensor, epochs: int) -> nn.Module:
    torch.manual_seed(0)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    for _ in range(epochs):
        perm = torch.randperm(len(X))
        for i in range(0, len(X), 128):
            idx = perm[i:i + 128]
            opt.zero_grad()
            nn.functional.cross_entropy(model(X[idx]), y[idx]).backward()
            opt.step()
    return model.eval()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data-dir", required=True)
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--images", type=int, default=20)
    ap.add_argument("--methods", default="fastlin,crown,alpha-crown,recurjac")
    ap.add_argument("--lipsteps", type=int, default=3)
    ap.add_argument("--out", default=".benchmarks/radius")
    ap.add_argument("--alpha-steps", type=int, default=8)
    ap.add_argument("--curve", action=argparse.BooleanOptionalAction, default=True)
    a = ap.parse_args()
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    Xtr, ytr = load_idx_dataset(a.data_dir, "train")
    Xte, yte = load_idx_dataset(a.data_dir, "test", torch.float64)
    specs = {"mlp-3x1024-relu": ([1024] * 3, nn.ReLU), "mlp-3x1024-tanh": ([1024] * 3, nn.Tanh),
             "mlp-7x100-relu": ([100] * 7, nn.ReLU)}
    models = {}
    for name, (widths, act) in specs.items():
        path = out / f"{name}-e{a.epochs}.pt"
        if path.exists():
            models[name] = torch.load(path, weights_only=False)
        else:
            t = time.perf_counter()
            models[name] = train(mlp(widths, act), Xtr, ytr, a.epochs)
            torch.save(models[name], path)
            print(f"trained {name} in {time.perf_counter() - t:.0f} s")
        with torch.no_grad():
            acc = (models[name].double()(Xte).argmax(1) == yte).double().mean()
        print(f"{name}: clean test accuracy {float(acc):.4f}")
    rows = []
    for name in ("mlp-3x1024-relu", "mlp-3x1024-tanh"):
        m = models[name].double()
        with torch.no_grad():
            ok = (m(Xte[:500]).argmax(1) == yte[:500]).nonzero().flatten()[:a.images]
        x, y = Xte[ok], yte[ok]
        crown = None
        methods = a.methods.split(",")
        if "alpha-crown" in methods and "crown" in methods:  # CROWN first: alpha-CROWN starts from its radii
            methods = ["crown"] + [k for k in methods if k != "crown"]
        for method in methods:
            kw: dict = {}
            if method == "alpha-crown":
                if crown is None:
                    crown = fastcert.certified_radius(m, x, norm="inf", method="crown", labels=y, x_min=0.0,
                                                      x_max=1.0, target="runnerup")
                    crown_s = crown.time_s
                kw = dict(eps_init=crown.radius.clamp_min(1e-6), steps=a.alpha_steps)
            t = time.perf_counter()
            r = fastcert.certified_radius(m, x, norm="inf", method=method, labels=y, x_min=0.0, x_max=1.0,
                                          target="runnerup", lipsteps=a.lipsteps, **kw)
            dt = (time.perf_counter() - t + (crown_s if method == "alpha-crown" else 0.0)) / len(x)
            if method == "crown":
                crown, crown_s = r, r.time_s
            rows.append({"model": name, "method": method, "images": len(x), "avg_radius": r.mean_radius,
                         "radii": r.radius.tolist(), "s_per_image": dt,
                         "steps": kw.get("steps", 15), "warm_start": "crown" if kw else None})
            print(f"{name:18s} {method:12s} avg radius {r.mean_radius:.5f}  {dt:.2f} s/image", flush=True)
            if method == "alpha-crown":  # the warm start is certified: the search can only keep or grow it
                assert bool((r.radius >= crown.radius).all()), "alpha-CROWN's search lost CROWN's radius"
    if not a.curve:
        (out / "radius_rows.json").write_text(json.dumps({"rows": rows, "epochs": a.epochs}))
        return
    m = models["mlp-7x100-relu"].double()
    x = Xte[:1]
    curve = {}
    for method in ("recurjac", "fastlip", "spectral"):
        c = fastcert.lipschitz_curve(m, x, "inf", method, log_start=-4, log_end=2, num=13)
        curve[method] = c.constant[:, 0, :].amax(-1).tolist()
        curve["eps"] = c.eps.tolist()
        print(method, " ".join(f"{v:.4g}" for v in curve[method]), flush=True)
    (out / "radius_table.json").write_text(json.dumps({"rows": rows, "curve": curve, "epochs": a.epochs}))
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 3.5))
    for method in ("recurjac", "fastlip", "spectral"):
        ax.plot(curve["eps"], curve[method], marker="o", ms=3, label=method)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("eps (L-inf)")
    ax.set_ylabel("Lipschitz bound (L1 of the gradient, max over logits)")
    ax.legend()
    fig.tight_layout()
    fig.savefig(out / "lipschitz_curve.png", dpi=120)


if __name__ == "__main__":
    main()
