"""How long the hand-written Caffe readers take on full-size files: every reference prototxt
built (no weights drawn), and a full VGG16 FCN-8s .caffemodel (134 M parameters, 538 MB)
written, read back, and read as a legacy torch .pth (when torch is installed to write one).

    python benchmarks/caffe_io.py [--tmp DIR]

Prints one line per measurement (seconds, wall clock, best of --repeat).
"""
import argparse
import glob
import os
import tempfile
import time

import numpy as np

from minifcn import models
from minifcn.caffe import read_net
from minifcn.caffe.caffemodel import read_weights, write_weights

HERE = os.path.dirname(os.path.abspath(__file__))
FIXTURES = os.path.join(HERE, "..", "tests", "fixtures", "caffe")


def best(fn, repeat):
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return min(times)


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--tmp", default=None, help="folder for the 538 MB files")
    p.add_argument("--repeat", type=int, default=3)
    a = p.parse_args()
    nets = sorted(f for f in glob.glob(os.path.join(FIXTURES, "*", "*.prototxt"))
                  if not f.endswith("solver.prototxt"))
    t = best(lambda: [read_net(f, materialize=False) for f in nets], a.repeat)
    print(f"read_net, all {len(nets)} reference prototxts, full size, no weights: {t:.2f} s "
          f"({1000 * t / len(nets):.0f} ms each)")
    net = models.fcn8s(21, loss=False, init="zeros")
    rng = np.random.default_rng(0)
    for v in net.params().values():
        v[...] = rng.standard_normal(v.shape, dtype=np.float32)
    with tempfile.TemporaryDirectory(dir=a.tmp) as tmp:
        path = os.path.join(tmp, "fcn8s.caffemodel")
        t = best(lambda: write_weights(net, path), a.repeat)
        size = os.path.getsize(path) / 2 ** 20
        print(f"write_weights, FCN-8s ({net.num_params() / 1e6:.1f} M parameters, {size:.0f} MB): "
              f"{t:.2f} s")
        target = models.fcn8s(21, loss=False, init="zeros")
        t = best(lambda: read_weights(target, path, strict=True), a.repeat)
        same = all(np.array_equal(target.params()[k], v) for k, v in net.params().items())
        print(f"read_weights, the same file into a fresh FCN-8s: {t:.2f} s (values equal: {same})")
        try:
            import torch
        except ImportError:
            print("legacy .pth: torch is not installed to write one (skipped)")
            return
        from minifcn.weights import load_weights
        pth = os.path.join(tmp, "fcn8s_from_caffe.pth")
        torch.save({k: torch.from_numpy(v) for k, v in net.params().items()}, pth,
                   _use_new_zipfile_serialization=False)
        t = best(lambda: load_weights(target, pth), a.repeat)
        print(f"load_weights, a legacy torch .pth of the same weights: {t:.2f} s")


if __name__ == "__main__":
    main()
