"""Benchmarks: `minifcn bench` times kernels, layers and whole nets, side by side with references.

    minifcn bench                       # the full run (about 7 minutes on 2 cores)
    minifcn bench --quick               # seconds, tiny shapes (what the tests run)
    minifcn bench --device cuda         # our CUDA kernels (with the numpy reference beside)
    minifcn bench --json out.json --markdown out.md

What is measured (each a section, --sections picks some):
  convs     VGG16's 13 convolutions at 224x224: forward, forward+backward, GFLOP/s
  pools     VGG16's five 2x2 max-pools
  deconvs   FCN's upsampling deconvolutions (k64 s32 on 7x7 / 8x8 / 16x16; k4 s2; k16 s8)
  loss      the pixelwise softmax loss (21 classes, 500x500)
  fcn       FCN-8s (VGG16) forward and a training step at 224 and 500, and per-layer
            milliseconds of forward and backward at 500 (like `caffe time`)
  memory    peak memory of an FCN-8s training step, each in a fresh process
  patches   the paper's section 3.1: an AlexNet classifier on each 227x227 patch of a 500x500
            image (a 10x10 grid) vs its convolutionalized FCN on the whole image
  tiny      the demo's training step: fcn8s_tiny, batch 8, 64x64

Implementations side by side: our devices ("cpu" Numba, "numpy" the reference, "cuda"), and
PyTorch ("torch") when it is installed. PyTorch always runs in a separate process, so that
neither library's thread pools nor environment (OMP_WAIT_POLICY, thread counts) touch the
other's; the command still produces one report. Timing: warm-up calls (JIT, caches), then
the median of several runs; every run is kept in the JSON. Each section runs in --rounds
rounds (2 by default), ours and PyTorch's interleaved, and each figure keeps its best round:
shared or burstable machines change speed over minutes (the 2-core machine these figures come
from ran 1.6x slower after a minute of sustained load), and interleaving keeps the two sides
from being measured in different phases. A full run takes about 7 minutes on 2 cores; the
numpy reference is timed on smaller VGG inputs (112x112), and not on the full-size nets.

Every report carries the machine: CPU, cores, thread counts, Numba's threading layer, and the
BLAS numpy calls (threadpoolctl) -- on some machines an OPENBLAS_CORETYPE setting silently
halves OpenBLAS's speed, so the BLAS kernel in use is part of every figure.
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import statistics
import subprocess
import sys
import time

import numpy as np

from . import functional as F
from .files import atomic_write_text
from .kernels.geometry import deconv_out

# VGG16's 13 convolutions as (name, C_in, C_out, downsampling) and its 5 pools.
VGG16_CONVS = [("conv1_1", 3, 64, 1), ("conv1_2", 64, 64, 1), ("conv2_1", 64, 128, 2),
               ("conv2_2", 128, 128, 2), ("conv3_1", 128, 256, 4), ("conv3_2", 256, 256, 4),
               ("conv3_3", 256, 256, 4), ("conv4_1", 256, 512, 8), ("conv4_2", 512, 512, 8),
               ("conv4_3", 512, 512, 8), ("conv5_1", 512, 512, 16), ("conv5_2", 512, 512, 16),
               ("conv5_3", 512, 512, 16)]
VGG16_POOLS = [("pool1", 64, 1), ("pool2", 128, 2), ("pool3", 256, 4), ("pool4", 512, 8),
               ("pool5", 512, 16)]
SECTIONS = ("convs", "pools", "deconvs", "loss", "fcn", "memory", "patches", "tiny")
TORCH = "torch"


# ----------------------------------------------------------------------------- settings
def settings(quick=False):
    """Sizes and repeats of a full run, or of --quick (tiny shapes: seconds in all)."""
    if quick:
        return dict(
            quick=True, repeat=2, warmup=1, net_repeat=1, size=32, width_div=16,
            numpy_size=16, deconvs=[("up32_2x2", 21, 64, 32, 2, True),
                                    ("up2_4x4", 21, 4, 2, 4, False),
                                    ("up8_4x4", 21, 16, 8, 4, True)],
            loss=(5, 32), fcn=dict(backbone="micro", sizes=[32, 48], layer_size=48, classes=5),
            memory=dict(backbone="micro", size=48, classes=5),
            patches=dict(kind="micro", image=48, patch=32, batch=16),
            tiny=dict(batch=2, size=32, classes=5))
    return dict(
        quick=False, repeat=5, warmup=2, net_repeat=3, size=224, width_div=1, numpy_size=112,
        deconvs=[("upscore 7x7", 21, 64, 32, 7, True), ("upscore 8x8", 21, 64, 32, 8, True),
                 ("upscore 16x16", 21, 64, 32, 16, True),
                 ("upscore2 16x16", 21, 4, 2, 16, False),
                 ("upscore_pool4 34x34", 21, 4, 2, 34, False),
                 ("upscore8 70x70", 21, 16, 8, 70, True)],
        loss=(21, 500), fcn=dict(backbone="vgg16", sizes=[224, 500], layer_size=500,
                                 classes=21),
        memory=dict(backbone="vgg16", size=500, classes=21),
        patches=dict(kind="alexnet", image=500, patch=227, batch=100),
        tiny=dict(batch=8, size=64, classes=5))


# ----------------------------------------------------------------------------- machine
def machine_info():
    """What the figures were measured on."""
    import numba
    from threadpoolctl import threadpool_info
    cpu = platform.processor()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next((ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name")),
                       cpu)
    except OSError:
        pass
    blas = [{k: i.get(k) for k in ("internal_api", "architecture", "num_threads", "version")}
            for i in threadpool_info() if i.get("user_api") == "blas"
            and "numpy" in (i.get("filepath") or "numpy")]
    try:
        layer = numba.threading_layer()
    except ValueError:                      # no parallel kernel has run yet
        layer = "not yet initialised"
    env = {k: os.environ[k] for k in ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE", "OMP_NUM_THREADS",
                                      "OMP_WAIT_POLICY", "NUMBA_NUM_THREADS",
                                      "NUMBA_THREADING_LAYER") if k in os.environ}
    cpu_mod = sys.modules.get("minifcn.kernels.cpu")
    if "OMP_WAIT_POLICY" in env and cpu_mod and not cpu_mod._USER_WAIT_POLICY:
        env["OMP_WAIT_POLICY"] += " (set by minifcn's cpu kernels)"
    return {"date": datetime.datetime.now().isoformat(timespec="seconds"), "cpu": cpu,
            "cores": os.cpu_count(), "python": platform.python_version(),
            "numpy": np.__version__, "numba": numba.__version__,
            "numba_threads": numba.get_num_threads(), "numba_threading_layer": layer,
            "blas": blas, "env": env}


def format_machine(info):
    blas = "; ".join(f"{b['internal_api']} {b['version']} kernel {b['architecture']}, "
                     f"{b['num_threads']} threads" for b in info["blas"]) or "unknown"
    env = ", ".join(f"{k}={v}" for k, v in info.get("env", {}).items()) or "none"
    line = (f"{info['date']} | {info['cpu']} | {info['cores']} cores | numba {info['numba']} "
            f"({info['numba_threading_layer']}, {info['numba_threads']} threads) | numpy "
            f"{info['numpy']} | BLAS: {blas} | env: {env}")
    if info.get("sgemm_gflops"):
        line += f" | SGEMM 2048^3: {info['sgemm_gflops']:.0f} GFLOP/s"
    if info.get("torch"):
        t = info["torch"]
        line += f" | torch {t['version']} ({t['threads']} threads, {t.get('blas', '?')})"
    return line


def sgemm_gflops(n=2048, repeat=3):
    """What numpy's BLAS does on a big float32 GEMM: the practical peak of this machine."""
    a = np.ones((n, n), np.float32)
    t = timeit(lambda: a @ a, repeat=repeat, warmup=1)["median"]
    return 2.0 * n ** 3 / t / 1e9


