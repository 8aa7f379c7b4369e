"""Pointwise ops on CUDA (relu, dropout, crop, the eltwise sums, scale, concat) and AlexNet's local
response normalisation, which works pixel by pixel across the channels. Twins:
kernels/reference.py, sections "pointwise" and "lrn"; the CPU's version: cpu/pointwise.py.
"""
from __future__ import annotations

import math
import warnings

import numpy as np

from .util import SIM, cuda, empty, flat, launch, on_device, typed

with warnings.catch_warnings():     # the simulator's version warns about its own jit options
    warnings.simplefilter("ignore")
    from numba.cuda.random import create_xoroshiro128p_states, xoroshiro128p_uniform_float32


# ----------------------------------------------------------------------------- pointwise
# Flat 1-D kernels over contiguous arrays: one thread per element, memory-bound, coalesced.
@cuda.jit
def _relu_kernel(x, slope, y):
    for t in range(cuda.grid(1), x.size, cuda.gridsize(1)):
        v = x[t]
        y[t] = v if v > 0 else v * slope


@cuda.jit
def _relu_backward_kernel(dout, x, slope, dx):
    for t in range(cuda.grid(1), x.size, cuda.gridsize(1)):
        d = dout[t]
        dx[t] = d if x[t] > 0 else d * slope


def relu(x, slope):
    """max(x, 0), or slope * x for x < 0."""
    (x,) = on_device(x)
    y = empty(x.shape, x.dtype)
    _relu_kernel[launch(x.size)](flat(x), x.dtype.type(slope), flat(y))
    return y


def relu_backward(dout, x, slope):
    """dout where x > 0, else slope * dout (x may be relu's output: same sign)."""
    dout, x = on_device(dout, x)
    dx = empty(x.shape, dout.dtype)
    _relu_backward_kernel[launch(x.size)](flat(dout), flat(x), dout.dtype.type(slope), flat(dx))
    return dx


@cuda.jit
def _relu_bits_kernel(x, slope, y, bits):
    # One thread a byte of bits: 8 elements, where y > 0 in np.packbits' order (high bit first)
    for j in range(cuda.grid(1), bits.size, cuda.gridsize(1)):
        b = 0
        for k in range(8):
            i = 8 * j + k
            if i < x.size:
                v = x[i]
                y[i] = v if v > 0 else v * slope
                if v > 0:
                    b |= 128 >> k
        bits[j] = b


@cuda.jit
def _relu_backward_bits_kernel(dout, bits, slope, dx):
    for t in range(cuda.grid(1), dout.size, cuda.gridsize(1)):
        d = dout[t]
        dx[t] = d if (bits[t >> 3] >> (7 - (t & 7))) & 1 else d * slope


