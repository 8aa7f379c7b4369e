"""Check every CUDA kernel against the CPU path on realistic shapes, and time it.

    python benchmarks/gpu_check.py [--out gpu.json] [--repeat 5]     # a real GPU, < 5 minutes
    python benchmarks/gpu_check.py --tiny [--out tiny.json]          # tiny shapes, simulator
    python benchmarks/gpu_check.py --sections gemm fcn8s             # some sections only

Each row: the CUDA time (inputs already on the device, synchronised, median of --repeat after
one warm-up call that also JIT-compiles), the same op on the comparison device ("cpu": Numba,
or the numpy reference under --tiny), the speed-up, GFLOP/s where the flops are known, and
the largest error relative to the output's largest magnitude. Sections: the GEMM against
cuBLAS (through CuPy or PyTorch when importable) and numpy; VGG16's convolutions forward and
backward at 224x224 and FCN's padded conv1_2 at 500x500; pools; FCN's upsamplings (k64/s32,
k4/s2); pointwise ops, LRN, the loss and the solver/score updates at FCN sizes; FCN-8s whole.
--tiny runs the same code on shapes small enough for Numba's CUDA simulator (it sets
NUMBA_ENABLE_CUDASIM=1 unless the variable is already set).
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import statistics
import sys
import time

import numpy as np

TOL = {np.float32: 1e-4, np.float64: 1e-10}     # max |cuda - ref| / max |ref| per output


def parse(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tiny", action="store_true",
                    help="tiny shapes, run in Numba's CUDA simulator (no GPU needed)")
    ap.add_argument("--out", help="write the rows and the machine to this JSON file")
    ap.add_argument("--repeat", type=int, default=None, help="timed calls per op (median)")
    ap.add_argument("--ref", choices=["cpu", "numpy"], default=None,
                    help="device to compare with (default: cpu, or numpy under --tiny)")
    ap.add_argument("--sections", nargs="+", choices=list(SECTIONS), default=list(SECTIONS),
                    help="what to check and time (default: all, in this order)")
    args = ap.parse_args(argv)
    if args.repeat is None:
        args.repeat = 1 if args.tiny else 5
    if args.ref is None:
        args.ref = "numpy" if args.tiny else "cpu"
    return args


class Config:
    """Shapes for the real run and for --tiny (everything scaled down for the simulator)."""

    def __init__(self, tiny):
        self.tiny = tiny
        self.gemm = (33, 17, 9) if tiny else (4096, 4096, 4096)
        self.size = 16 if tiny else 224                 # VGG layers' input size
        self.div = 16 if tiny else 1                    # channel divisor
        self.vgg = ["conv1_1", "conv3_1", "conv5_3"] if tiny else None   # None: all 13
        self.fcn_size = 12 if tiny else 500             # FCN's padded input: conv1 at +2*pad
        self.fcn_pad = 2 if tiny else 100
        self.classes = 3 if tiny else 21
        self.score = 3 if tiny else 22                  # score_fr size at a 500x500 input
        self.up = (8, 4) if tiny else (64, 32)          # FCN-32s's final upsampling (k, s)


# ----------------------------------------------------------------------------- harness
def main(argv=None):
    args = parse(argv)
    if args.tiny:
        os.environ.setdefault("NUMBA_ENABLE_CUDASIM", "1")
    try:
        from minifcn.kernels import cuda as K
    except ImportError as e:
        sys.exit(f"gpu_check: the CUDA kernels cannot run here: {e}")
    from minifcn import kernels

    cfg = Config(args.tiny)
    bench = Bench(K, kernels, args.ref, args.repeat)
    t0 = time.perf_counter()
    for name in args.sections:
        SECTIONS[name](bench, cfg)
    elapsed = time.perf_counter() - t0
    print()
    print(machine_line(bench.machine))
    print(table(bench.rows))
    bad = [r["op"] for r in bench.rows if r.get("ok") is False]
    print(f"\n{len(bench.rows)} rows in {elapsed:.0f} s; "
          + (f"MISMATCH in: {', '.join(bad)}" if bad else "every checked output matches"))
    if args.out:
        payload = {"machine": bench.machine, "command": " ".join(sys.argv), "rows": bench.rows,
                   "seconds": elapsed}
        from minifcn.files import atomic_write_text
        atomic_write_text(args.out, json.dumps(payload, indent=1, default=str))
        print(f"wrote {args.out}")
    return 1 if bad else 0


class Bench:
    def __init__(self, K, kernels, ref, repeat):
        self.K, self.kernels, self.ref, self.repeat = K, kernels, ref, repeat
        self.rng = np.random.default_rng(0)
        self.rows = []
        self.machine = machine_info(K)

    def sync(self):
        self.K.cuda.synchronize()

    def time(self, fn, repeat):
        """Median seconds of fn() after one untimed call; the device is synchronised."""
        fn()
        self.sync()
        times = []
        for _ in range(repeat):
            t = time.perf_counter()
            fn()
            self.sync()
            times.append(time.perf_counter() - t)
        return statistics.median(times)

    def ref_op(self, op):
        return self.kernels.get(op, self.ref)

    def randn(self, *shape, scale=1.0, dtype=np.float32):
        return (scale * self.rng.standard_normal(shape)).astype(dtype)

    def case(self, section, op, shape, cuda_fn, ref_fn, flops=None, ref_name=None,
             compare=True, ref_repeat=1):
        """Run cuda_fn (device outputs) and ref_fn (host outputs), compare them, time both."""
        print(f"  {section:9s} {op:28s} {shape}", flush=True)
        row = {"section": section, "op": op, "shape": shape}
        try:
            got = _outputs(cuda_fn(), self.K)
            self.sync()
            ms = self.time(cuda_fn, self.repeat) * 1e3
            row["cuda_ms"] = ms
            if flops:
                row["gflops"] = flops / ms / 1e6
            if ref_fn is not None:
                want = _outputs(ref_fn(), self.K)
                row["vs"] = ref_name or self.ref
                row["ref_ms"] = self.time(ref_fn, ref_repeat) * 1e3 if ref_repeat else None
                if row["ref_ms"]:
                    row["speedup"] = row["ref_ms"] / ms
                if compare:
                    row["max_rel_err"], row["ok"] = _compare(got, want)
        except Exception as e:                              # report, keep going
            row["ok"] = False
            row["error"] = f"{type(e).__name__}: {e}"
            print(f"    ERROR {row['error']}")
        self.rows.append(row)
        if "cuda_ms" in row:         # each figure as it comes: a run cut short still tells
            print("    " + " | ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}"
                                      for k, v in row.items()
                                      if k in ("cuda_ms", "ref_ms", "gflops", "max_rel_err",
                                               "ok")), flush=True)
        return row


def _outputs(out, K):
    """A tuple of host arrays from an op's result (arrays, tuples, floats; None dropped)."""
    if not isinstance(out, (tuple, list)):
        out = (out,)
    return [np.asarray(K.to_host(o)) for o in out if o is not None]


