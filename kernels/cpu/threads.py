"""When a kernel runs on one thread. Twin: none (the reference is single-threaded anyway).

Every parallel region (a prange loop, an OpenBLAS GEMM) is a fork and a join: all threads must
be woken and all must finish. On a machine with few cores that other processes share, a woken
thread often waits for a time slice, and a convolution of a few milliseconds then takes tens.
Measured on the shared 2-core dev machine (load 4-7), fcn8s_tiny's convolutions (batch 8, 64x64,
28-151 MFLOP each): 2 threads 3-60 ms forward and 15-290 ms backward, best of 15; 1 thread 1-17
ms and 3-52 ms. So an op below SMALL_FLOPS runs on one thread (Numba's and OpenBLAS's); bigger
ones (VGG16's at 224: 1.8-3.7 GFLOP) keep every thread, where the work outweighs the joins.
"""
from __future__ import annotations

import contextlib

import numba

SMALL_FLOPS = 2.5e8        # multiply-adds x 2 of the forward pass; 0 turns the rule off
_blas = None               # numpy's OpenBLAS, through threadpoolctl (found on first use)


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
    """Run the block on one thread when `flops` is below SMALL_FLOPS (a few microseconds to
    switch both pools), else as it is."""
    # Both pools are checked: with Numba on one thread but OpenBLAS on two, a small GEMM would
    # still be split, and its float sums (so a seeded run's result) would depend on the count.
    lib, n = _blas_lib(), numba.get_num_threads()
    nb = lib.num_threads if lib else 1
    if flops >= SMALL_FLOPS or (n == 1 and nb == 1):
        yield
        return
    numba.set_num_threads(1)
    if lib:
        lib.set_num_threads(1)
    try:
        yield
    finally:
        numba.set_num_threads(n)
        if lib:
            lib.set_num_threads(nb)
