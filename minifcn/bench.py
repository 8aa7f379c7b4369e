"""Benchmarks: time ops and nets, report ms and GFLOP/s with the machine they ran on.

Speed is measured here, never asserted by tests. Every report carries the machine: CPU,
cores, Numba's threading layer and thread count, and the BLAS numpy calls (threadpoolctl) --
on some machines an OPENBLAS_CORETYPE setting silently halves OpenBLAS's speed, so the BLAS
kernel in use is part of every figure.
"""
from __future__ import annotations

import datetime
import json
import os
import platform
import statistics
import time

import numpy as np

from . import functional as F
from .kernels.geometry import conv_out

# VGG16's 13 convolutions as (name, C_in, C_out, input size at a 224 input) and its 5 pools.
VGG16_CONVS = [("conv1_1", 3, 64, 1), ("conv1_2", 64, 64, 1), ("conv2_1", 64, 128, 2),
               ("conv2_2", 128, 128, 2), ("conv3_1", 128, 256, 4), ("conv3_2", 256, 256, 4),
               ("conv3_3", 256, 256, 4), ("conv4_1", 256, 512, 8), ("conv4_2", 512, 512, 8),
               ("conv4_3", 512, 512, 8), ("conv5_1", 512, 512, 16), ("conv5_2", 512, 512, 16),
               ("conv5_3", 512, 512, 16)]
VGG16_POOLS = [("pool1", 64, 1), ("pool2", 128, 2), ("pool3", 256, 4), ("pool4", 512, 8),
               ("pool5", 512, 16)]


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
            for i in threadpool_info() if i.get("user_api") == "blas"]
    try:
        layer = numba.threading_layer()
    except ValueError:                      # no parallel kernel has run yet
        layer = "not yet initialised"
    return {"date": datetime.date.today().isoformat(), "cpu": cpu, "cores": os.cpu_count(),
            "python": platform.python_version(), "numpy": np.__version__,
            "numba": numba.__version__, "numba_threads": numba.get_num_threads(),
            "numba_threading_layer": layer, "blas": blas,
            "OPENBLAS_CORETYPE": os.environ.get("OPENBLAS_CORETYPE", "(unset)")}


def format_machine(info):
    blas = "; ".join(f"{b['internal_api']} {b['version']} kernel {b['architecture']}, "
                     f"{b['num_threads']} threads" for b in info["blas"]) or "unknown"
    return (f"{info['date']} | {info['cpu']} | {info['cores']} cores | numba "
            f"{info['numba']} ({info['numba_threading_layer']}, {info['numba_threads']} threads)"
            f" | numpy {info['numpy']} | BLAS: {blas} | OPENBLAS_CORETYPE="
            f"{info['OPENBLAS_CORETYPE']}")


def timeit(fn, repeat=5, warmup=1):
    """Median wall time of fn() in seconds, after `warmup` untimed calls (JIT, caches)."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def conv_flops(n, c_in, c_out, h_out, w_out, kh, kw, groups=1):
    """Multiply-adds x 2 of a forward convolution (backward costs twice that)."""
    return 2.0 * n * c_out * h_out * w_out * (c_in // groups) * kh * kw


def vgg_convs(device, size=224, batch=1, repeat=3, dtype=np.float32, seed=0):
    """Forward and forward+backward of each of VGG16's 13 conv layers at `size`."""
    rng = np.random.default_rng(seed)
    rows = []
    for name, cin, cout, down in VGG16_CONVS:
        h = -(-size // down)
        x = rng.standard_normal((batch, cin, h, h)).astype(dtype)
        w = (rng.standard_normal((cout, cin, 3, 3)) * 0.05).astype(dtype)
        b = np.zeros(cout, dtype)
        y = F.conv2d(x, w, b, pad=1, device=device)
        dy = np.ones_like(y)
        fwd = timeit(lambda: F.conv2d(x, w, b, pad=1, device=device), repeat)
        both = timeit(lambda: (F.conv2d(x, w, b, pad=1, device=device),
                               F.conv2d_backward(dy, x, w, pad=1, device=device)), repeat)
        flops = conv_flops(batch, cin, cout, conv_out(h, 3, 1, 1), conv_out(h, 3, 1, 1), 3, 3)
        rows.append({"op": name, "device": device, "shape": f"{batch}x{cin}x{h}x{h}",
                     "fwd_ms": fwd * 1e3, "fwdbwd_ms": both * 1e3,
                     "fwd_gflops": flops / fwd / 1e9, "fwdbwd_gflops": 3 * flops / both / 1e9})
    return rows


def vgg_pools(device, size=224, batch=1, repeat=5, dtype=np.float32, seed=0):
    """Forward and forward+backward of VGG16's five 2x2 max-pools at `size`."""
    rng = np.random.default_rng(seed)
    rows = []
    for name, c, down in VGG16_POOLS:
        h = -(-size // down)
        x = rng.standard_normal((batch, c, h, h)).astype(dtype)
        y, arg = F.max_pool2d(x, 2, 2, device=device)
        dy = np.ones_like(y)
        fwd = timeit(lambda: F.max_pool2d(x, 2, 2, device=device), repeat)
        both = timeit(lambda: F.max_pool2d_backward(
            dy, F.max_pool2d(x, 2, 2, device=device)[1], x.shape, device=device), repeat)
        rows.append({"op": name, "device": device, "shape": f"{batch}x{c}x{h}x{h}",
                     "fwd_ms": fwd * 1e3, "fwdbwd_ms": both * 1e3})
    return rows


def total(rows, label):
    """A summary row adding up the ms (and overall GFLOP/s where flops are known)."""
    out = {"op": label, "device": rows[0]["device"], "shape": "",
           "fwd_ms": sum(r["fwd_ms"] for r in rows), "fwdbwd_ms": sum(r["fwdbwd_ms"] for r in rows)}
    if "fwd_gflops" in rows[0]:
        gf = sum(r["fwd_gflops"] * r["fwd_ms"] for r in rows) / 1e3
        out["fwd_gflops"] = gf / (out["fwd_ms"] / 1e3)
        out["fwdbwd_gflops"] = 3 * gf / (out["fwdbwd_ms"] / 1e3)
    return out


def markdown(rows, columns=("op", "device", "shape", "fwd_ms", "fwdbwd_ms", "fwd_gflops",
                            "fwdbwd_gflops")):
    cols = [c for c in columns if any(c in r for r in rows)]
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for r in rows:
        cells = [f"{r[c]:.2f}" if isinstance(r.get(c), float) else str(r.get(c, ""))
                 for c in cols]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def write_json(path, payload):
    tmp = f"{path}.tmp"
    with open(tmp, "w") as f:
        json.dump(payload, f, indent=1, default=str)
    os.replace(tmp, path)
