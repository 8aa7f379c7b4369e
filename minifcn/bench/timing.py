"""How a figure is taken: warm-up calls, then the median of timed runs; our arrays placed on
the device once and the device synchronised before each clock read; the machine the figures
were measured on (CPU, threads, Numba's threading layer, and the BLAS kernel numpy calls --
on some machines an OPENBLAS_CORETYPE setting silently halves OpenBLAS's speed, so the
bench restarts itself without it: restart_without_blas_env)."""
from __future__ import annotations

import datetime
import os
import platform
import statistics
import sys
import time

import numpy as np

from .. import functional as F
from .. import DeviceUnavailable


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
    """Run our functional ops on one device: arrays moved there once (F.asarray), results
    synchronised before the clock is read."""

    def __init__(self, device):
        self.device = device
        self.sync = None
        if device == "cuda":
            from numba import cuda
            self.sync = cuda.synchronize

    def arr(self, a):
        return F.asarray(a, device=self.device)


def cuda_ready():
    """(whether our cuda device runs here, whether it is Numba's simulator)."""
    try:
        F.asarray(np.zeros(1, np.float32), device="cuda")     # loads the cuda kernels
    except DeviceUnavailable:              # no GPU, no simulator: nothing to time there
        return False, False
    from ..kernels import cuda
    return True, cuda.SIM


# ----------------------------------------------------------------------------- BLAS settings
# OpenBLAS reads these once, when numpy loads it: OPENBLAS_CORETYPE forces a kernel (Haswell's
# on a newer CPU: VGG16's convolutions measured 1.11x PyTorch's time with it, 1.04x without),
# OPENBLAS_L2_SIZE its blocking. So that the bench measures the same whatever the shell says,
# `minifcn bench` restarts itself once without them and reports what they were.
BLAS_ENV = ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE")
_UNSET = "MINIFCN_BENCH_UNSET_BLAS_ENV"     # what the restart removed, for the report


def restart_without_blas_env():
    """Re-exec this command (the same interpreter and arguments) without BLAS_ENV, if any of
    them is set; returns only when none is. MINIFCN_BENCH_KEEP_BLAS_ENV=1 keeps them."""
    found = {k: os.environ[k] for k in BLAS_ENV if k in os.environ}
    if not found or os.environ.get("MINIFCN_BENCH_KEEP_BLAS_ENV") == "1":
        return
    env = {k: v for k, v in os.environ.items() if k not in found}
    env[_UNSET] = ", ".join(f"{k}={v}" for k, v in found.items())
    sys.stdout.flush()
    sys.stderr.flush()
    os.execve(sys.executable, [sys.executable] + sys.orig_argv[1:], env)


def blas_env_note():
    """The BLAS settings of this process, as the report states them."""
    note = {k: os.environ[k] + (" (kept: MINIFCN_BENCH_KEEP_BLAS_ENV=1)"
                                if os.environ.get("MINIFCN_BENCH_KEEP_BLAS_ENV") == "1"
                                else " (in effect: this run was not restarted without it)")
            for k in BLAS_ENV if k in os.environ}
    if os.environ.get(_UNSET):
        note["unset by the bench"] = os.environ[_UNSET]
    return note


def set_threads(n):
    """Numba's and numpy's BLAS thread counts (PyTorch's is set in its own process)."""
    import numba
    from threadpoolctl import threadpool_limits
    numba.set_num_threads(n)
    threadpool_limits(n, user_api="blas")


# ----------------------------------------------------------------------------- the machine
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
    env = {k: os.environ[k] for k in ("OMP_NUM_THREADS", "OMP_WAIT_POLICY", "GOMP_SPINCOUNT",
                                      "NUMBA_NUM_THREADS", "NUMBA_THREADING_LAYER")
           if k in os.environ}
    env.update(blas_env_note())
    cpu_mod = sys.modules.get("minifcn.kernels.cpu")
    for k in getattr(cpu_mod, "SET_BY_US", {}):
        if k in env:
            env[k] += " (set by minifcn's cpu kernels; not in PyTorch's process)"
    return {"date": datetime.datetime.now().isoformat(timespec="seconds"), "cpu": cpu,
            "cores": os.cpu_count(), "python": platform.python_version(),
            "numpy": np.__version__, "numba": numba.__version__,
            "numba_threads": numba.get_num_threads(), "numba_threading_layer": layer,
            "blas": blas, "env": env}


def format_machine(info):
    """machine_info() as the report's one line."""
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
        tenv = ", ".join(f"{k}={v}" for k, v in t.get("env", {}).items()) or "none"
        line += (f" | torch {t['version']} ({t['threads']} threads, {t.get('blas', '?')}; "
                 f"env: {tenv})")
    return line


def sgemm_gflops(n=2048, repeat=3):
    """What numpy's BLAS does on a big float32 GEMM: the practical peak of this machine."""
    a = np.ones((n, n), np.float32)
    t = timeit(lambda: a @ a, repeat=repeat, warmup=1)["median"]
    return 2.0 * n ** 3 / t / 1e9
