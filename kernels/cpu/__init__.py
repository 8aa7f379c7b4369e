"""The "cpu" device: Numba CPU kernels, the loops of the engine, parallel over independent
planes with prange. One concept a file, each beside its twin section of kernels/reference.py:

  im2col.py     tiling budget, scratch slots, im2col / col2im, GEMM into the output   (conv)
  winograd.py   3x3 stride-1 convolutions by F(2x2, 3x3) and F(4x4, 3x3)             (conv)
  conv.py       conv2d, conv_transpose2d and their backwards: which route runs        (conv)
  pool.py       max and average pooling                                               (pool)
  pointwise.py  relu, dropout; LRN                                         (pointwise, lrn)
  loss.py       softmax cross-entropy                                                 (loss)
  solver.py     SGD and Adam steps, in place                                        (solver)
  threads.py    small convolutions on one thread (fork/join costs on shared cores)

The dispatcher (kernels/__init__.py) looks every op up by name on this package; any op not
defined here (crop, eltwise sums, dropout's backward, the array chores, scoring) falls back to
reference.py, as Caffe's GPU path defaults to its CPU one.

This file runs before any kernel module imports Numba: it chooses how Numba's threads wait.
"""
from __future__ import annotations

import os
import sys

# Numba's OpenMP threads spin after each parallel loop (libgomp's default: about 3 ms), and so
# do OpenBLAS's after each GEMM; with 2 cores the two pools then fight for them and every
# kernel waits for a time slice: a tiny FCN-8s training step (batch 8, 64x64) took 444 ms
# spinning, 125 ms waiting passively (2-core dev machine, 2026-11). But a sleeping thread
# costs a wake-up, ~50 us there, at every parallel loop, and a step runs hundreds. So the
# threads spin briefly and then sleep: GOMP_SPINCOUNT=3000 is 30-100 us there, long enough
# for the next kernel of a layer-by-layer step, too short to starve OpenBLAS (a GEMM that
# needs both cores is milliseconds). Since small GEMMs run on one thread (threads.py), the
# tiny step went 62 -> 47 ms with it (median of 12, alternating; benchmarks/RESULTS.md).
# Beside other busy processes it can cost instead (up to a third there): GOMP_SPINCOUNT=0.
# PASSIVE stays for OpenMP runtimes other than libgomp. Only set if the user chose neither;
# read by libgomp when Numba first starts its threads. SET_BY_US is what the bench leaves
# out of PyTorch's environment (its own libgomp would read it too).
_USER_WAIT_POLICY = "OMP_WAIT_POLICY" in os.environ or "GOMP_SPINCOUNT" in os.environ
SET_BY_US = {} if _USER_WAIT_POLICY else {"OMP_WAIT_POLICY": "PASSIVE",
                                          "GOMP_SPINCOUNT": "3000"}
os.environ.update(SET_BY_US)


def _openmp_already_loaded():
    """Was an OpenMP runtime loaded before us (PyTorch imported first brings its libgomp)?"""
    try:
        with open("/proc/self/maps") as f:
            return any("libgomp" in line or "libiomp" in line for line in f)
    except OSError:
        return "torch" in sys.modules


# ... but an OpenMP runtime loaded before this module (import torch; import minifcn) has read
# the environment already, and Numba's OpenMP layer ends up on its spinning threads: VGG16's 13
# convolutions, forward+backward, took 2.5 s instead of 0.5 s that way. Numba's workqueue layer
# has its own sleeping threads (0.52 s), so it is taken then, unless the user chose a layer.
if (not _USER_WAIT_POLICY and "NUMBA_THREADING_LAYER" not in os.environ
        and _openmp_already_loaded()):
    import numba  # noqa: E402
    numba.config.THREADING_LAYER = "workqueue"

# The ops, as the dispatch table finds them (getattr(this package, op)).
from .conv import (conv2d, conv2d_backward, conv_transpose2d,  # noqa: E402
                   conv_transpose2d_backward)
from .loss import softmax_cross_entropy  # noqa: E402
from .pointwise import (dropout, lrn, lrn_backward, relu, relu_backward,  # noqa: E402
                        relu_backward_bits, relu_bits)
from .pool import (avg_pool2d, avg_pool2d_backward, max_pool2d,  # noqa: E402
                   max_pool2d_backward)
from .solver import adam_update, sgd_update  # noqa: E402

__all__ = ["conv2d", "conv2d_backward", "conv_transpose2d", "conv_transpose2d_backward",
           "max_pool2d", "max_pool2d_backward", "avg_pool2d", "avg_pool2d_backward",
           "relu", "relu_backward", "relu_bits", "relu_backward_bits", "dropout", "lrn",
           "lrn_backward",
           "softmax_cross_entropy", "sgd_update", "adam_update"]
