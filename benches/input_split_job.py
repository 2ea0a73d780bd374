"""One VNN-COMP acasxu instance through input-split branch and bound alone (issue #14 probe): every
conjunction of every disjunct, T seconds each, with the given branching; prints verdict, sub-boxes bounded,
batches, time, lower bound, boxes per second and the most open boxes.

    python benches/input_split_job.py ACASXU_run2a_2_2_batch_2000.onnx prop_1.vnnlib 20 pair [BATCH]

Needs ../shared/data/vnncomp2022/acasxu (not collected by pytest)."""
import pathlib
import sys
import time

import numpy as np
import torch

from fastcert.algorithms.input_bab import InputSplitOptions, input_bab
from fastcert.api import make_region
from fastcert.vnncomp.instance import load_instance

base = str(pathlib.Path(__file__).resolve().parents[2] / "shared/data/vnncomp2022/acasxu")
net, prop, T = sys.argv[1], sys.argv[2], float(sys.argv[3])
branching = sys.argv[4] if len(sys.argv) > 4 else "pair"
batch = int(sys.argv[5]) if len(sys.argv) > 5 else 1024
inst = load_instance(f"onnx/{net}", f"vnnlib/{prop}", base=base)
shape = tuple(inst.input_shape)
g = inst.net.graph_for(shape)
for di, p in enumerate(inst.spec):
    lo, hi = np.asarray(p.lo), np.asarray(p.hi)
    x0 = np.clip((lo + hi) / 2, lo, hi)
    prob = make_region(torch.from_numpy(x0).reshape(1, *shape), float(((hi - lo) / 2).max()) * (1 + 1e-9) + 1e-300,
                       "inf", torch.from_numpy(lo).reshape(shape), torch.from_numpy(hi).reshape(shape))
    for k, (A, b) in enumerate(p.constraints):
        r = input_bab(g, prob, torch.from_numpy(np.asarray(A, dtype=np.float64)),
                      torch.from_numpy(np.asarray(b, dtype=np.float64)), deadline=time.perf_counter() + T,
                      opts=InputSplitOptions(branching=branching, batch=batch))
        print(di, k, r.verdict, r.domains, r.batches, f"{r.time_s:.2f}s", "lower", r.lower,
              "boxes/s", round(r.domains_per_s), "max_open", r.max_open)