def relu_bits(x, slope):
    """relu, and where its output is > 0 packed 8 to a byte (all that backward needs)."""
    (x,) = on_device(x)
    y, bits = empty(x.shape, x.dtype), empty(((x.size + 7) // 8,), np.uint8)
    _relu_bits_kernel[launch(bits.size)](flat(x), x.dtype.type(slope), flat(y), bits)
    return y, bits


def relu_backward_bits(dout, bits, slope):
    dout, bits = on_device(dout, bits)
    dx = empty(dout.shape, dout.dtype)
    _relu_backward_bits_kernel[launch(dout.size)](flat(dout), bits, dout.dtype.type(slope),
                                                  flat(dx))
    return dx


DROPOUT_BLOCKS = 1 if SIM else 64     # random streams = DROPOUT_BLOCKS * THREADS


@typed
def _dropout_kernel(T):
    @cuda.jit
    def kernel(x, p, keep_scale, states, y, mask):
        """Each thread owns one xoroshiro128+ stream (states[thread]) and draws one uniform per
        element it visits, so the mask is made on the device (no host-side random array copied
        over) and depends on the seed and the launch size."""
        tid = cuda.grid(1)
        for t in range(tid, x.size, cuda.gridsize(1)):
            keep = xoroshiro128p_uniform_float32(states, tid) >= p
            m = keep_scale if keep else T(0)
            mask[t] = m
            y[t] = x[t] * m
    return kernel


def dropout(x, p, rng, train):
    """-> (y, mask): keep each unit with probability 1 - p, scaled by 1/(1 - p); mask holds
    0 or 1/(1 - p) (None when nothing is dropped). The device streams are seeded from
    rng.integers(2**63), so a seeded rng gives a repeatable mask on a given GPU/launch size;
    it is not the reference's mask bit-for-bit."""
    (x,) = on_device(x)
    if not train or p == 0:
        return x, None
    # Few streams: numba seeds xoroshiro states on the host (a 2^64 jump-ahead per stream) and
    # copies them over, so a stream per thread of a full grid would cost more than the mask.
    blocks, threads = launch(x.size)
    blocks = min(blocks, DROPOUT_BLOCKS)
    y, mask = empty(x.shape, x.dtype), empty(x.shape, x.dtype)
    with warnings.catch_warnings():
        if SIM:     # the simulator runs xoroshiro's uint64 arithmetic in NumPy and object-mode
            warnings.simplefilter("ignore")     # jit, which warn about the intended wrap-around
        states = create_xoroshiro128p_states(blocks * threads, seed=int(rng.integers(2 ** 63)))
        T = x.dtype.type
        keep_scale = T(1) / T(1 - p)                # as the reference computes it
        _dropout_kernel(x.dtype)[blocks, threads](flat(x), np.float32(p), keep_scale, states,
                                                  flat(y), flat(mask))
    return y, mask


def dropout_backward(dout, mask):
    (dout,) = on_device(dout)
    if mask is None:
        return dout
    (mask,) = on_device(mask)
    dx = empty(dout.shape, dout.dtype)
    _mul_kernel[launch(dout.size)](flat(dout), flat(mask), flat(dx))
    return dx


@cuda.jit
def _mul_kernel(a, b, y):
    for t in range(cuda.grid(1), y.size, cuda.gridsize(1)):
        y[t] = a[t] * b[t]


@cuda.jit
def _crop_kernel(x, oy, ox, y):
    N, C, H, W = y.shape
    for t in range(cuda.grid(1), y.size, cuda.gridsize(1)):
        w = t % W
        h = (t // W) % H
        nc = t // (H * W)
        y[nc // C, nc % C, h, w] = x[nc // C, nc % C, h + oy, w + ox]


@cuda.jit
def _uncrop_kernel(dout, oy, ox, dx):
    """Writes every pixel of dx (the window from dout, zero elsewhere): no separate memset."""
    N, C, H, W = dx.shape
    Hd, Wd = dout.shape[2], dout.shape[3]
    for t in range(cuda.grid(1), dx.size, cuda.gridsize(1)):
        w = t % W
        h = (t // W) % H
        nc = t // (H * W)
        hh, ww = h - oy, w - ox
        if 0 <= hh < Hd and 0 <= ww < Wd:
            dx[nc // C, nc % C, h, w] = dout[nc // C, nc % C, hh, ww]
        else:
            dx[nc // C, nc % C, h, w] = 0


def crop(x, like_shape, offset):
    """x[:, :, o_h:o_h + H, o_w:o_w + W] as a new contiguous array, (H, W) = like_shape[-2:]."""
    (x,) = on_device(x)
    y = empty(x.shape[:2] + tuple(like_shape[-2:]), x.dtype)
    _crop_kernel[launch(y.size)](x, offset[0], offset[1], y)
    return y


def crop_backward(dout, x_shape, offset):
    (dout,) = on_device(dout)
    dx = empty(x_shape, dout.dtype)
    _uncrop_kernel[launch(dx.size)](dout, offset[0], offset[1], dx)
    return dx


@cuda.jit
def _channels_kernel(src, c0, dst, into):
    """Copy between src (N, Cs, H, W) and channels c0 .. c0 + Cs of dst (N, Cd, H, W): into
    dst when `into` (concat), out of it into src otherwise (its backward)."""
    N, Cs, H, W = src.shape
    Cd = dst.shape[1]
    for t in range(cuda.grid(1), src.size, cuda.gridsize(1)):
        w = t % W
        h = (t // W) % H
        c = (t // (H * W)) % Cs
        n = t // (Cs * H * W)
        if into:
            dst[n, c0 + c, h, w] = src[n, c, h, w]
        else:
            src[n, c, h, w] = dst[n, c0 + c, h, w]


def concat(xs):
    """The inputs' channels one after the other, one copy kernel per input."""
    xs = on_device(*xs)
    N, _, H, W = xs[0].shape
    y = empty((N, sum(x.shape[1] for x in xs), H, W), xs[0].dtype)
    c0 = 0
    for x in xs:
        _channels_kernel[launch(x.size)](x, c0, y, True)
        c0 += x.shape[1]
    return y


def concat_backward(dout, channels):
    (dout,) = on_device(dout)
    N, _, H, W = dout.shape
    out, c0 = [], 0
    for c in channels:
        dx = empty((N, c, H, W), dout.dtype)
        _channels_kernel[launch(dx.size)](dx, c0, dout, False)
        out.append(dx)
        c0 += c
    return out


@cuda.jit
def _axpby_kernel(a, x, b, z, y):
    for t in range(cuda.grid(1), y.size, cuda.gridsize(1)):
        y[t] = a * x[t] + b * z[t]


@cuda.jit
def _scale_kernel(x, c, y):
    for t in range(cuda.grid(1), y.size, cuda.gridsize(1)):
        y[t] = x[t] * c


def scale(x, c):
    """c * x."""
    (x,) = on_device(x)
    y = empty(x.shape, x.dtype)
    _scale_kernel[launch(x.size)](flat(x), x.dtype.type(c), flat(y))
    return y


def eltwise_sum(xs, coeffs):
    """sum_i coeffs[i] * xs[i]: two inputs per pass (FCN's skip sums have exactly two)."""
    xs = on_device(*xs)
    if len(xs) == 1:
        return scale(xs[0], coeffs[0])
    T = xs[0].dtype.type
    y = empty(xs[0].shape, xs[0].dtype)
    yf = flat(y)
    _axpby_kernel[launch(y.size)](T(coeffs[0]), flat(xs[0]), T(coeffs[1]), flat(xs[1]), yf)
    for x, c in zip(xs[2:], coeffs[2:]):
        _axpby_kernel[launch(y.size)](T(1), yf, T(c), flat(x), yf)
    return y


# ----------------------------------------------------------------------------- lrn
# One thread per element, looping over its channel window (size is 5 in AlexNet): reads stay
# coalesced along w, and there is no cross-thread dependency to synchronise.
@typed
def _lrn_kernel(T):
    @cuda.jit
    def kernel(x, size, alpha_n, beta, k, y):
        N, C, H, W = x.shape
        pre = (size - 1) // 2
        for t in range(cuda.grid(1), x.size, cuda.gridsize(1)):
            w = t % W
            h = (t // W) % H
            c = (t // (H * W)) % C
            n = t // (C * H * W)
            s = T(0)
            for cc in range(max(0, c - pre), min(C, c - pre + size)):
                v = x[n, cc, h, w]
                s += v * v
            y[n, c, h, w] = x[n, c, h, w] * math.pow(k + alpha_n * s, -beta)
    return kernel


@typed
def _lrn_prep_kernel(T):
    @cuda.jit
    def kernel(dout, x, size, alpha_n, beta, k, sb, tt):
        """sb = scale^-beta and tt = dout * y / scale = dout * x * scale^(-beta-1)."""
        N, C, H, W = x.shape
        pre = (size - 1) // 2
        for t in range(cuda.grid(1), x.size, cuda.gridsize(1)):
            w = t % W
            h = (t // W) % H
            c = (t // (H * W)) % C
            n = t // (C * H * W)
            s = T(0)
            for cc in range(max(0, c - pre), min(C, c - pre + size)):
                v = x[n, cc, h, w]
                s += v * v
            scale = k + alpha_n * s
            p = math.pow(scale, -beta)
            sb[n, c, h, w] = p
            tt[n, c, h, w] = dout[n, c, h, w] * x[n, c, h, w] * p / scale
    return kernel


@typed
def _lrn_back_kernel(T):
    @cuda.jit
    def kernel(dout, x, sb, tt, size, coef, dx):
        """dx[c] = dout[c] sb[c] - coef x[c] sum of tt over the windows holding c, i.e.
        c' in [c - (size-1-pre), c + pre]."""
        N, C, H, W = x.shape
        pre = (size - 1) // 2
        for t in range(cuda.grid(1), x.size, cuda.gridsize(1)):
            w = t % W
            h = (t // W) % H
            c = (t // (H * W)) % C
            n = t // (C * H * W)
            s = T(0)
            for cc in range(max(0, c - (size - 1 - pre)), min(C, c + pre + 1)):
                s += tt[n, cc, h, w]
            dx[n, c, h, w] = dout[n, c, h, w] * sb[n, c, h, w] - coef * x[n, c, h, w] * s
    return kernel


def lrn(x, size, alpha, beta, k):
    """y = x * (k + alpha/size * sum of x^2 over the channel window)^-beta."""
    (x,) = on_device(x)
    T = x.dtype.type
    y = empty(x.shape, x.dtype)
    _lrn_kernel(x.dtype)[launch(x.size)](x, size, T(alpha / size), T(beta), T(k), y)
    return y


def lrn_backward(dout, x, size, alpha, beta, k):
    """dx, in two passes: per element scale^-beta and dout*y/scale, then the window sums."""
    dout, x = on_device(dout, x)
    T = x.dtype.type
    sb, tt, dx = empty(x.shape, x.dtype), empty(x.shape, x.dtype), empty(x.shape, x.dtype)
    _lrn_prep_kernel(x.dtype)[launch(x.size)](dout, x, size, T(alpha / size), T(beta), T(k),
                                              sb, tt)
    _lrn_back_kernel(x.dtype)[launch(x.size)](dout, x, sb, tt, size,
                                              T(2 * alpha * beta / size), dx)
    return dx
