"""Pointwise ops on the CPU (relu, dropout) and AlexNet's local response normalisation, which
works pixel by pixel across the channels. Twins: kernels/reference.py, sections "pointwise" and
"lrn" (crop, the eltwise sums and dropout's backward stay the reference's own: slicing and one
product either way).
"""
from __future__ import annotations

import numpy as np
from numba import njit, prange

# ----------------------------------------------------------------------------- pointwise
# Pointwise kernels take flat 1-D views (made in Python: a reshape inside a parallel Numba
# kernel can silently become a copy, and the writes would be lost).
@njit(parallel=True, cache=True)
def _relu(x, slope, out):
    s = x.dtype.type(slope)
    for i in prange(x.size):
        v = x[i]
        out[i] = v if v > 0 else v * s


@njit(parallel=True, cache=True)
def _relu_back(dout, x, slope, out):
    s = dout.dtype.type(slope)
    for i in prange(x.size):
        out[i] = dout[i] if x[i] > 0 else dout[i] * s


# The bits variant keeps only where relu's output is > 0, packed 8 to a byte as np.packbits
# does (first element in the high bit), so a net need not keep the float output for backward.
# Both loops stay plain SIMD loops over a chunk: the compare goes to a byte a element, and
# 8 bytes (read as one little-endian uint64, 0 or 1 each) pack to a byte by one multiply, or
# a byte spreads back to 8 (the bit tricks of Hacker's Delight, ch. 7). Slices of a chunk,
# not x[c * CH + i]: their indices are known >= 0, so Numba's wraparound check cannot block
# vectorising (a loop indexing the whole array here ran 7x slower).
_CHUNK = 4096                                         # elements a chunk: 512 bytes of bits
_PACK, _SPREAD, _PICK = (np.uint64(v) for v in (0x8040201008040201, 0x0101010101010101,
                                                0x0102040810204080))