# ----------------------------------------------------------------------------- timing
def timeit(fn, repeat=5, warmup=1, sync=None):
    """{"median": s, "min": s, "runs": [s, ...]} of fn() after `warmup` untimed calls (JIT,
    caches, allocator). sync() (a device synchronize) is called before each clock read."""
    for _ in range(warmup):
        fn()
    if sync:
        sync()
    runs = []
    for _ in range(max(1, repeat)):
        t0 = time.perf_counter()
        fn()
        if sync:
            sync()
        runs.append(time.perf_counter() - t0)
    return {"median": statistics.median(runs), "min": min(runs), "runs": runs}


def conv_flops(n, c_in, c_out, h_out, w_out, kh, kw, groups=1):
    """Multiply-adds x 2 of a forward convolution (backward costs twice that)."""
    return 2.0 * n * c_out * h_out * w_out * (c_in // groups) * kh * kw


class Ours:
    """Run our functional ops on one device: arrays moved there once, results synchronised
    before the clock is read."""

    def __init__(self, device):
        from .kernels import get
        self.device = device
        self._asarray = get("asarray", device)
        self.sync = None
        if device == "cuda":
            from numba import cuda
            self.sync = cuda.synchronize

    def arr(self, a):
        return self._asarray(a)


def _row(section, op, impl, shape, fwd, both=None, flops=None, bwd_factor=3.0, note=""):
    r = {"section": section, "op": op, "impl": impl, "shape": shape,
         "fwd_ms": fwd["median"] * 1e3, "fwd_runs_ms": [t * 1e3 for t in fwd["runs"]]}
    if both is not None:
        r["fwdbwd_ms"] = both["median"] * 1e3
        r["fwdbwd_runs_ms"] = [t * 1e3 for t in both["runs"]]
    if flops:
        r["gflop"] = flops / 1e9
        r["fwd_gflops"] = flops / fwd["median"] / 1e9
        if both is not None:
            r["fwdbwd_gflops"] = bwd_factor * flops / both["median"] / 1e9
            r["bwd_factor"] = bwd_factor
    if note:
        r["note"] = note
    return r


def _vgg_convs_spec(size, width_div):
    """(name, C_in, C_out, H) of VGG16's convs at `size`, channels divided by width_div."""
    return [(name, cin if cin == 3 else max(1, cin // width_div), max(1, cout // width_div),
             -(-size // down)) for name, cin, cout, down in VGG16_CONVS]


# ----------------------------------------------------------------------------- op sections (ours)
def bench_convs(impl, cfg, size=None, names=None):
    """VGG16's 13 convolutions: forward and forward+backward (dx and dw; conv1_1 has no dx,
    as in a real net: its input is the image)."""
    size = size or cfg["size"]
    rng = np.random.default_rng(0)
    o = Ours(impl)
    rows = []
    for name, cin, cout, h in _vgg_convs_spec(size, cfg["width_div"]):
        if names and name not in names:
            continue
        x = o.arr(rng.standard_normal((1, cin, h, h)).astype(np.float32))
        w = o.arr((rng.standard_normal((cout, cin, 3, 3)) * 0.05).astype(np.float32))
        b = o.arr(np.zeros(cout, np.float32))
        dy = o.arr(np.ones((1, cout, h, h), np.float32))
        need_dx = name != "conv1_1"
        warm = 0 if impl == "numpy" else cfg["warmup"]
        rep = 1 if impl == "numpy" else cfg["repeat"]
        fwd = timeit(lambda: F.conv2d(x, w, b, pad=1, device=impl), rep, warm, o.sync)
        both = timeit(lambda: (F.conv2d(x, w, b, pad=1, device=impl), F.conv2d_backward(
            dy, x, w, pad=1, need_dx=need_dx, device=impl)), rep, warm, o.sync)
        fl = conv_flops(1, cin, cout, h, h, 3, 3)
        rows.append(_row("convs", name, impl, f"1x{cin}x{h}x{h} -> {cout}", fwd, both, fl,
                         3.0 if need_dx else 2.0))
    return rows


def bench_pools(impl, cfg, size=None):
    size = size or cfg["size"]
    rng = np.random.default_rng(0)
    o = Ours(impl)
    rows = []
    for name, c, down in VGG16_POOLS:
        c, h = max(1, c // cfg["width_div"]), -(-size // down)
        x = o.arr(rng.standard_normal((1, c, h, h)).astype(np.float32))
        y, _ = F.max_pool2d(x, 2, 2, device=impl)
        dy = o.arr(np.ones(y.shape, np.float32))

        def both():
            _, arg = F.max_pool2d(x, 2, 2, device=impl)
            return F.max_pool2d_backward(dy, arg, x.shape, device=impl)
        fwd = timeit(lambda: F.max_pool2d(x, 2, 2, device=impl), cfg["repeat"] * 2,
                     cfg["warmup"], o.sync)
        rows.append(_row("pools", name, impl, f"1x{c}x{h}x{h}", fwd,
                         timeit(both, cfg["repeat"] * 2, cfg["warmup"], o.sync)))
    return rows


def _bilinear(c, k):
    from .layers import bilinear_weight
    return bilinear_weight(c, c, k).astype(np.float32)


def bench_deconvs(impl, cfg):
    """FCN's upsampling: a bilinear weight (diagonal across channels). Frozen ones (the final
    upsampling) need dx only; learnable ones (FCN-8s's 2x) dx and dw."""
    rng = np.random.default_rng(0)
    o = Ours(impl)
    rows = []
    for name, c, k, s, h, frozen in cfg["deconvs"]:
        x = o.arr(rng.standard_normal((1, c, h, h)).astype(np.float32))
        w = o.arr(_bilinear(c, k))
        ho = deconv_out(h, k, s, 0)
        dy = o.arr(np.ones((1, c, ho, ho), np.float32))
        fwd = timeit(lambda: F.conv_transpose2d(x, w, None, s, 0, device=impl), cfg["repeat"],
                     cfg["warmup"], o.sync)
        both = timeit(lambda: (F.conv_transpose2d(x, w, None, s, 0, device=impl),
                               F.conv_transpose2d_backward(dy, x, w, s, 0, need_dw=not frozen,
                                                           device=impl)),
                      cfg["repeat"], cfg["warmup"], o.sync)
        fl = conv_flops(1, c, c, h, h, k, k)         # as a dense product, as PyTorch does it
        rows.append(_row("deconvs", name, impl, f"1x{c}x{h}x{h} k{k} s{s}"
                         f"{' frozen' if frozen else ''}", fwd, both, fl,
                         2.0 if frozen else 3.0))
    return rows


def bench_loss(impl, cfg):
    c, h = cfg["loss"]
    rng = np.random.default_rng(0)
    o = Ours(impl)
    scores = o.arr(rng.standard_normal((1, c, h, h)).astype(np.float32))
    labels = rng.integers(0, c, (1, h, h)).astype(np.int32)
    labels[:, :h // 10] = 255
    labels = o.arr(labels)
    # our op returns the loss and its gradient in one call: its forward is forward+backward
    t = timeit(lambda: F.softmax_cross_entropy(scores, labels, device=impl), cfg["repeat"],
               cfg["warmup"], o.sync)
    return [_row("loss", "softmax loss", impl, f"1x{c}x{h}x{h}", t, t,
                 note="loss and gradient in one pass")]


# ----------------------------------------------------------------------------- nets (ours)
def build_fcn(cfg_fcn, loss=True, seed=0):
    from . import models
    return models.fcn8s(cfg_fcn["classes"], loss=loss, backbone=cfg_fcn["backbone"], seed=seed)


def net_flops(net, shapes):
    """Forward FLOPs of the conv / deconv layers of `net` given blob shapes {blob: shape}."""
    from . import layers as L
    total = 0.0
    for name, layer in net.layers.items():
        if isinstance(layer, L.Conv):
            n, f, ho, wo = shapes[net.tops[name][0]]
            w = layer.params["weight"]
            kk = w[0].size // max(1, layer.in_ch // layer.groups) if w.ndim == 2 else \
                w.shape[2] * w.shape[3]
            total += 2.0 * n * f * ho * wo * (layer.in_ch // layer.groups) * kk
        elif isinstance(layer, L.Deconv):
            n, c, h, w_ = shapes[net.bottoms[name][0]]
            total += 2.0 * n * c * h * w_ * layer.out_ch * layer.kernel[0] * layer.kernel[1]
    return total


def _labels(rng, n, h, classes):
    lab = rng.integers(0, classes, (n, h, h)).astype(np.int32)
    lab[:, :max(1, h // 10)] = 255
    return lab


def train_step(net, solver, x, lab):
    """One training step, as the Trainer takes it: forward, backward, solver update."""
    net.train()
    net.forward(data=x, label=lab)
    net.backward(input_grads=False)
    solver.step()


def time_steps(net, solver, x, lab, repeat, warmup, sync):
    """(timeit of training steps, `caffe time`: {"ms": {layer: [fwd, bwd] medians over the
    timed steps}, "shapes": {layer: its top's shape}})."""
    samples = []

    def step():
        train_step(net, solver, x, lab)
        samples.append({k: list(v) for k, v in net.timings.items()})
    t = timeit(step, repeat, warmup, sync)
    timed = samples[warmup:]
    ms = {n: [statistics.median(s[n][0] for s in timed) * 1e3,
              statistics.median(s[n][1] for s in timed) * 1e3] for n in timed[0]}
    blobs = _shapes(net)
    shapes = {n: list(blobs[net.tops[n][0]]) for n in net.layers if net.tops[n][0] in blobs}
    return t, {"ms": ms, "shapes": shapes}


def bench_fcn_ours(impl, cfg):
    """FCN-8s forward (eval mode) and a training step (forward, backward, SGD update) at each
    size; per-layer milliseconds at layer_size."""
    from .train import SGD
    c = cfg["fcn"]
    net = build_fcn(c).to(impl)
    solver = SGD(net, lr=1e-10, momentum=0.99)
    rng = np.random.default_rng(0)
    o = Ours(impl)
    rows, layers = [], None
    for size in c["sizes"]:
        x = o.arr(rng.standard_normal((1, 3, size, size)).astype(np.float32))
        lab = o.arr(_labels(rng, 1, size, c["classes"]))
        shapes = _blob_shapes(net, data=x, label=lab)
        fl = net_flops(net, shapes)

        def forward():
            net.eval()
            return net.forward(data=x, until="score")
        fwd = timeit(forward, cfg["net_repeat"], 1, o.sync)
        tr, per_layer = time_steps(net, solver, x, lab, cfg["net_repeat"], 1, o.sync)
        rows.append(_row("fcn", f"FCN-8s {size}x{size}", impl, f"1x3x{size}x{size}", fwd, tr,
                         fl, 3.0, note="fwd: eval forward; fwdbwd: training step incl. SGD"))
        if size == c["layer_size"]:
            layers = dict(per_layer, size=size, impl=impl)
    return rows, layers


def _blob_shapes(net, **inputs):
    """{blob: shape} after an eval-mode forward of `inputs`."""
    net.eval()
    net.forward(**inputs)
    return _shapes(net)


# ----------------------------------------------------------------------------- patches (3.1)
def _patch_nets(p, loss=False):
    """(classifier, convolutionalized FCN sharing its weights, patch size)."""
    from . import models
    if p["kind"] == "alexnet":
        clf = models.alexnet(num_classes=1000)
    else:
        clf = models.vgg_classifier("micro", num_classes=10, input_size=p["patch"])
    return clf, models.convolutionalize(clf, copy_params=False)


def patch_stack(fcn, img, patch, fcn_out):
    """(N, 3, patch, patch): the patch the classifier runs on for each unit of the FCN's
    fcn_out output grid, their corners the FCN's output stride apart (derived from its
    coordinate maps: 32 for AlexNet), the image zero-padded on the bottom/right where the last
    patches hang over its edge."""
    from .coordmap import receptive_field
    (_, sh, _), (_, sw, _) = receptive_field(fcn, fcn.outputs[0])
    grid = [(i * int(sh), j * int(sw)) for i in range(fcn_out[0]) for j in range(fcn_out[1])]
    H, W = img.shape[2:]
    padded = np.zeros((1, 3, max(H, grid[-1][0] + patch), max(W, grid[-1][1] + patch)),
                      img.dtype)
    padded[:, :, :H, :W] = img
    return np.concatenate([padded[:, :, i:i + patch, j:j + patch] for i, j in grid])


def bench_patches_ours(impl, cfg):
    p = cfg["patches"]
    clf, fcn = _patch_nets(p)
    clf.to(impl).eval()
    fcn.to(impl).eval()
    rng = np.random.default_rng(0)
    o = Ours(impl)
    img = rng.standard_normal((1, 3, p["image"], p["image"])).astype(np.float32)
    out = fcn.forward(data=o.arr(img))
    patches = patch_stack(fcn, img, p["patch"], out.shape[2:])
    batches = [o.arr(patches[k:k + p["batch"]]) for k in range(0, len(patches), p["batch"])]
    whole = o.arr(img)
    d_out = o.arr(np.ones(out.shape, np.float32))
    d_clf = [o.arr(np.ones((len(b_),) + tuple(out.shape[1:2]) + (1, 1), np.float32))
             for b_ in batches]

    def run_patches(backward):
        for b_, d in zip(batches, d_clf):
            clf.forward(data=b_)
            if backward:
                clf.backward(grads={"fc8": d}, input_grads=False)

    def run_whole(backward):
        fcn.forward(data=whole)
        if backward:
            fcn.backward(grads={"fc8": d_out}, input_grads=False)
    rep = cfg["net_repeat"]
    res = {}
    for name, fn in (("patches", run_patches), ("whole", run_whole)):
        res[name] = (timeit(lambda: fn(False), rep, 1, o.sync),
                     timeit(lambda: fn(True), rep, 1, o.sync))
    n = len(patches)
    rows = [_row("patches", f"{n} patches of {p['patch']}x{p['patch']}", impl,
                 f"{n}x3x{p['patch']}x{p['patch']}", *res["patches"]),
            _row("patches", f"whole image {p['image']}x{p['image']}", impl,
                 f"1x3x{p['image']}x{p['image']} -> {out.shape[2]}x{out.shape[3]}",
                 *res["whole"])]
    rows.append({"section": "patches", "op": "speed-up (patches / whole)", "impl": impl,
                 "shape": f"{out.shape[2]}x{out.shape[3]} grid",
                 "fwd_x": res["patches"][0]["median"] / res["whole"][0]["median"],
                 "fwdbwd_x": res["patches"][1]["median"] / res["whole"][1]["median"]})
    # what the arithmetic allows: forward multiply-adds of the two (the fully connected layers
    # do the same work either way: 100 patches or a 10x10 grid)
    clf.forward(data=batches[0])
    f_p = net_flops(clf, _shapes(clf)) * len(patches) / len(batches[0])
    fcn.forward(data=whole)
    f_w = net_flops(fcn, _shapes(fcn))
    rows.append({"section": "patches", "op": "FLOP ratio (patches / whole)", "impl": impl,
                 "shape": f"{f_p / 1e9:.0f} / {f_w / 1e9:.1f} GFLOP", "fwd_x": f_p / f_w,
                 "fwdbwd_x": f_p / f_w})
    return rows


def _shapes(net):
    return {k: tuple(v.shape) for k, v in net.blobs.items() if hasattr(v, "shape")}


# ----------------------------------------------------------------------------- tiny (demo)
def bench_tiny_ours(impl, cfg):
    from . import models
    from .train import SGD
    t = cfg["tiny"]
    net = models.fcn8s_tiny(t["classes"], seed=0).to(impl)
    solver = SGD(net, lr=1e-3, momentum=0.9)
    rng = np.random.default_rng(0)
    o = Ours(impl)
    x = o.arr(rng.standard_normal((t["batch"], 3, t["size"], t["size"])).astype(np.float32))
    lab = o.arr(_labels(rng, t["batch"], t["size"], t["classes"]))
    tr, ms = time_steps(net, solver, x, lab, cfg["repeat"] * 2, 2, o.sync)
    return [_row("tiny", "fcn8s_tiny step", impl,
                 f"{t['batch']}x3x{t['size']}x{t['size']}", tr, tr,
                 note="training step: forward, backward, SGD update")], ms


# ----------------------------------------------------------------------------- memory
def _vm(field):
    try:
        with open("/proc/self/status") as f:
            for ln in f:
                if ln.startswith(field + ":"):
                    return int(ln.split()[1]) * 1024
    except OSError:
        pass
    return None


def _reset_peak():
    """Reset VmHWM (Linux >= 4.0); False where it cannot be."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def memory_worker_ours(cfg):
    """In a fresh process: RSS after imports, peak RSS of one training step (after a first
    step has made the solver's buffers), and tracemalloc's peak of numpy allocations."""
    import tracemalloc
    from .train import SGD
    c = cfg["memory"]
    F.relu(np.ones(4, np.float32), device="cpu")          # libraries and threads up
    base = _vm("VmRSS")
    net = build_fcn(dict(c, sizes=[c["size"]])).to("cpu")
    solver = SGD(net, lr=1e-10, momentum=0.99)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((1, 3, c["size"], c["size"])).astype(np.float32)
    lab = _labels(rng, 1, c["size"], c["classes"])
    train_step(net, solver, x, lab)
    before = _vm("VmRSS")
    reset = _reset_peak()
    tracemalloc.start()
    train_step(net, solver, x, lab)
    _, traced_peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    return {"rss_after_imports": base, "rss_before_step": before, "peak_rss": _vm("VmHWM"),
            "peak_reset": reset, "numpy_traced_peak": traced_peak}


def memory_worker_torch(cfg):
    torch = _import_torch()
    c = cfg["memory"]
    torch.ones(4).relu()
    base = _vm("VmRSS")
    net = build_fcn(dict(c, sizes=[c["size"]]))
    tn = TorchNet(torch, net)
    opt = torch.optim.SGD([p for p in tn.params.values() if p.requires_grad], lr=1e-10,
                          momentum=0.99)
    rng = np.random.default_rng(0)
    x = torch.from_numpy(rng.standard_normal((1, 3, c["size"], c["size"])).astype(np.float32))
    lab = torch.from_numpy(_labels(rng, 1, c["size"], c["classes"]).astype(np.int64))
    del net
    torch_step(tn, opt, x, lab)
    before = _vm("VmRSS")
    reset = _reset_peak()
    torch_step(tn, opt, x, lab)
    return {"rss_after_imports": base, "rss_before_step": before, "peak_rss": _vm("VmHWM"),
            "peak_reset": reset}


def bench_memory(cfg, with_torch):
    rows = []
    for impl in ["cpu"] + ([TORCH] if with_torch else []):
        res = run_worker("memory-" + impl, cfg)
        if "error" in res:
            rows.append({"section": "memory", "op": "training step", "impl": impl,
                         "note": res["error"]})
            continue
        mb = 1 << 20
        r = {"section": "memory", "op": f"FCN-8s step {cfg['memory']['size']}x"
             f"{cfg['memory']['size']}", "impl": impl, "shape": cfg["memory"]["backbone"],
             "peak_rss_mb": res["peak_rss"] / mb,
             "peak_over_imports_mb": (res["peak_rss"] - res["rss_after_imports"]) / mb,
             "rss_after_imports_mb": res["rss_after_imports"] / mb,
             "rss_before_step_mb": res["rss_before_step"] / mb}
        if res.get("numpy_traced_peak"):
            r["numpy_traced_peak_mb"] = res["numpy_traced_peak"] / mb
        if not res.get("peak_reset"):
            r["note"] = "peak over the whole process (VmHWM could not be reset)"
        rows.append(r)
    return rows


# ----------------------------------------------------------------------------- PyTorch side
def _import_torch():
    import torch
    return torch


def torch_step(tn, opt, x, lab):
    """train_step's PyTorch twin on a TorchNet."""
    opt.zero_grad()
    tn.forward({"data": x, "label": lab}, train=True).backward()
    opt.step()


def torch_info():
    torch = _import_torch()
    cfg = torch.__config__.show()
    blas = "MKL" if "MKL" in cfg else ("OpenBLAS" if "OpenBLAS" in cfg else "?")
    if "oneDNN" in cfg or "MKLDNN" in cfg:
        blas += " + oneDNN"
    return {"version": torch.__version__, "threads": torch.get_num_threads(), "blas": blas}


class TorchNet:
    """The same DAG as a minifcn Net, run with PyTorch ops and the Net's own weights (copied):
    the reference a PyTorch user would write. In-place ReLU / Dropout where our net works in
    place, frozen parameters (lr_mult 0) without gradients, Caffe's ceil-mode pooling."""

    def __init__(self, torch, net):
        from . import layers as L
        self.torch, self.net, self.L = torch, net, L
        self.params = {}
        for name, layer in net.layers.items():
            for p, v in layer.params.items():
                t = torch.from_numpy(np.ascontiguousarray(v, dtype=np.float32))
                self.params[f"{name}.{p}"] = t.requires_grad_(bool(layer.trainable(p)))
        self.timings = {}

    def forward(self, inputs, train=True, until=None, time_layers=False):
        torch, L, net = self.torch, self.L, self.net
        fn = torch.nn.functional
        blobs = dict(inputs)
        for name, layer in net.layers.items():
            t0 = time.perf_counter() if time_layers else 0.0
            bots = [blobs[b] for b in net.bottoms[name]]
            inplace = net.tops[name][0] in net.bottoms[name]
            P = lambda p: self.params.get(f"{name}.{p}")          # noqa: E731
            x = bots[0]
            if isinstance(layer, L.InnerProduct):
                y = fn.linear(x.flatten(1), P("weight"), P("bias"))[:, :, None, None]
            elif isinstance(layer, L.Conv):
                y = fn.conv2d(x, P("weight"), P("bias"), layer.stride, layer.pad,
                              layer.dilation, layer.groups)
            elif isinstance(layer, L.Deconv):
                y = fn.conv_transpose2d(x, P("weight"), P("bias"), layer.stride, layer.pad)
            elif isinstance(layer, L.AvgPool):
                y = fn.avg_pool2d(x, layer.kernel, layer.stride, layer.pad,
                                  ceil_mode=layer.ceil_mode)
            elif isinstance(layer, L.MaxPool):
                y = fn.max_pool2d(x, layer.kernel, layer.stride, layer.pad,
                                  ceil_mode=layer.ceil_mode)
            elif isinstance(layer, L.ReLU):
                y = fn.leaky_relu(x, layer.slope, inplace=inplace) if layer.slope else \
                    fn.relu(x, inplace=inplace)
            elif isinstance(layer, L.Dropout):
                # not in place: ReLU's backward reads the output it made in place (as in
                # torchvision's VGG: ReLU(inplace=True), then Dropout())
                y = fn.dropout(x, layer.p, training=train)
            elif isinstance(layer, L.Crop):
                oh, ow = layer.offset
                H, W = bots[1].shape[-2:]
                y = x[:, :, oh:oh + H, ow:ow + W]
            elif isinstance(layer, L.Sum):
                coeffs = layer.coeffs or [1.0] * len(bots)
                y = sum(c * b if c != 1 else b for c, b in zip(coeffs, bots))
            elif isinstance(layer, L.Scale):
                y = x * layer.c
            elif isinstance(layer, L.LRN):
                y = fn.local_response_norm(x, layer.size, layer.alpha, layer.beta, layer.k)
            elif isinstance(layer, L.SoftmaxLoss):
                lab = bots[1]
                red = {"valid": "mean", "batch": "sum", "none": "sum"}[layer.normalize]
                y = fn.cross_entropy(x, lab, ignore_index=layer.ignore_label, reduction=red)
                if layer.normalize == "batch":
                    y = y / x.shape[0]
                y = y * layer.loss_weight
            else:
                raise TypeError(f"no PyTorch mirror for layer {name!r} ({type(layer).__name__})")
            blobs[net.tops[name][0]] = y
            if time_layers:
                self.timings[name] = time.perf_counter() - t0
            if until is not None and net.tops[name][0] == until:
                return y
        outs = [o for o in net.outputs]
        return blobs[outs[0]] if len(outs) == 1 else {o: blobs[o] for o in outs}


def mirror_check(torch):
    """How far the PyTorch mirror's scores are from our net's (numpy reference device) on a
    small FCN-8s with random weights everywhere: the relative max difference. The timings
    compare the same computation only if this is tiny."""
    from . import models
    net = models.fcn8s(5, loss=False, backbone="micro", score_init=0.1, seed=3).to("numpy")
    x = np.random.default_rng(1).standard_normal((2, 3, 40, 40)).astype(np.float32)
    ours = net.eval().forward(data=x)
    with torch.no_grad():
        theirs = TorchNet(torch, net).forward({"data": torch.from_numpy(x)}, train=False)
    return float(np.abs(theirs.numpy() - ours).max() / max(1e-12, np.abs(ours).max()))


def torch_worker(cfg, sections, threads=None, check=True):
    """Everything PyTorch is timed on, in this (separate) process. Returns {section: rows}."""
    torch = _import_torch()
    if threads:
        torch.set_num_threads(threads)
    fn = torch.nn.functional
    out = {"info": torch_info()}
    rng = np.random.default_rng(0)

    def T(a, grad=False):
        return torch.from_numpy(np.ascontiguousarray(a)).requires_grad_(grad)
    impl = TORCH
    if check:
        out["mirror_check"] = mirror_check(torch)
    if "convs" in sections:
        rows = []
        for name, cin, cout, h in _vgg_convs_spec(cfg["size"], cfg["width_div"]):
            need_dx = name != "conv1_1"
            x = T(rng.standard_normal((1, cin, h, h)).astype(np.float32), need_dx)
            w = T((rng.standard_normal((cout, cin, 3, 3)) * 0.05).astype(np.float32), True)
            b = T(np.zeros(cout, np.float32), True)
            dy = torch.ones(1, cout, h, h)

            def fwd():
                with torch.no_grad():
                    return fn.conv2d(x, w, b, padding=1)

            def both():
                fn.conv2d(x, w, b, padding=1).backward(dy)
            fl = conv_flops(1, cin, cout, h, h, 3, 3)
            rows.append(_row("convs", name, impl, f"1x{cin}x{h}x{h} -> {cout}",
                             timeit(fwd, cfg["repeat"], cfg["warmup"]),
                             timeit(both, cfg["repeat"], cfg["warmup"]), fl,
                             3.0 if need_dx else 2.0))
        out["convs"] = rows
    if "pools" in sections:
        rows = []
        for name, c, down in VGG16_POOLS:
            c, h = max(1, c // cfg["width_div"]), -(-cfg["size"] // down)
            x = T(rng.standard_normal((1, c, h, h)).astype(np.float32), True)
            dy = torch.ones(1, c, -(-h // 2), -(-h // 2))

            def fwd():
                with torch.no_grad():
                    return fn.max_pool2d(x, 2, 2, ceil_mode=True)

            def both():
                fn.max_pool2d(x, 2, 2, ceil_mode=True).backward(dy)
            rows.append(_row("pools", name, impl, f"1x{c}x{h}x{h}",
                             timeit(fwd, cfg["repeat"] * 2, cfg["warmup"]),
                             timeit(both, cfg["repeat"] * 2, cfg["warmup"])))
        out["pools"] = rows
    if "deconvs" in sections:
        rows = []
        for name, c, k, s, h, frozen in cfg["deconvs"]:
            x = T(rng.standard_normal((1, c, h, h)).astype(np.float32), True)
            w = T(_bilinear(c, k), not frozen)
            ho = deconv_out(h, k, s, 0)
            dy = torch.ones(1, c, ho, ho)

            def fwd():
                with torch.no_grad():
                    return fn.conv_transpose2d(x, w, None, s)

            def both():
                fn.conv_transpose2d(x, w, None, s).backward(dy)
            rows.append(_row("deconvs", name, impl, f"1x{c}x{h}x{h} k{k} s{s}"
                             f"{' frozen' if frozen else ''}",
                             timeit(fwd, cfg["repeat"], cfg["warmup"]),
                             timeit(both, cfg["repeat"], cfg["warmup"]),
                             conv_flops(1, c, c, h, h, k, k), 2.0 if frozen else 3.0))
        out["deconvs"] = rows
    if "loss" in sections:
        c, h = cfg["loss"]
        s = T(rng.standard_normal((1, c, h, h)).astype(np.float32), True)
        lab = _labels(rng, 1, h, c).astype(np.int64)
        lab = torch.from_numpy(lab)

        def fwd():
            with torch.no_grad():
                return fn.cross_entropy(s, lab, ignore_index=255)

        def both():
            fn.cross_entropy(s, lab, ignore_index=255).backward()
        out["loss"] = [_row("loss", "softmax loss", impl, f"1x{c}x{h}x{h}",
                            timeit(fwd, cfg["repeat"], cfg["warmup"]),
                            timeit(both, cfg["repeat"], cfg["warmup"]))]
    if "fcn" in sections:
        c = cfg["fcn"]
        net = build_fcn(c)
        tn = TorchNet(torch, net)
        opt = torch.optim.SGD([p for p in tn.params.values() if p.requires_grad], lr=1e-10,
                              momentum=0.99)
        rows, layers = [], None
        for size in c["sizes"]:
            x = torch.from_numpy(rng.standard_normal((1, 3, size, size)).astype(np.float32))
            lab = torch.from_numpy(_labels(rng, 1, size, c["classes"]).astype(np.int64))
            samples = []

            def fwd():
                with torch.no_grad():
                    tn.forward({"data": x}, train=False, until="score", time_layers=True)
                samples.append(dict(tn.timings))
            f = timeit(fwd, cfg["net_repeat"], 1)
            s = timeit(lambda: torch_step(tn, opt, x, lab), cfg["net_repeat"], 1)
            rows.append(_row("fcn", f"FCN-8s {size}x{size}", impl, f"1x3x{size}x{size}", f, s,
                             note="fwd: eval forward; fwdbwd: training step incl. SGD"))
            if size == c["layer_size"]:
                layers = {"size": size, "impl": impl,
                          "ms": {k: [statistics.median(sm[k] for sm in samples) * 1e3, None]
                                 for k in samples[0]}}
        out["fcn"], out["fcn_layers"] = rows, layers
    if "patches" in sections:
        p = cfg["patches"]
        clf, fcn = _patch_nets(p)
        tc, tf = TorchNet(torch, clf), TorchNet(torch, fcn)
        img = rng.standard_normal((1, 3, p["image"], p["image"])).astype(np.float32)
        with torch.no_grad():
            o = tf.forward({"data": torch.from_numpy(img)}, train=False)
        patches = torch.from_numpy(patch_stack(fcn, img, p["patch"], o.shape[2:]))
        whole = torch.from_numpy(img)

        def run(net, data, backward, batch):
            for k in range(0, data.shape[0], batch):
                if backward:
                    y = net.forward({"data": data[k:k + batch]}, train=False)
                    y.backward(torch.ones_like(y))
                else:
                    with torch.no_grad():
                        net.forward({"data": data[k:k + batch]}, train=False)
        res = {}
        for name, net, data, batch in (("patches", tc, patches, p["batch"]),
                                       ("whole", tf, whole, 1)):
            res[name] = (timeit(lambda: run(net, data, False, batch), cfg["net_repeat"], 1),
                         timeit(lambda: run(net, data, True, batch), cfg["net_repeat"], 1))
        n = len(patches)
        out["patches"] = [
            _row("patches", f"{n} patches of {p['patch']}x{p['patch']}", impl,
                 f"{n}x3x{p['patch']}x{p['patch']}", *res["patches"]),
            _row("patches", f"whole image {p['image']}x{p['image']}", impl,
                 f"1x3x{p['image']}x{p['image']} -> {o.shape[2]}x{o.shape[3]}", *res["whole"]),
            {"section": "patches", "op": "speed-up (patches / whole)", "impl": impl,
             "shape": f"{o.shape[2]}x{o.shape[3]} grid",
             "fwd_x": res["patches"][0]["median"] / res["whole"][0]["median"],
             "fwdbwd_x": res["patches"][1]["median"] / res["whole"][1]["median"]}]
    if "tiny" in sections:
        from . import models
        t = cfg["tiny"]
        tn = TorchNet(torch, models.fcn8s_tiny(t["classes"], seed=0))
        opt = torch.optim.SGD([p for p in tn.params.values() if p.requires_grad], lr=1e-3,
                              momentum=0.9)
        x = torch.from_numpy(rng.standard_normal((t["batch"], 3, t["size"], t["size"])).astype(
            np.float32))
        lab = torch.from_numpy(_labels(rng, t["batch"], t["size"], t["classes"]).astype(np.int64))
        tr = timeit(lambda: torch_step(tn, opt, x, lab), cfg["repeat"] * 2, 2)
        out["tiny"] = [_row("tiny", "fcn8s_tiny step", impl,
                            f"{t['batch']}x3x{t['size']}x{t['size']}", tr, tr,
                            note="the same net in PyTorch ops")]
    return out


def run_worker(kind, cfg, sections=(), threads=None, timeout=900):
    """Run a worker (torch timings, or a memory measurement) in a fresh Python process; its
    result comes back as JSON on the last line of its stdout."""
    spec = json.dumps({"kind": kind, "cfg": cfg, "sections": list(sections),
                       "threads": threads})
    try:
        p = subprocess.run([sys.executable, "-m", "minifcn.bench", "--worker", spec],
                           capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"error": f"{kind} worker timed out after {timeout} s"}
    lines = [ln for ln in p.stdout.splitlines() if ln.startswith("{")]
    if p.returncode != 0 or not lines:
        tail = (p.stderr or p.stdout).strip().splitlines()[-1:] or ["no output"]
        return {"error": f"{kind} worker failed: {tail[0]}"}
    return json.loads(lines[-1])


def _worker_main(spec):
    spec = json.loads(spec)
    kind, cfg = spec["kind"], spec.get("cfg")
    if kind == "torch-loop":
        _torch_loop(spec.get("threads"))
        return 0
    if kind == "torch":
        result = torch_worker(cfg, spec["sections"], spec.get("threads"))
    elif kind == "memory-cpu":
        result = memory_worker_ours(cfg)
    elif kind == "memory-torch":
        result = memory_worker_torch(cfg)
    else:
        raise SystemExit(f"unknown worker {kind!r}")
    print(json.dumps(result, default=float))
    return 0


def torch_available():
    import importlib.util
    return importlib.util.find_spec("torch") is not None


# ----------------------------------------------------------------------------- reports
def _fmt(v, nd=2):
    if v is None or v == "":
        return ""
    if isinstance(v, float):
        if v >= 100:
            return f"{v:.0f}"
        if v >= 10:
            return f"{v:.1f}"
        return f"{v:.{nd}f}"
    return str(v)


def markdown(rows, columns=("op", "impl", "shape", "fwd_ms", "fwdbwd_ms", "fwd_gflops",
                            "fwdbwd_gflops")):
    """A plain table of rows (every column some row has)."""
    cols = [c for c in columns if any(c in r for r in rows)]
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for r in rows:
        lines.append("| " + " | ".join(_fmt(r.get(c)) for c in cols) + " |")
    return "\n".join(lines)


def side_by_side(rows, impls, ours="cpu", ref=TORCH, gflops=True, labels=None):
    """One line per op, each implementation's fwd and fwd+bwd ms in columns, then our time
    over the reference's (below 1: we are faster). labels: {impl: column title}."""
    labels = labels or {}
    ops = list(dict.fromkeys(r["op"] for r in rows))
    by = {(r["op"], r["impl"]): r for r in rows}
    impls = [i for i in impls if any(r["impl"] == i for r in rows)]
    head = ["op", "shape"]
    has_gf = {i: gflops and any("fwdbwd_gflops" in by.get((o, i), {}) for o in ops)
              for i in impls}
    for i in impls:
        lab = labels.get(i, i)
        head += [f"{lab} fwd ms", f"{lab} f+b ms"] + ([f"{lab} f+b GFLOP/s"] if has_gf[i]
                                                       else [])
    ratio = ours in impls and ref in impls
    if ratio:
        head += [f"{ours}/{ref} fwd", f"{ours}/{ref} f+b"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for o in ops:
        shape = next((by[(o, i)].get("shape", "") for i in impls if (o, i) in by), "")
        cells = [o, shape]
        for i in impls:
            r = by.get((o, i), {})
            cells += [_fmt(r.get("fwd_ms")), _fmt(r.get("fwdbwd_ms"))]
            if has_gf[i]:
                cells.append(_fmt(r.get("fwdbwd_gflops")))
        if ratio:
            a, b = by.get((o, ours), {}), by.get((o, ref), {})
            cells += [_fmt(_div(a.get("fwd_ms"), b.get("fwd_ms"))),
                      _fmt(_div(a.get("fwdbwd_ms"), b.get("fwdbwd_ms")))]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _div(a, b):
    return a / b if a is not None and b else None


def total(rows, label):
    """A summary row adding up the ms (and overall GFLOP/s where flops are known)."""
    out = {"section": rows[0]["section"], "op": label, "impl": rows[0]["impl"], "shape": "",
           "fwd_ms": sum(r["fwd_ms"] for r in rows)}
    if all("fwdbwd_ms" in r for r in rows):
        out["fwdbwd_ms"] = sum(r["fwdbwd_ms"] for r in rows)
    if all("gflop" in r for r in rows):
        gf = sum(r["gflop"] for r in rows)
        out["gflop"] = gf
        out["fwd_gflops"] = gf / (out["fwd_ms"] / 1e3)
        if "fwdbwd_ms" in out and all("bwd_factor" in r for r in rows):
            work = sum(r["gflop"] * r["bwd_factor"] for r in rows)
            out["fwdbwd_gflops"] = work / (out["fwdbwd_ms"] / 1e3)
            out["bwd_factor"] = work / gf
    return out


def layer_table(ours, ref=None, top=None):
    """`caffe time`: per-layer forward and backward ms of our net, PyTorch's forward beside."""
    ms = ours["ms"]
    names = list(ms)
    tot_f = sum(v[0] for v in ms.values())
    tot_b = sum(v[1] for v in ms.values())
    order = sorted(names, key=lambda n: -(ms[n][0] + ms[n][1]))[:top] if top else names
    head = ["layer", "top shape", "fwd ms", "bwd ms", "% of step"]
    if ref:
        head.append("torch fwd ms")
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for n in order:
        f, b = ms[n]
        shape = "x".join(map(str, ours.get("shapes", {}).get(n, [])))
        cells = [n, shape, _fmt(f), _fmt(b), _fmt(100 * (f + b) / max(1e-9, tot_f + tot_b), 1)]
        if ref:
            cells.append(_fmt((ref["ms"].get(n) or [None])[0]))
        lines.append("| " + " | ".join(cells) + " |")
    cells = ["total", "", _fmt(tot_f), _fmt(tot_b), "100"]
    if ref:
        cells.append(_fmt(sum(v[0] for v in ref["ms"].values())))
    lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


# ----------------------------------------------------------------------------- targets
TARGETS = [
    # (name, section, op, column, goal, kind): kind "ratio" = ours/torch <= goal,
    # "speedup" = torch/ours >= goal, "x" = a measured speed-up >= goal
    ("VGG16 13 convs fwd+bwd vs PyTorch", "convs", "13 convs", "fwdbwd_ms", 1.0, "ratio"),
    ("5 max-pools fwd+bwd, PyTorch / ours", "pools", "5 pools", "fwdbwd_ms", 10.0, "speedup"),
    ("k64 s32 upsampling fwd+bwd, PyTorch / ours", "deconvs", "k64 s32 (3 sizes)",
     "fwdbwd_ms", 5.0, "speedup"),
    ("FCN-8s forward 500x500 vs PyTorch", "fcn", "FCN-8s 500x500", "fwd_ms", 0.75, "ratio"),
    ("FCN-8s training step 500x500 vs PyTorch", "fcn", "FCN-8s 500x500", "fwdbwd_ms", 0.8,
     "ratio"),
    ("FCN-8s step peak memory vs PyTorch", "memory", None, "peak_over_imports_mb", 1.0,
     "ratio"),
    ("whole image vs patches, forward", "patches", "speed-up (patches / whole)", "fwd_x", 10.0,
     "x"),
    ("whole image vs patches, forward+backward", "patches", "speed-up (patches / whole)",
     "fwdbwd_x", 10.0, "x"),
]


def targets(results, ours="cpu"):
    """Each target with its measured figure and whether it is met."""
    out = []
    for name, sec, op, col, goal, kind in TARGETS:
        rows = results.get(sec, [])
        pick = lambda impl: next((r for r in rows if r.get("impl") == impl and  # noqa: E731
                                  (op is None or r["op"] == op) and col in r), None)
        a, b = pick(ours), pick(TORCH)
        goal_s = f"<= {goal:g}x" if kind == "ratio" else f">= {goal:g}x"
        if not a or (kind != "x" and not b):
            out.append({"target": name, "goal": goal_s, "measured": None, "met": None,
                        "note": "needs PyTorch" if a else "not measured"})
            continue
        value = a[col] if kind == "x" else a[col] / b[col] if kind == "ratio" else \
            b[col] / a[col]
        ok = value <= goal if kind == "ratio" else value >= goal
        out.append({"target": name, "goal": goal_s, "measured": value, "met": ok})
    if results.get("settings", {}).get("quick"):
        for t in out:
            t["note"] = "--quick: tiny shapes, not the target's"
    return out


def targets_table(ts):
    lines = ["| target | goal | measured | met |", "|---|---|---|---|"]
    for t in ts:
        m = "" if t["measured"] is None else f"{t['measured']:.2f}x"
        met = {True: "yes", False: "no", None: "-"}[t["met"]]
        if t.get("note"):
            met += f" ({t['note']})"
        lines.append(f"| {t['target']} | {t.get('goal', '')} | {m} | {met} |")
    return "\n".join(lines)


# ----------------------------------------------------------------------------- the run
def add_arguments(p):
    p.add_argument("--quick", action="store_true",
                   help="tiny shapes, one or two runs each: seconds (for CI)")
    p.add_argument("--device", "--devices", dest="devices", nargs="+",
                   choices=["numpy", "cpu", "cuda"], default=None,
                   help="our devices to time (default: cpu and the numpy reference)")
    p.add_argument("--sections", nargs="+", choices=SECTIONS, default=None,
                   help=f"what to time (default all: {' '.join(SECTIONS)})")
    p.add_argument("--torch", dest="torch", action="store_true", default=None,
                   help="time PyTorch beside us (default: when it is installed)")
    p.add_argument("--no-torch", dest="torch", action="store_false")
    p.add_argument("--repeat", type=int, default=None, help="timed runs per figure")
    p.add_argument("--rounds", type=int, default=None,
                   help="rounds of each section, ours interleaved with PyTorch's, keeping "
                        "each figure's best (default 2; --quick 1)")
    p.add_argument("--threads", type=int, default=None,
                   help="threads for Numba, BLAS and PyTorch (default: all cores)")
    p.add_argument("--json", metavar="PATH", help="write every figure and the machine here")
    p.add_argument("--markdown", metavar="PATH", help="write the report's tables here")
    p.add_argument("--worker", help=argparse.SUPPRESS)


def command_line(args):
    """The `minifcn bench` command that reproduces this run."""
    parts = ["minifcn", "bench"]
    if args.quick:
        parts.append("--quick")
    for flag, v in (("--device", args.devices), ("--sections", args.sections)):
        if v:
            parts += [flag] + list(v)
    if args.torch is not None:
        parts.append("--torch" if args.torch else "--no-torch")
    for flag, v in (("--repeat", args.repeat), ("--rounds", args.rounds),
                    ("--threads", args.threads),
                    ("--json", args.json), ("--markdown", args.markdown)):
        if v:
            parts += [flag, str(v)]
    return " ".join(parts)


def _set_threads(n):
    import numba
    from threadpoolctl import threadpool_limits
    numba.set_num_threads(n)
    threadpool_limits(n, user_api="blas")


def _cuda_ready():
    try:
        from .kernels import get
        get("conv2d", "cuda")
        from .kernels import cuda_util
        return True, cuda_util.SIM
    except Exception:                      # no GPU, no simulator: nothing to time there
        return False, False


class TorchProcess:
    """PyTorch in its own long-lived process, timing one section per request (JSON lines on
    its stdin / stdout), so that its sections can be interleaved with ours."""

    def __init__(self, threads=None):
        self.p = subprocess.Popen([sys.executable, "-m", "minifcn.bench", "--worker",
                                   json.dumps({"kind": "torch-loop", "threads": threads})],
                                  stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        self.hello = self._read()

    def _read(self):
        for line in self.p.stdout:
            if line.startswith("{"):
                return json.loads(line)
        err = f"exited with status {self.p.wait()}"
        return {"error": f"the PyTorch worker {err} (run it alone to see its traceback)"}

    def run(self, cfg, section):
        self.p.stdin.write(json.dumps({"cfg": cfg, "sections": [section]}) + "\n")
        self.p.stdin.flush()
        return self._read()

    def close(self):
        try:
            self.p.stdin.close()
            self.p.wait(timeout=30)
        except Exception:                  # noqa: BLE001 -- it is only a helper process
            self.p.kill()


def _torch_loop(threads):
    torch = _import_torch()
    if threads:
        torch.set_num_threads(threads)
    print(json.dumps({"info": torch_info(), "mirror_check": mirror_check(torch)}), flush=True)
    for line in sys.stdin:
        req = json.loads(line)
        try:
            out = torch_worker(req["cfg"], req["sections"], threads, check=False)
        except Exception as e:             # noqa: BLE001 -- reported in the bench's output
            out = {"error": f"{type(e).__name__}: {e}"}
        print(json.dumps(out, default=float), flush=True)


def _add_totals(sec, rows):
    """The summary rows of a section: all 13 convs, all 5 pools, the three k64 s32."""
    if sec == "convs" and rows:
        return rows + [total(rows, "13 convs" if len(rows) == 13 else f"{len(rows)} convs")]
    if sec == "pools" and rows:
        return rows + [total(rows, "5 pools")]
    if sec == "deconvs":
        k64 = [x for x in rows if "k64 s32" in x["shape"]]
        return rows + ([total(k64, "k64 s32 (3 sizes)")] if len(k64) > 1 else [])
    return rows


def best_of(rounds):
    """Rows of several rounds merged: each (op, impl) keeps its fastest round's figures.
    This host slows down under sustained load and recovers when idle, by as much as 1.6x;
    interleaving our rounds with PyTorch's and keeping each side's best keeps the two sides'
    figures from different speed phases."""
    merged = {}
    for rows in rounds:
        for r in rows:
            key = (r["op"], r["impl"])
            if key not in merged:
                merged[key] = dict(r)
                continue
            m = merged[key]
            for col in ("fwd_ms", "fwdbwd_ms"):
                if col in r and r[col] < m.get(col, float("inf")):
                    m[col] = r[col]
                    m[col.replace("_ms", "_runs_ms")] = r.get(col.replace("_ms", "_runs_ms"))
            for col in ("fwd_x", "fwdbwd_x"):
                if col in r:
                    m[col] = max(m.get(col, 0.0), r[col])
            m["rounds"] = m.get("rounds", 1) + 1
    out = list(merged.values())
    for r in out:
        if "gflop" in r:
            r["fwd_gflops"] = r["gflop"] / (r["fwd_ms"] / 1e3)
            if "fwdbwd_ms" in r and r.get("fwdbwd_gflops"):
                factor = r.get("bwd_factor", 3.0)
                r["fwdbwd_gflops"] = factor * r["gflop"] / (r["fwdbwd_ms"] / 1e3)
    return out


def run(args):
    """Time everything asked for; returns the results dict (also what --json writes)."""
    cfg = settings(args.quick)
    if args.repeat:
        cfg["repeat"] = cfg["net_repeat"] = args.repeat
    rounds = args.rounds or (1 if args.quick else 2)
    sections = args.sections or list(SECTIONS)
    devices = args.devices or ["cpu", "numpy"]
    with_torch = torch_available() if args.torch is None else args.torch
    if with_torch and not torch_available():
        raise ValueError("--torch: PyTorch is not installed here")
    if args.threads:
        _set_threads(args.threads)
    F.relu(np.ones(4, np.float32), device="cpu")       # start Numba's threads (for the report)
    results = {"settings": cfg, "sections": sections, "devices": devices, "rounds": rounds}
    sim = False
    if "cuda" in devices:
        ok, sim = _cuda_ready()
        if not ok:
            from .kernels import DeviceUnavailable
            raise DeviceUnavailable("device 'cuda' is not available (no GPU; set "
                                    "NUMBA_ENABLE_CUDASIM=1 for the simulator)")
        if sim:
            # the simulator runs every CUDA thread in Python: time only the smallest ops
            results["cuda_note"] = "CUDA simulator: tiny op shapes only, times meaningless"
    info = machine_info()
    info["command"] = command_line(args)
    info["sgemm_gflops"] = sgemm_gflops(512 if args.quick else 2048)
    log = lambda s: print(s, file=sys.stderr, flush=True)      # noqa: E731
    t_start = time.perf_counter()

    tp = None
    if with_torch and any(s != "memory" for s in sections):
        log("bench: PyTorch in a separate process")
        tp = TorchProcess(args.threads)
        if "error" in tp.hello:
            results["torch_error"] = tp.hello["error"]
            log(f"bench: {tp.hello['error']}")
            tp.close()
            tp = None
        else:
            info["torch"] = tp.hello.get("info")
            results["torch_mirror_check"] = tp.hello.get("mirror_check")

    def dev_cfg(device):
        if device == "cuda" and sim:
            tiny = settings(True)
            tiny.update(repeat=1, warmup=0, size=8, width_div=32, conv_names=["conv1_1",
                                                                             "conv2_1"],
                        deconvs=[("up2_2x2", 3, 4, 2, 2, False)], loss=(3, 8))
            return tiny
        return cfg

    def runs_on(device, sec):
        c = dev_cfg(device)
        if sec == "memory" or (device == "cuda" and sim and sec not in (
                "convs", "pools", "deconvs", "loss")):
            return False
        if device == "numpy" and (sec == "patches" or (sec == "fcn" and not c["quick"])):
            return False                  # the reference at full size would take minutes
        return True

    def ours(device, sec):
        c = dev_cfg(device)
        log(f"bench: {sec} on {device}")
        if sec == "convs":
            if device == "numpy":
                r = bench_convs(device, c, size=c["numpy_size"])
                for x in r:
                    x["note"] = f"numpy reference at {c['numpy_size']}x{c['numpy_size']}"
                return r
            return bench_convs(device, c, names=c.get("conv_names"))
        if sec == "pools":
            return bench_pools(device, c, size=c["numpy_size"] if device == "numpy" else None)
        if sec == "deconvs":
            return bench_deconvs(device, c)
        if sec == "loss":
            return bench_loss(device, c)
        if sec == "fcn":
            if device == "numpy":
                c = dict(c, fcn=dict(c["fcn"], sizes=c["fcn"]["sizes"][:1]))
            r, layers = bench_fcn_ours(device, c)
            if layers and device == "cpu":
                old = results.get("fcn_layers")
                if not old or sum(map(sum, layers["ms"].values())) < sum(
                        map(sum, old["ms"].values())):
                    results["fcn_layers"] = layers
            return r
        if sec == "patches":
            return bench_patches_ours(device, c)
        if sec == "tiny":
            r, ms = bench_tiny_ours(device, c)
            if device == "cpu":
                results["tiny_layers"] = dict(ms, impl="cpu")
            return r
        raise ValueError(sec)

    try:
        for sec in sections:
            if sec == "memory":
                results[sec] = bench_memory(cfg, with_torch) if "cpu" in devices else []
                continue
            per_round = []
            for rnd in range(rounds):
                rows = []
                for device in devices:
                    if runs_on(device, sec) and (rnd == 0 or device != "numpy"):
                        rows += _add_totals(sec, ours(device, sec))
                if tp is not None:
                    log(f"bench: {sec} on torch")
                    out = tp.run(cfg, sec)
                    if "error" in out:
                        results["torch_error"] = out["error"]
                        log(f"bench: PyTorch: {out['error']}")
                    else:
                        rows += _add_totals(sec, out.get(sec, []))
                        if out.get("fcn_layers"):
                            results["fcn_layers_torch"] = out["fcn_layers"]
                per_round.append(rows)
            results[sec] = best_of(per_round)
    finally:
        if tp is not None:
            tp.close()
    info["seconds"] = time.perf_counter() - t_start
    results["machine"] = info
    results["targets"] = targets(results)
    return results


def report(results):
    """The markdown report: machine, then one table per section, then the targets."""
    info = results["machine"]
    impls = list(results["devices"]) + [TORCH]
    out = [f"**Machine:** {format_machine(info)}", "",
           f"**Command:** `{info.get('command', '')}` ({info.get('seconds', 0):.0f} s)"]
    if results.get("cuda_note"):
        out.append(f"\n_{results['cuda_note']}_")
    if results.get("torch_error"):
        out.append(f"\n_PyTorch: {results['torch_error']}_")
    if results.get("torch_mirror_check") is not None:
        out.append(f"\nPyTorch runs in its own process, on the same nets (built from ours, "
                   f"our weights; scores agree to {results['torch_mirror_check']:.1e} "
                   f"relative).")
    titles = {"convs": "VGG16 convolutions (224x224, batch 1)",
              "pools": "VGG16 max-pools (2x2 stride 2)",
              "deconvs": "Upsampling deconvolutions (bilinear weight; frozen: dx only; GFLOP/s "
                         "counts the dense product PyTorch computes -- ours skips the zeros)",
              "loss": "Softmax loss", "fcn": "FCN-8s (VGG16), batch 1",
              "memory": "Peak memory of a training step (fresh process each)",
              "patches": "Section 3.1: classifier on patches vs FCN on the whole image",
              "tiny": "The demo's training step (fcn8s_tiny)"}
    for sec in results["sections"]:
        rows = results.get(sec) or []
        if not rows:
            continue
        out += ["", f"### {titles.get(sec, sec)}", ""]
        if sec == "memory":
            out.append(markdown(rows, ("op", "impl", "shape", "peak_rss_mb",
                                       "peak_over_imports_mb", "rss_after_imports_mb",
                                       "numpy_traced_peak_mb", "note")))
        elif sec == "patches":
            out.append(markdown(rows, ("op", "impl", "shape", "fwd_ms", "fwdbwd_ms", "fwd_x",
                                       "fwdbwd_x")))
        else:
            labels = {}
            if sec in ("convs", "pools") and "numpy" in results["devices"]:
                n = results["settings"]["numpy_size"]
                labels["numpy"] = f"numpy ({n}x{n})"
            out.append(side_by_side(rows, impls, labels=labels))
            notes = sorted({r["note"] for r in rows if r.get("note")})
            if notes:
                out.append("\n" + "; ".join(notes))
        if sec == "fcn" and results.get("fcn_layers"):
            lay = results["fcn_layers"]
            out += ["", f"Per layer at {lay['size']}x{lay['size']} (cpu, median of the training"
                    f" steps; PyTorch forward beside):", "",
                    layer_table(lay, results.get("fcn_layers_torch"))]
        if sec == "tiny" and results.get("tiny_layers"):
            out += ["", "Per layer (cpu), the 8 slowest:", "",
                    layer_table(results["tiny_layers"], top=8)]
    out += ["", "### Targets", "", targets_table(results["targets"])]
    return "\n".join(out)


def write_json(path, payload):
    atomic_write_text(path, json.dumps(payload, indent=1, default=float))


def main(args):
    """`minifcn bench`: run, print the report, write --json / --markdown. Returns 0."""
    if getattr(args, "worker", None):
        return _worker_main(args.worker)
    results = run(args)
    text = report(results)
    print(text)
    if args.json:
        write_json(args.json, results)
    if args.markdown:
        atomic_write_text(args.markdown, text + "\n")
    return 0


if __name__ == "__main__":
    ap = argparse.ArgumentParser(prog="python -m minifcn.bench")
    add_arguments(ap)
    sys.exit(main(ap.parse_args()))
