"""Is a VOC-sized run input-bound? The Loader decoding synthetic VOC JPEGs (minifcn.datasets /
data.write_voc layout) with workers=0 and 2, alone and under a fcn8s_tiny training step.
    python benchmarks/loader_workers.py [DIR]      (DIR: where the JPEGs go; default a temp dir)
Figures: benchmarks/RESULTS.md, "Issue 13"."""
import time, sys, numpy as np, tempfile, os
from minifcn.data import SyntheticShapes, write_voc, VOCSegmentation, Loader
from minifcn import models
from minifcn.train import SGD
root = sys.argv[1] if len(sys.argv) > 1 else tempfile.mkdtemp()
if not os.path.exists(root + "/ImageSets"):
    write_voc(SyntheticShapes(40, seed=0, size=(375, 500)), root, "train")
ds = VOCSegmentation(root, "train")
print(ds, "first image", ds[0][0].shape)
for workers in (0, 2):
    best = 1e9
    for r in range(3):
        L = Loader(ds, batch_size=1, seed=0, workers=workers)
        t = time.perf_counter()
        for b in L: pass
        best = min(best, time.perf_counter() - t); L.close()
    print(f"loader alone workers={workers}: {len(ds)/best:.1f} images/s ({best/len(ds)*1e3:.1f} ms/image), best of 3")
net = models.fcn8s_tiny(21, seed=0).to("cpu"); solver = SGD(net, lr=1e-3, momentum=0.9)
for workers in (0, 2):
    L = Loader(ds, batch_size=1, seed=0, workers=workers); it = L.forever()
    x, y = next(it); net.forward(data=x, label=y); net.backward(input_grads=False); solver.step()
    t = time.perf_counter(); tl = 0
    for i in range(20):
        t0 = time.perf_counter(); x, y = next(it); tl += time.perf_counter() - t0
        net.forward(data=x, label=y); net.backward(input_grads=False); solver.step()
    dt = time.perf_counter() - t; L.close()
    print(f"fcn8s_tiny training at 375x500, batch 1, workers={workers}: {dt/20*1e3:.0f} ms/step, waiting for data {tl/20*1e3:.1f} ms/step")