@njit(cache=True)
def _chunk(c, a, out, bits):
    """Chunk c of a flat array, of the output and of the bits (the last chunk may be short)."""
    C = _CHUNK
    return a[c * C:(c + 1) * C], out[c * C:(c + 1) * C], bits[c * C // 8:(c + 1) * C // 8]


@njit(parallel=True, cache=True)
def _relu_bits(x, slope, out, bits):
    s = x.dtype.type(slope)
    for c in prange((x.size + _CHUNK - 1) // _CHUNK):
        xc, oc, bc = _chunk(c, x, out, bits)
        m = np.empty(_CHUNK, np.uint8)
        m[xc.size:] = 0                               # past the end: clear bits
        for i in range(xc.size):
            v = xc[i]
            oc[i] = v if v > 0 else v * s
            m[i] = v > 0
        w = m.view(np.uint64)
        for q in range(bc.size):                      # byte k of w -> bit 7 - k
            bc[q] = (w[q] * _PACK) >> np.uint64(56)


@njit(parallel=True, cache=True)
def _relu_back_bits(dout, bits, slope, out):
    s = dout.dtype.type(slope)
    for c in prange((dout.size + _CHUNK - 1) // _CHUNK):
        dc, oc, bc = _chunk(c, dout, out, bits)
        m = np.empty(_CHUNK, np.uint8)
        w = m.view(np.uint64)
        for q in range(bc.size):                      # bit 7 - k -> byte k (0 or not)
            w[q] = (np.uint64(bc[q]) * _SPREAD) & _PICK
        for i in range(dc.size):
            d = dc[i]
            oc[i] = d if m[i] != 0 else d * s


def _flat(a):
    return np.ascontiguousarray(a).reshape(-1)


def relu(x, slope):
    out = np.empty(x.shape, dtype=x.dtype)
    _relu(_flat(x), slope, out.reshape(-1))
    return out


def relu_backward(dout, x, slope):
    out = np.empty(dout.shape, dtype=dout.dtype)
    _relu_back(_flat(dout), _flat(x), slope, out.reshape(-1))
    return out


def relu_bits(x, slope):
    out, bits = np.empty(x.shape, dtype=x.dtype), np.empty((x.size + 7) // 8, np.uint8)
    _relu_bits(_flat(x), slope, out.reshape(-1), bits)
    return out, bits


def relu_backward_bits(dout, bits, slope):
    out = np.empty(dout.shape, dtype=dout.dtype)
    _relu_back_bits(_flat(dout), bits, slope, out.reshape(-1))
    return out


@njit(parallel=True, cache=True)
def _dropout(x, u, p, y, mask):
    keep = x.dtype.type(1.0 / (1.0 - p))
    zero = x.dtype.type(0)
    for i in prange(x.size):
        m = keep if u[i] >= p else zero
        mask[i] = m
        y[i] = x[i] * m


def dropout(x, p, rng, train):
    if not train or p == 0:
        return x, None
    u = rng.random(x.size)           # the same draws as the reference: same rng, same mask
    y, mask = np.empty(x.shape, dtype=x.dtype), np.empty(x.shape, dtype=x.dtype)
    _dropout(_flat(x), u, p, y.reshape(-1), mask.reshape(-1))
    return y, mask


# ----------------------------------------------------------------------------- lrn
# Across channels, pixel by pixel: a running window sum down the channels of each pixel.
@njit(parallel=True, cache=True)
def _lrn_scale(x, size, alpha, k, scale):
    """scale[n, c, h, w] = k + alpha/size * sum of x^2 over channels c-pre .. c-pre+size-1,
    a running window sum down the channels of each pixel."""
    N, C, H, W = x.shape
    pre = (size - 1) // 2
    a = alpha / size
    for t in prange(N * H):
        n, h = t // H, t % H
        for w in range(W):
            acc = 0.0
            for c in range(min(C, size - pre - 1)):      # the window of channel 0, minus one
                acc += x[n, c, h, w] * x[n, c, h, w]
            for c in range(C):
                add = c + size - pre - 1
                if add < C:
                    acc += x[n, add, h, w] * x[n, add, h, w]
                scale[n, c, h, w] = k + a * acc
                drop = c - pre
                if drop >= 0:
                    acc -= x[n, drop, h, w] * x[n, drop, h, w]


@njit(parallel=True, cache=True)
def _lrn_back(dout, x, scale, size, alpha, beta, dx):
    N, C, H, W = x.shape
    pre = (size - 1) // 2
    coef = 2.0 * alpha * beta / size
    for t in prange(N * H):
        n, h = t // H, t % H
        for w in range(W):
            # t_c = dout_c * y_c / scale_c = dout_c * x_c * scale_c^(-beta-1); channel c
            # collects t over c' in [c - (size-1-pre), c + pre]
            acc = 0.0
            for c in range(min(C, pre)):
                acc += dout[n, c, h, w] * x[n, c, h, w] * scale[n, c, h, w] ** (-beta - 1)
            for c in range(C):
                add = c + pre
                if add < C:
                    acc += dout[n, add, h, w] * x[n, add, h, w] * scale[n, add, h, w] ** (-beta - 1)
                s = scale[n, c, h, w]
                dx[n, c, h, w] = dout[n, c, h, w] * s ** -beta - coef * x[n, c, h, w] * acc
                drop = c - (size - 1 - pre)
                if drop >= 0:
                    acc -= dout[n, drop, h, w] * x[n, drop, h, w] * scale[n, drop, h, w] ** (
                        -beta - 1)


def lrn(x, size, alpha, beta, k):
    x = np.ascontiguousarray(x)
    scale = np.empty_like(x)
    _lrn_scale(x, size, alpha, k, scale)
    return x * scale ** x.dtype.type(-beta)


def lrn_backward(dout, x, size, alpha, beta, k):
    x = np.ascontiguousarray(x)
    scale = np.empty_like(x)
    _lrn_scale(x, size, alpha, k, scale)
    dx = np.empty_like(x)
    _lrn_back(np.ascontiguousarray(dout), x, scale, size, alpha, beta, dx)
    return dx
