"""Per-layer milliseconds of FCN-8s forward and backward on the cuda device (like `caffe time`),
the device synchronised after every layer so each layer is charged its own kernels.

    python benchmarks/gpu_layers.py [--size 500] [--repeat 3] [--tiny]

--tiny: FCN-8s "micro" at 12x12 in Numba's CUDA simulator (to keep the script working).
"""
import argparse
import os
import statistics
import sys
import time

import numpy as np


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", type=int, default=500)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--tiny", action="store_true")
    args = ap.parse_args(argv)
    if args.tiny:
        os.environ.setdefault("NUMBA_ENABLE_CUDASIM", "1")
        args.size, args.repeat = 12, 1
    from minifcn import models
    from minifcn.kernels import cuda as K
    net = (models.fcn8s_micro if args.tiny else models.fcn8s)(21, score_init=1e-3).to("cuda")
    rng = np.random.default_rng(0)
    x = K.to_device((50 * rng.standard_normal((1, 3, args.size, args.size))).astype(np.float32))
    lab = K.to_device(rng.integers(0, 21, (1, args.size, args.size)).astype(np.int32))
    times = {}                                    # (layer, "fwd"/"bwd") -> [seconds]

    def timed(name, kind, fn):
        def run(*a, **kw):
            K.cuda.synchronize()
            t = time.perf_counter()
            out = fn(*a, **kw)
            K.cuda.synchronize()
            times.setdefault((name, kind), []).append(time.perf_counter() - t)
            return out
        return run
    for name, layer in net.layers.items():
        layer.forward = timed(name, "fwd", layer.forward)
        layer.backward = timed(name, "bwd", layer.backward)
    net.eval()
    for i in range(args.repeat + 1):              # the first pass compiles: not counted
        if i == 1:
            times.clear()
        net.forward(data=x, label=lab)
        net.backward(input_grads=False)
    rows = sorted(((statistics.median(v) * 1e3, n, k) for (n, k), v in times.items()),
                  reverse=True)
    for kind in ("fwd", "bwd"):
        total = sum(ms for ms, _, k in rows if k == kind)
        print(f"{kind}: {total:.2f} ms in all (per-layer medians, synchronised)")
        for ms, name, k in [r for r in rows if r[2] == kind][:12]:
            layer = net.layers[name]
            print(f"  {name:14s} {type(layer).__name__:12s} {ms:8.2f} ms {100 * ms / total:5.1f}%")
    return 0


if __name__ == "__main__":
    sys.exit(main())
