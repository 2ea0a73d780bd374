"""ERAN's MNIST models (``../shared/data/abcrown/models/eran``) on the first N MNIST test images at the published
eps (issue #14 point 4): images classified correctly, certified by CROWN and by alpha-CROWN, with the time per
image, next to PRIMA's published counts (``eran/published_results.md``).

    python benches/eran_certify.py [N] [BATCH]

Needs ../shared/data (skips nothing: it is a script, not a test). The images are the ERAN set
(``abcrown/datasets/eran/mnist_eran``, the first 1000 MNIST test images); pixels in [0, 1], the ball clipped to
[0, 1]; ConvSmall normalises inside the model (eps in pixel space)."""
import pathlib
import sys
import time

import numpy as np
import torch

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1] / "tests"))
import fastcert  # noqa: E402
from shared_data import load_model, require_shared  # noqa: E402

MODELS = [("abcrown/models/eran/mnist_6_100_nat.pth", "6x100", 0.026, 510),
          ("abcrown/models/eran/mnist_9_100_nat.pth", "9x100", 0.026, 428),
          ("abcrown/models/eran/mnist_6_200_nat.pth", "6x200", 0.015, 690),
          ("abcrown/models/eran/mnist_9_200_nat.pth", "9x200", 0.015, 624),
          ("abcrown/models/eran/mnist_conv_small_nat.pth", "ConvSmall", 0.12, 598)]


def main() -> None:
    N = int(sys.argv[1]) if len(sys.argv) > 1 else 1000
    BATCH = int(sys.argv[2]) if len(sys.argv) > 2 else 50
    d = require_shared("abcrown/datasets/eran/mnist_eran")
    X = torch.from_numpy(np.load(d / "X_eran.npy")[:N]).double()
    Y = torch.from_numpy(np.load(d / "y_eran.npy")[:N])
    print("| model | eps | correct | CROWN | alpha-CROWN | CROWN s/image | alpha-CROWN s/image | PRIMA (published) |")
    print("|---|--:|--:|--:|--:|--:|--:|--:|")
    for rel, name, eps, prima in MODELS:
        model = load_model(rel, torch.float64)
        row = {}
        for method in ("crown", "alpha-crown"):
            cert = correct = 0
            t0 = time.perf_counter()
            for a in range(0, N, BATCH):
                r = fastcert.certify(model, X[a:a + BATCH], eps, labels=Y[a:a + BATCH], method=method, x_min=0.0,
                                     x_max=1.0)
                cert += int(r.certified.sum())
                with torch.no_grad():
                    correct += int((model(X[a:a + BATCH]).argmax(1) == Y[a:a + BATCH]).sum())
            row[method] = (cert, (time.perf_counter() - t0) / N)
        print(f"| {name} | {eps} | {correct} | {row['crown'][0]} | {row['alpha-crown'][0]} | {row['crown'][1]:.4f} | "
              f"{row['alpha-crown'][1]:.4f} | {prima} |", flush=True)


if __name__ == "__main__":
    main()
