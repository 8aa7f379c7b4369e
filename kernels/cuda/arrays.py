"""The array chores of the CUDA device: where a Net's arrays live (asarray, to_host) and the
little arithmetic a Net and a solver do between ops (zeros_like, add, accumulate). Twin:
kernels/reference.py, section "arrays" (the host devices use the reference's one-liners).
"""
from __future__ import annotations

from .pointwise import _axpby_kernel
from .util import cuda, empty, flat, in_place, launch, on_device, to_device, to_host, zeros

__all__ = ["asarray", "to_host", "zeros_like", "add", "accumulate"]


asarray = to_device     # the dispatch table's "asarray": as this device holds arrays


def zeros_like(a):
    """A device array of zeros with a's shape and dtype."""
    return zeros(a.shape, a.dtype)


def add(a, b):
    """a + b as a new device array (two gradients reaching one blob)."""
    a, b = on_device(a, b)
    if tuple(a.shape) != tuple(b.shape):
        raise ValueError(f"add: shapes {tuple(a.shape)} and {tuple(b.shape)} differ")
    T = a.dtype.type
    y = empty(a.shape, a.dtype)
    _axpby_kernel[launch(y.size)](T(1), flat(a), T(1), flat(b), flat(y))
    return y


@cuda.jit
def _accumulate_kernel(dst, src):
    for t in range(cuda.grid(1), dst.size, cuda.gridsize(1)):
        dst[t] += src[t]


def accumulate(dst, src):
    """dst += src in place (gradients summed over iter_size passes); returns dst."""
    (src,) = on_device(src)
    if tuple(dst.shape) != tuple(src.shape):
        raise ValueError(f"accumulate: shapes {tuple(dst.shape)} and {tuple(src.shape)} differ")

    def step(d):
        _accumulate_kernel[launch(d.size)](d, flat(src))
    in_place("accumulate", (dst,), step)
    return dst