def _compare(got, want):
    """(largest relative error, ok): float outputs within TOL of the op's precision (float32
    if any output is), integer outputs (argmax, counts) exactly."""
    if len(got) != len(want):
        return float("inf"), False
    tol = TOL[np.float32] if any(g.dtype == np.float32 for g in got) else TOL[np.float64]
    errs = [_rel_err(g, w) for g, w in zip(got, want)]
    ok = all(e <= (tol if g.dtype.kind == "f" else 0) for g, e in zip(got, errs))
    return max(errs), ok


def _rel_err(got, want):
    got, want = np.asarray(got, np.float64), np.asarray(want, np.float64)
    if got.shape != want.shape:
        return float("inf")
    scale = max(np.abs(want).max(initial=0.0), 1e-30)
    return float(np.abs(got - want).max(initial=0.0) / scale)


# ----------------------------------------------------------------------------- sections
def gemm_section(b, cfg):
    """The tiled GEMM on its own: C = A @ B (and the transposed forms backward uses), against
    cuBLAS (fp32, TF32 off) through CuPy or PyTorch when one of them is importable."""
    M, N, Kd = cfg.gemm
    a, bb = b.randn(M, Kd), b.randn(Kd, N)
    da, db = b.K.to_device(a), b.K.to_device(bb)
    dc = b.K.to_device(np.zeros((M, N), np.float32))
    flops = 2.0 * M * N * Kd
    shape = f"{M}x{N}x{Kd}"
    blas, blas_name = cublas_matmul(da, db)
    if blas is None:
        ref, ref_name = (lambda: a @ bb), "numpy"
    else:
        ref, ref_name = blas, blas_name
    import importlib        # the module: on the package, the name gemm is the function
    cuda_gemm = importlib.import_module("minifcn.kernels.cuda.gemm")
    for tm in (cuda_gemm.TM_SMALL, cuda_gemm.TM_LARGE):     # each micro-tile, then the choice
        cuda_gemm.FORCE_TM = tm
        bm = cuda_gemm.TPB * tm
        try:
            b.case("gemm", f"gemm A@B {tm}x{tm}/thread {bm}x{bm}/block", shape,
                   lambda: b.K.gemm(da, db, dc), ref, flops, ref_name, ref_repeat=b.repeat)
        finally:
            cuda_gemm.FORCE_TM = None
    dat, dbt = b.K.to_device(np.ascontiguousarray(a.T)), b.K.to_device(np.ascontiguousarray(bb.T))
    b.case("gemm", "gemm A^T@B", shape, lambda: b.K.gemm(dat, db, dc, trans_a=True),
           lambda: a @ bb, flops, "numpy", ref_repeat=0)
    b.case("gemm", "gemm A@B^T", shape, lambda: b.K.gemm(da, dbt, dc, trans_b=True),
           lambda: a @ bb, flops, "numpy", ref_repeat=0)


