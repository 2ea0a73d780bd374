"""ERAN's MNIST models on the first N MNIST test images at the published eps, complete verification per image
under a time limit (issue #14 point 4): the VNN-COMP pipeline (:func:`fastcert.mip.solve_property` with
:class:`fastcert.vnncomp.VnnOptions`' stages: attack, alpha-CROWN, attack, activation-split BaB with the LP /
MIP beside it) on each correctly classified image; counts of images verified (unsat: no other class reaches
the label's logit), falsified (sat, a re-checked counterexample) and open, next to PRIMA's published counts
(on 1000 images).

    python benches/eran_bab.py [N] [SECONDS] [MODEL ...]

MODEL: 6x100 9x100 6x200 9x200 ConvSmall (default: all). Needs ../shared/data."""
import pathlib
import sys
import time

import numpy as np
import torch

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1] / "tests"))
import fastcert  # noqa: E402
from fastcert import mip  # noqa: E402
from fastcert.io.vnnlib import Property, Spec  # noqa: E402
from fastcert.training import margin_spec  # noqa: E402
from fastcert.vnncomp import VnnOptions  # noqa: E402
from eran_certify import MODELS  # noqa: E402
from shared_data import load_model, require_shared  # noqa: E402

N = int(sys.argv[1]) if len(sys.argv) > 1 else 100
T = float(sys.argv[2]) if len(sys.argv) > 2 else 10.0
WANT = set(sys.argv[3:])
d = require_shared("abcrown/datasets/eran/mnist_eran")
X = torch.from_numpy(np.load(d / "X_eran.npy")[:N]).double()
Y = torch.from_numpy(np.load(d / "y_eran.npy")[:N])
opts = VnnOptions().property_options()
print("| model | eps | images | correct | unsat (verified) | sat | open | time on all (s) | PRIMA, 1000 images |")
print("|---|--:|--:|--:|--:|--:|--:|--:|--:|")
for rel, name, eps, prima in MODELS:
    if WANT and name not in WANT:
        continue
    model = load_model(rel, torch.float64)
    shape = tuple(X.shape[1:])
    net = fastcert.Network.from_torch(model, shape)
    counts = {"unsat": 0, "sat": 0, "open": 0}
    correct = 0
    t0 = time.perf_counter()
    for i in range(N):
        x, y = X[i:i + 1], int(Y[i])
        with torch.no_grad():
            if int(model(x).argmax(1)) != y:
                continue
        correct += 1
        lo = torch.clamp(x[0] - eps, 0.0, 1.0).reshape(-1).numpy()
        hi = torch.clamp(x[0] + eps, 0.0, 1.0).reshape(-1).numpy()
        C = margin_spec(torch.tensor([y]), 10, torch.float64)[0].numpy()  # rows e_y - e_j (row y zero)
        # one conjunction per other class j: y_label - y_j <= 0 (class j reaches the label)
        cons = [(C[j:j + 1], np.zeros(1)) for j in range(10) if j != y]
        spec = Spec([Property(lo, hi, cons)], lo.size, 10)
        verdict, _, info = mip.solve_property(net, spec, T, options=opts)
        key = verdict if verdict in ("sat", "unsat") else "open"
        counts[key] += 1
        print(f"  {name} image {i}: {verdict} ({info.get('stage', '')}, {info.get('time_s', 0):.2f}s)",
              file=sys.stderr, flush=True)
    dt = time.perf_counter() - t0
    print(f"| {name} | {eps} | {N} | {correct} | {counts['unsat']} | {counts['sat']} | {counts['open']} | "
          f"{dt:.0f} | {prima} |", flush=True)
