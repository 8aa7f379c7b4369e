"""fcn8s_tiny training steps (batch 8, 64x64) with the one-thread rule of kernels/cpu/threads.py off
(SMALL_FLOPS=0) and on, alternating in one process (6 rounds x 3 steps each): best and median.
    python benchmarks/tiny_threads.py
Figures: benchmarks/RESULTS.md, "Issue 13"."""
import time, numpy as np
from minifcn import models
from minifcn.train import SGD
from minifcn.bench.nets import train_step
from minifcn.kernels.cpu import threads
net = models.fcn8s_tiny(5, seed=0).to("cpu"); solver = SGD(net, lr=1e-3, momentum=0.9)
rng = np.random.default_rng(0)
x = rng.standard_normal((8,3,64,64)).astype(np.float32); lab = rng.integers(0,5,(8,64,64)).astype(np.int32)
for _ in range(3): train_step(net, solver, x, lab)
res = {0: [], 2.5e8: []}
for r in range(6):
    for th in res:
        threads.SMALL_FLOPS = th
        for _ in range(3):
            t = time.perf_counter(); train_step(net, solver, x, lab); res[th].append(time.perf_counter() - t)
for th, v in res.items():
    v.sort(); print(f"SMALL_FLOPS={th:g}: best {v[0]*1e3:.0f} ms, median {v[len(v)//2]*1e3:.0f} ms over {len(v)} steps")
