"""fcn8s_tiny training steps (batch 8, 64x64) under three thread rules of kernels/cpu/threads.py,
alternating in one process (6 rounds x 3 steps each): best and median.
  all threads: SMALL_FLOPS=0, every op on every thread (Numba's and OpenBLAS's);
  one thread below 250 MFLOP: TINY_FLOPS=SMALL_FLOPS, the rule before 2026-12-04;
  now: one thread below 20 MFLOP, cut GEMMs (threads.matmul) from 20 to 250 MFLOP.
    python benchmarks/tiny_threads.py
Figures: benchmarks/RESULTS.md, "Issue 13"."""
import time

import numpy as np

from minifcn import models
from minifcn.bench.nets import train_step
from minifcn.kernels.cpu import threads
from minifcn.train import SGD

net = models.fcn8s_tiny(5, seed=0).to("cpu")
solver = SGD(net, lr=1e-3, momentum=0.9)
rng = np.random.default_rng(0)
x = rng.standard_normal((8, 3, 64, 64)).astype(np.float32)
lab = rng.integers(0, 5, (8, 64, 64)).astype(np.int32)
small, tiny = threads.SMALL_FLOPS, threads.TINY_FLOPS
rules = {"all threads": (0, tiny), "one thread below 250 MFLOP": (small, small),
         "now": (small, tiny)}
for _ in range(3):
    train_step(net, solver, x, lab)
res = {name: [] for name in rules}
for r in range(6):
    for name, (threads.SMALL_FLOPS, threads.TINY_FLOPS) in rules.items():
        for _ in range(3):
            t = time.perf_counter()
            train_step(net, solver, x, lab)
            res[name].append(time.perf_counter() - t)
for name, v in res.items():
    v.sort()
    print(f"{name}: best {v[0]*1e3:.1f} ms, median {v[len(v)//2]*1e3:.1f} ms over {len(v)} steps")
