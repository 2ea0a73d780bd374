"""One VNN-COMP mnist_fc job through branch and bound alone (issue #14 probe): the hardest conjunction of an
instance after alpha-CROWN, its BaB run for T seconds, the lower bound over time.

    python benches/bab_job.py mnist-net_256x4.onnx prop_5_0.05.vnnlib 30 none [REFINE_S]

(args: network, property, seconds, BabOptions.recompute "none" / "after", optional seconds of per-neuron LP
refinement of the root bounds before a second run). Needs ../shared/data/vnncomp2022/mnist_fc."""
import time, torch, numpy as np, sys
from fastcert.vnncomp.instance import load_instance
from fastcert.api import make_region
from fastcert.algorithms.bab import bab, BabOptions
from fastcert.mip.common import incomplete_bounds
from fastcert.options import BoundOptions, AlphaOptions
import pathlib
base = str(pathlib.Path(__file__).resolve().parents[2] / "shared/data/vnncomp2022/mnist_fc")
net, prop, T, rec = sys.argv[1], sys.argv[2], float(sys.argv[3]), sys.argv[4]
inst = load_instance(f"onnx/{net}", f"vnnlib/{prop}", base=base)
p = inst.spec[0]
lo, hi = np.asarray(p.lo), np.asarray(p.hi)
shape = tuple(inst.input_shape)
x0 = np.clip((lo+hi)/2, lo, hi)
prob = make_region(torch.from_numpy(x0).reshape(1,*shape), float(((hi-lo)/2).max())*(1+1e-9)+1e-300, "inf",
   torch.from_numpy(lo).reshape(shape), torch.from_numpy(hi).reshape(shape))
g = inst.net.graph_for(shape)
rows = np.concatenate([np.asarray(A) for A, b in p.constraints])
aopts = BoundOptions(alpha=AlphaOptions(iterations=20, candidates=1, max_bytes=16 << 20))
lb, ub, pre = incomplete_bounds(inst.net, shape, prob, torch.from_numpy(rows).unsqueeze(0), "alpha-crown", aopts)
known = {v: (torch.from_numpy(l), torch.from_numpy(u)) for v, (l, u) in pre.items()}
k = int(np.argmin(lb[0].numpy() - np.array([b[0] for A,b in p.constraints])))
A, b = p.constraints[k]
print("job", k, "alpha lb - b", float(lb[0][k]) - b[0])
t = time.time()
r = bab(g, prob, torch.from_numpy(np.asarray(A, dtype=np.float64)), torch.from_numpy(np.asarray(b, dtype=np.float64)),
        deadline=time.perf_counter()+T, known=known, opts=BabOptions(recompute=rec))
print(r.verdict, r.domains, r.batches, f"{r.time_s:.1f}s", "lower", r.lower, "dps", r.domains_per_s, "cert", r.certify_s)
for e in r.log[::max(1, len(r.log)//8)]: print(e)
if len(sys.argv) > 5:
    from fastcert.mip.lp_refine import refine_bounds
    t = time.time()
    pre2, info = refine_bounds(g, {i: (v[0][0].copy(), v[1][0].copy()) for i, v in pre.items()}, lo, hi, time_budget=float(sys.argv[5]))
    print("refine", time.time() - t, info)
    known = {v: (torch.from_numpy(l).reshape(1, -1), torch.from_numpy(u).reshape(1, -1)) for v, (l, u) in pre2.items()}
    r = bab(g, prob, torch.from_numpy(np.asarray(A, dtype=np.float64)), torch.from_numpy(np.asarray(b, dtype=np.float64)),
        deadline=time.perf_counter()+T, known=known, opts=BabOptions(recompute=rec))
    print(r.verdict, r.domains, r.batches, f"{r.time_s:.1f}s", "lower", r.lower, "dps", r.domains_per_s, "cert", r.certify_s)
