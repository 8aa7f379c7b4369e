"""When a kernel runs on one thread. Twin: none (the reference is single-threaded anyway).

Every parallel region (a prange loop, an OpenBLAS GEMM) is a fork and a join: all threads must
be woken and all must finish. On a machine with few cores that other processes share, a woken
thread often waits for a time slice, and a convolution of a few milliseconds then takes tens.
Measured on the shared 2-core dev machine (load 4-7), fcn8s_tiny's convolutions (batch 8, 64x64,
28-151 MFLOP each): 2 threads 3-60 ms forward and 15-290 ms backward, best of 15; 1 thread 1-17
ms and 3-52 ms. So an op below SMALL_FLOPS runs on one thread (Numba's and OpenBLAS's); bigger
ones (VGG16's at 224: 1.8-3.7 GFLOP) keep every thread, where the work outweighs the joins.
Between TINY_FLOPS and SMALL_FLOPS the GEMMs still use both cores, as independent one-thread
GEMMs (matmul below) cut the same way whatever the thread count: on the idle machine
fcn8s_tiny's training step, best of 18, went from 61 to 50 ms (benchmarks/tiny_threads.py).
"""
from __future__ import annotations

import contextlib
from concurrent.futures import ThreadPoolExecutor

import numba
import numpy as np

SMALL_FLOPS = 2.5e8        # multiply-adds x 2 of the forward pass; 0 turns the rule off
TINY_FLOPS = 2e7           # below this, no worker threads either (tests' shapes; see matmul)
_blas = None               # numpy's OpenBLAS, through threadpoolctl (found on first use)
_split = 0                 # matmul's worker count inside one_thread_if_small; 0: plain matmul
_workers = None            # the thread pool matmul hands its other parts to (made on first use)


def _blas_lib():
    global _blas
    if _blas is None:
        from threadpoolctl import ThreadpoolController
        libs = ThreadpoolController().select(user_api="blas").lib_controllers
        _blas = next((lib for lib in libs if "numpy" in (lib.filepath or "")),
                     libs[0] if libs else False)
    return _blas


@contextlib.contextmanager
def one_thread_if_small(flops):
    """Run the block's GEMMs on one BLAS thread when `flops` is below SMALL_FLOPS (a few
    microseconds to switch), else as it is. From TINY_FLOPS up, the block's matmul() calls
    still use Numba's thread count, as independent one-thread GEMMs; below it, Numba's loops
    run on one thread too."""
    # OpenBLAS on two threads cuts a GEMM differently from one, and its float sums (so a
    # seeded run's result) would depend on the count: so small GEMMs always run on one BLAS
    # thread, and matmul() cuts them the same way whatever the count. Numba's loops give the
    # same bits on any number of threads (each output is one thread's work).
    global _split
    if flops >= SMALL_FLOPS:
        yield
        return
    lib, n = _blas_lib(), numba.get_num_threads()
    nb = lib.num_threads if lib else 1
    tiny = flops < TINY_FLOPS
    if tiny and n > 1:
        numba.set_num_threads(1)
    if nb > 1:
        lib.set_num_threads(1)
    before, _split = _split, 0 if tiny else n
    try:
        yield
    finally:
        _split = before
        if tiny and n > 1:
            numba.set_num_threads(n)
        if nb > 1:
            lib.set_num_threads(nb)


def matmul(a, b, out):
    """np.matmul(a, b, out=out); inside one_thread_if_small for an op of TINY_FLOPS or more,
    cut into independent one-thread GEMMs spread over Numba's thread count of Python threads
    (numpy lets go of the GIL in BLAS). The cut does not depend on that count, so neither do
    the bits: a stack of matrices is cut between its matrices (each one GEMM either
    way), a 2-D product always into the same two column halves."""
    n = _split
    if n == 0 or out.ndim > 2 and not len(a) == len(b) == len(out):    # (a broadcast stack)
        return np.matmul(a, b, out=out)
    if out.ndim > 2:
        cuts = np.linspace(0, len(out), min(n, len(out)) + 1).astype(int)
        parts = [(a[i:j], b[i:j], out[i:j]) for i, j in zip(cuts[:-1], cuts[1:])]
    else:
        h = out.shape[1] // 2
        parts = [(a, b[:, :h], out[:, :h]), (a, b[:, h:], out[:, h:])] if h else [(a, b, out)]
    if n == 1:
        for x, y, o in parts:
            np.matmul(x, y, out=o)
        return out
    global _workers
    if _workers is None:
        _workers = ThreadPoolExecutor(max(1, numba.config.NUMBA_NUM_THREADS - 1),
                                      thread_name_prefix="minifcn-gemm")
    futures = [_workers.submit(np.matmul, x, y, out=o) for x, y, o in parts[1:]]
    np.matmul(*parts[0][:2], out=parts[0][2])
    for f in futures:
        f.result()
    return out