def cublas_matmul(da, db):
    """(fn, name) multiplying the two device arrays with cuBLAS, or (None, None)."""
    try:
        import cupy
        ca, cb = cupy.asarray(da), cupy.asarray(db)
        return (lambda: cupy.matmul(ca, cb)), "cuBLAS (cupy)"
    except Exception:
        pass
    try:
        import torch
        torch.backends.cuda.matmul.allow_tf32 = False        # compare fp32 with fp32
        ta, tb = torch.as_tensor(da, device="cuda"), torch.as_tensor(db, device="cuda")
        return (lambda: torch.matmul(ta, tb)), "cuBLAS (torch)"
    except Exception:
        return None, None


VGG16_CONVS = [("conv1_1", 3, 64, 1), ("conv1_2", 64, 64, 1), ("conv2_1", 64, 128, 2),
               ("conv2_2", 128, 128, 2), ("conv3_1", 128, 256, 4), ("conv3_2", 256, 256, 4),
               ("conv3_3", 256, 256, 4), ("conv4_1", 256, 512, 8), ("conv4_2", 512, 512, 8),
               ("conv4_3", 512, 512, 8), ("conv5_1", 512, 512, 16), ("conv5_2", 512, 512, 16),
               ("conv5_3", 512, 512, 16)]


def _ch(c, cfg):
    return c if c == 3 else max(2, c // cfg.div)


def conv_case(b, name, x, w, bias, stride, pad, dilation=(1, 1), groups=1):
    """Forward and backward of one convolution (device inputs uploaded once)."""
    K = b.K
    dx_, dw_, db_ = K.to_device(x), K.to_device(w), K.to_device(bias)
    geo = (stride, pad, dilation, groups)
    y = K.conv2d(dx_, dw_, db_, *geo)
    dout = b.randn(*y.shape)
    dd = K.to_device(dout)
    N, C, H, W = x.shape
    F, _, kh, kw = w.shape
    flops = 2.0 * N * F * y.shape[2] * y.shape[3] * (C // groups) * kh * kw
    shape = f"{N}x{C}x{H}x{W} -> {F}, k{kh} s{stride[0]} p{pad[0]}"
    b.case("conv", f"{name} fwd", shape, lambda: K.conv2d(dx_, dw_, db_, *geo),
           lambda: b.ref_op("conv2d")(x, w, bias, *geo), flops)
    b.case("conv", f"{name} bwd", shape, lambda: K.conv2d_backward(dd, dx_, dw_, *geo),
           lambda: b.ref_op("conv2d_backward")(dout, x, w, *geo), 2 * flops)


def conv_section(b, cfg):
    for name, cin, cout, down in VGG16_CONVS:
        if cfg.vgg is not None and name not in cfg.vgg:
            continue
        h = -(-cfg.size // down)
        cin, cout = _ch(cin, cfg), _ch(cout, cfg)
        conv_case(b, name, b.randn(1, cin, h, h), b.randn(cout, cin, 3, 3, scale=0.05),
                  b.randn(cout), (1, 1), (1, 1))
    # FCN's conv1_2: the 500x500 input padded by 100 makes a 698x698 map, whose column
    # matrix (1.1 GB) is built a tile of rows at a time.
    s = cfg.fcn_size + 2 * cfg.fcn_pad - 2
    c = _ch(64, cfg)
    conv_case(b, "fcn conv1_2", b.randn(1, c, s, s), b.randn(c, c, 3, 3, scale=0.05),
              b.randn(c), (1, 1), (1, 1))
    # AlexNet's grouped, strided layers (FCN-AlexNet): groups=2, stride 4 with k11.
    s = 67 if not cfg.tiny else 11
    conv_case(b, "alexnet conv1", b.randn(1, 3, s, s), b.randn(_ch(96, cfg), 3, 11, 11, scale=0.05),
              b.randn(_ch(96, cfg)), (4, 4), (0, 0))
    s = 27 if not cfg.tiny else 5
    conv_case(b, "alexnet conv2 g2", b.randn(1, _ch(96, cfg), s, s),
              b.randn(_ch(256, cfg), _ch(96, cfg) // 2, 5, 5, scale=0.05), b.randn(_ch(256, cfg)),
              (1, 1), (2, 2), groups=2)


def pool_section(b, cfg):
    K = b.K
    for name, c, down in [("pool1", 64, 1), ("pool3", 256, 4), ("pool5", 512, 16)]:
        h = -(-cfg.size // down)
        x = b.randn(1, _ch(c, cfg), h, h)
        dx = K.to_device(x)
        geo = ((2, 2), (2, 2), (0, 0), True)
        y, arg = K.max_pool2d(dx, *geo)
        _, ref_arg = b.ref_op("max_pool2d")(x, *geo)
        dout = b.randn(*y.shape)
        dd = K.to_device(dout)
        shape = f"1x{x.shape[1]}x{h}x{h}"
        b.case("pool", f"max {name} fwd", shape, lambda: K.max_pool2d(dx, *geo),
               lambda: b.ref_op("max_pool2d")(x, *geo))
        b.case("pool", f"max {name} bwd", shape, lambda: K.max_pool2d_backward(dd, arg, x.shape),
               lambda: b.ref_op("max_pool2d_backward")(dout, ref_arg, x.shape))
        b.case("pool", f"avg {name} fwd", shape, lambda: K.avg_pool2d(dx, *geo),
               lambda: b.ref_op("avg_pool2d")(x, *geo))
        b.case("pool", f"avg {name} bwd", shape,
               lambda: K.avg_pool2d_backward(dd, x.shape, *geo),
               lambda: b.ref_op("avg_pool2d_backward")(dout, x.shape, *geo))
    # AlexNet's overlapping 3x3/s2 windows (atomics collide in the max backward).
    h = 55 if not cfg.tiny else 9
    x = b.randn(1, _ch(96, cfg), h, h)
    dx = K.to_device(x)
    geo = ((3, 3), (2, 2), (0, 0), True)
    y, arg = K.max_pool2d(dx, *geo)
    _, ref_arg = b.ref_op("max_pool2d")(x, *geo)
    dout = b.randn(*y.shape)
    dd = K.to_device(dout)
    b.case("pool", "max 3x3/s2 bwd", f"1x{x.shape[1]}x{h}x{h}",
           lambda: K.max_pool2d_backward(dd, arg, x.shape),
           lambda: b.ref_op("max_pool2d_backward")(dout, ref_arg, x.shape))


def upsample_section(b, cfg):
    """FCN's transposed convolutions: the final k64/s32 of FCN-32s on a 22x22 score map and
    the k4/s2 'upscore2' of FCN-16s/8s (bilinear weights: what the nets really use)."""
    K = b.K
    n = cfg.classes
    for name, (k, s), hin in [("upscore k%d/s%d" % cfg.up, cfg.up, cfg.score),
                              ("upscore2 k4/s2", (4, 2), cfg.score)]:
        x = b.randn(1, n, hin, hin)
        w = np.zeros((n, n, k, k), np.float32)
        f = np.array([1 - abs(i / (k / 2) - (k - 1) / k) for i in range(k)], np.float32)
        w[range(n), range(n)] = f[:, None] * f[None, :]        # bilinear, channel by channel
        w += b.randn(n, n, k, k, scale=0.01)                   # and every tap in use
        dx, dw = K.to_device(x), K.to_device(w)
        y = K.conv_transpose2d(dx, dw, None, (s, s), (0, 0))
        dout = b.randn(*y.shape)
        dd = K.to_device(dout)
        flops = 2.0 * n * n * k * k * hin * hin
        shape = f"1x{n}x{hin}x{hin} -> {y.shape[2]}x{y.shape[3]}"
        b.case("upsample", f"{name} fwd", shape,
               lambda: K.conv_transpose2d(dx, dw, None, (s, s), (0, 0)),
               lambda: b.ref_op("conv_transpose2d")(x, w, None, (s, s), (0, 0)), flops)
        b.case("upsample", f"{name} bwd", shape,
               lambda: K.conv_transpose2d_backward(dd, dx, dw, (s, s), (0, 0)),
               lambda: b.ref_op("conv_transpose2d_backward")(dout, x, w, (s, s), (0, 0)),
               2 * flops)


def pointwise_section(b, cfg):
    """The memory-bound ops at the sizes FCN meets (conv1 map at 500x500, fc7, the loss)."""
    K = b.K
    s = cfg.fcn_size + 2 * cfg.fcn_pad - 2
    x = b.randn(1, _ch(64, cfg), s, s)
    dout = b.randn(*x.shape)
    dx, dd = K.to_device(x), K.to_device(dout)
    shape = "x".join(map(str, x.shape))
    b.case("pointwise", "relu fwd", shape, lambda: K.relu(dx, 0.0),
           lambda: b.ref_op("relu")(x, 0.0))
    b.case("pointwise", "relu bwd", shape, lambda: K.relu_backward(dd, dx, 0.0),
           lambda: b.ref_op("relu_backward")(dout, x, 0.0))
    b.case("pointwise", "eltwise_sum 2", shape, lambda: K.eltwise_sum([dx, dd], [1.0, 0.5]),
           lambda: b.ref_op("eltwise_sum")([x, dout], [1.0, 0.5]))
    b.case("pointwise", "scale", shape, lambda: K.scale(dx, 0.01),
           lambda: b.ref_op("scale")(x, 0.01))
    off = cfg.fcn_pad // 5
    like = (1, 1, s - 2 * off, s - 2 * off)
    b.case("pointwise", "crop", shape, lambda: K.crop(dx, like, (off, off)),
           lambda: b.ref_op("crop")(x, like, (off, off)))
    small = K.crop(dx, like, (off, off))
    small_h = K.to_host(small)
    b.case("pointwise", "crop bwd", shape, lambda: K.crop_backward(small, x.shape, (off, off)),
           lambda: b.ref_op("crop_backward")(small_h, x.shape, (off, off)))
    # Dropout on fc7 (4096 x 16x16 at 500x500): the mask differs from the CPU's by design,
    # so its keep rate is checked instead of the values.
    f = b.randn(1, max(8, 4096 // cfg.div), cfg.score, cfg.score)
    dfc = K.to_device(f)
    row = b.case("pointwise", "dropout p=0.5", "x".join(map(str, f.shape)),
                 lambda: K.dropout(dfc, 0.5, np.random.default_rng(0), True), None)
    mask = K.to_host(K.dropout(dfc, 0.5, np.random.default_rng(0), True)[1])
    kept = float((mask != 0).mean())
    row.update(vs="keep rate", max_rel_err=abs(kept - 0.5),
               ok=abs(kept - 0.5) < 5 * np.sqrt(0.25 / mask.size))
    # LRN at AlexNet's norm1 size.
    h = 55 if not cfg.tiny else 7
    x2 = b.randn(1, _ch(96, cfg), h, h)
    do2 = b.randn(*x2.shape)
    dx2, dd2 = K.to_device(x2), K.to_device(do2)
    lrn = (5, 1e-4, 0.75, 1.0)
    shape2 = "x".join(map(str, x2.shape))
    b.case("pointwise", "lrn fwd", shape2, lambda: K.lrn(dx2, *lrn),
           lambda: b.ref_op("lrn")(x2, *lrn))
    b.case("pointwise", "lrn bwd", shape2, lambda: K.lrn_backward(dd2, dx2, *lrn),
           lambda: b.ref_op("lrn_backward")(do2, x2, *lrn))
    # The loss on a full-size score map, with VOC's void label.
    n = cfg.classes
    sc = b.randn(1, n, cfg.fcn_size, cfg.fcn_size, scale=3.0)
    lab = b.rng.integers(0, n, (1, cfg.fcn_size, cfg.fcn_size)).astype(np.int32)
    lab[:, ::7] = 255
    dsc, dlab = K.to_device(sc), K.to_device(lab)
    b.case("loss", "softmax_cross_entropy", "x".join(map(str, sc.shape)),
           lambda: K.softmax_cross_entropy(dsc, dlab, 255, "valid", None),
           lambda: b.ref_op("softmax_cross_entropy")(sc, lab, 255, "valid", None))
    pred = b.rng.integers(0, n, lab.shape).astype(np.int64)
    hist = K.to_device(np.zeros((n, n), np.int64))
    dpred = K.to_device(pred)
    ok = (lab >= 0) & (lab < n)
    want = np.bincount(n * lab[ok] + pred[ok], minlength=n * n).reshape(n, n)
    row = b.case("score", "confusion_update", "x".join(map(str, lab.shape)),
                 lambda: K.confusion_update(K.fill(hist, 0), dlab, dpred, n),
                 lambda: want, ref_name="np.bincount", ref_repeat=0)
    # SGD on fc6-sized parameters (25M of its 103M).
    m = 1 << 10 if cfg.tiny else 25 << 20
    p, g, v = b.randn(m), b.randn(m), b.randn(m)
    dp, dg, dv = K.to_device(p), K.to_device(g), K.to_device(v)
    b.case("solver", "sgd_update", str(m), lambda: K.sgd_update(dp, dg, dv, 1e-10, 0.9, 5e-4),
           None)
    want_v = 0.9 * v + 1e-10 * (g + 5e-4 * p)
    dp2, dv2 = K.to_device(p), K.to_device(v)
    K.sgd_update(dp2, dg, dv2, 1e-10, 0.9, 5e-4)
    err = _rel_err(K.to_host(dv2), want_v)
    b.rows[-1].update(vs="numpy", max_rel_err=err, ok=err < 1e-5)


# ----------------------------------------------------------------------------- FCN-8s
FCN_GRADS = ("conv1_1.weight", "fc6.weight", "score_fr.weight", "score_pool3.weight")


def fcn8s_section(b, cfg):
    """FCN-8s (VGG16, 21 classes) at 500x500, the whole net on the device: inference with the
    image already there (what the paper times: about 175 ms on a K40c), forward+backward, and
    a whole SGD step (forward, backward, update), in float32. Inference is checked against the
    same net on the comparison device (the scores). The gradients are checked in float64 (the
    loss and four layers' weight gradients), dropout off: in float32 the two devices' sums
    round differently, a max-pool then and again picks the other of two near-equal inputs, and
    the gradient goes elsewhere (seen: 2e-3 of the largest conv1_1 gradient on an H200). The
    score layers get small random weights: zeros, as a net starts training, would compare
    nothing. Under --tiny the same code runs FCN-8s on the "micro" backbone."""
    from minifcn import models
    from minifcn.train import make_solver
    K, size, n = b.K, cfg.fcn_size, cfg.classes
    name = "FCN-8s micro" if cfg.tiny else "FCN-8s"
    x = b.randn(1, 3, size, size, scale=50.0)            # mean-subtracted pixels' scale
    lab = b.rng.integers(0, n, (1, size, size)).astype(np.int32)
    lab[:, ::7] = 255
    dlab = K.to_device(lab)
    shape = f"1x3x{size}x{size}"

    def pair(dtype):
        """The net on the comparison device and a copy of it on cuda, in eval mode."""
        build = models.fcn8s_micro if cfg.tiny else models.fcn8s
        ref = build(n, loss=True, score_init=1e-3, seed=0, dtype=dtype).to(b.ref).eval()
        net = build(n, loss=True, score_init=1e-3, seed=1, dtype=dtype)
        for key, value in ref.params().items():
            net.set_param(key, value)
        return ref, net.to("cuda").eval()

    def fwd_bwd(model, data, label):
        loss = model.forward(data=data, label=label)
        model.backward(input_grads=False)
        grads = model.grads()
        return (loss,) + tuple(grads[k] for k in FCN_GRADS)

    ref, net = pair(np.float32)
    dx = K.to_device(x)
    b.case("fcn8s", f"{name} inference", shape, lambda: net.forward(data=dx, until="score"),
           lambda: ref.forward(data=x, until="score"))
    b.case("fcn8s", f"{name} fwd+bwd", shape, lambda: fwd_bwd(net, dx, dlab),
           lambda: fwd_bwd(ref, x, lab), compare=False)
    net.train()
    solver = make_solver(net, "sgd", lr=1e-10, momentum=0.99, weight_decay=5e-4)

    def step():
        net.forward(data=dx, label=dlab)
        net.backward(input_grads=False)
        solver.step()
    b.case("fcn8s", f"{name} SGD step", shape, step, None)
    del ref, net, solver
    ref, net = pair(np.float64)
    x64 = x.astype(np.float64)
    dx64 = K.to_device(x64)
    b.case("fcn8s", f"{name} fwd+bwd float64", shape, lambda: fwd_bwd(net, dx64, dlab),
           lambda: fwd_bwd(ref, x64, lab), ref_repeat=0)


# The two figures with targets (the GEMM against cuBLAS, FCN-8s at 500x500) come first.
SECTIONS = {"gemm": gemm_section, "fcn8s": fcn8s_section, "conv": conv_section,
            "pool": pool_section, "upsample": upsample_section, "pointwise": pointwise_section}


# ----------------------------------------------------------------------------- report
def machine_info(K):
    import numba
    info = {"date": datetime.date.today().isoformat(), "python": platform.python_version(),
            "numpy": np.__version__, "numba": numba.__version__, "simulator": K.SIM}
    try:
        from importlib.metadata import version
        info["numba_cuda"] = version("numba-cuda")
    except Exception:
        info["numba_cuda"] = "(not installed: numba's built-in numba.cuda)"
    if K.SIM:
        info["gpu"] = "Numba CUDA simulator (timings mean nothing)"
    else:
        dev = K.cuda.get_current_device()
        name = dev.name.decode() if isinstance(dev.name, bytes) else str(dev.name)
        info.update(gpu=name, compute_capability=".".join(map(str, dev.compute_capability)),
                    sms=dev.MULTIPROCESSOR_COUNT)
    return info


def machine_line(m):
    cc = f" (sm {m['compute_capability']}, {m['sms']} SMs)" if "sms" in m else ""
    return (f"{m['date']} | {m['gpu']}{cc} | numba {m['numba']} | numba-cuda {m['numba_cuda']}"
            f" | numpy {m['numpy']} | python {m['python']}")


COLUMNS = ("section", "op", "shape", "cuda_ms", "vs", "ref_ms", "speedup", "gflops",
           "max_rel_err", "ok")


def table(rows):
    cols = [c for c in COLUMNS if any(c in r for r in rows)]

    def cell(v):
        if isinstance(v, float):
            return f"{v:.2e}" if abs(v) < 1e-2 and v != 0 else f"{v:.2f}"
        return "" if v is None else str(v)
    cells = [[cell(r.get(c)) for c in cols] for r in rows]
    width = [max(len(c), *(len(r[i]) for r in cells)) for i, c in enumerate(cols)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(cols, width)),
             "  ".join("-" * w for w in width)]
    lines += ["  ".join(v.ljust(w) for v, w in zip(r, width)) for r in cells]
    for r in rows:
        if "error" in r:
            lines.append(f"  {r['op']}: {r['error']}")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
