"""Numba CUDA kernels: every op of kernels/reference.py, on the GPU.

Same names and signatures as the reference (the dispatcher looks them up by name). Arrays are
Numba device arrays, NCHW; host arrays are accepted too and copied over; results are always
device arrays (the loss is a Python float: it is reduced on the device and one number comes
back). ``to_device``, ``to_host`` and ``is_device_array`` move arrays for the rest of the engine
(in the dispatch table: ``asarray`` is ``to_device``); ``zeros_like``, ``add`` and
``accumulate`` are the Net's array chores; ``sgd_update``, ``adam_update``, ``argmax`` and
``confusion_update`` keep training and scoring on the device.

Every kernel walks its work with a grid-stride loop (``for t in range(cuda.grid(1), n,
cuda.gridsize(1))``): the launch size is a tuning choice, never a correctness one, which is
what lets the tests run tiny grids in Numba's simulator (NUMBA_ENABLE_CUDASIM=1).

Files: cuda_util.py (availability, launch sizes, copies, fills, the reduction), cuda_gemm.py
(the tiled GEMM), cuda_conv.py (im2col / col2im, the convolution drivers), cuda_pool.py,
cuda_train.py (solver steps, confusion histogram), and this file: convolution entry points,
pointwise ops, LRN and the loss. Every op is importable from here.
Importing it without a GPU or the simulator raises ImportError with the reason.
"""
from __future__ import annotations

import math
import warnings

import numpy as np

from . import cuda_conv
from .cuda_gemm import gemm  # noqa: F401  (public: the tiled GEMM on its own)
from .cuda_pool import (avg_pool2d, avg_pool2d_backward, max_pool2d,  # noqa: F401
                        max_pool2d_backward)
from .cuda_train import (accumulate, adam_update, argmax, confusion_update,  # noqa: F401
                         sgd_update)
from .cuda_util import (SIM, cuda, empty, fill, fill_channels, flat,  # noqa: F401
                        is_device_array, launch, sum_planes, to_device, to_host, typed, zeros)
from .geometry import conv_out, deconv_out

with warnings.catch_warnings():     # the simulator's version warns about its own jit options
    warnings.simplefilter("ignore")
    from numba.cuda.random import create_xoroshiro128p_states, xoroshiro128p_uniform_float32

def _dev(*arrays):
    return [None if a is None else to_device(a) for a in arrays]


# ----------------------------------------------------------------------------- convolution
def conv2d(x, w, b, stride, pad, dilation, groups):
    """y (N, F, Ho, Wo) = conv(x (N, C, H, W), w (F, C/groups, kh, kw)) + b (F,);
    Ho = floor((H + 2p - d(k-1) - 1) / s) + 1. The bias is written first and the GEMM adds
    onto it, so it costs no extra pass."""
    x, w, b = _dev(x, w, b)
    N, C, H, W = x.shape
    F, _, kh, kw = w.shape
    y = empty((N, F, conv_out(H, kh, stride[0], pad[0], dilation[0]),
               conv_out(W, kw, stride[1], pad[1], dilation[1])), x.dtype)
    if b is not None:
        fill_channels(y, b)
    cuda_conv.forward(x, w, y, stride, pad, dilation, groups, accumulate=b is not None)
    return y


def _bias_grad(dout):
    N, F, H, W = dout.shape
    return sum_planes(dout.reshape(N, F, H * W))


def conv2d_backward(dout, x, w, stride, pad, dilation, groups, need_dx=True, need_dw=True):
    """-> (dx (N, C, H, W) or None, dw (F, C/groups, kh, kw) or None, db (F,))."""
    dout, x, w = _dev(dout, x, w)
    dx = dw = None
    if need_dx:
        dx = zeros(x.shape, x.dtype)
        cuda_conv.backward_data(dout, w, dx, stride, pad, dilation, groups)
    if need_dw:
        dw = zeros(w.shape, w.dtype)
        cuda_conv.backward_weight(dout, x, dw, stride, pad, dilation, groups)
    return dx, dw, _bias_grad(dout)


def conv_transpose2d(x, w, b, stride, pad):
    """y (N, F, Ho, Wo) = transposed conv of x (N, C, H, W) with w (C, F, kh, kw) + b (F,);
    Ho = s(H - 1) + k - 2p. It is exactly the input gradient of the convolution that maps y's
    shape back to x's (weights w read as (C out, F in)), so it runs that code path: one GEMM
    w^T x per tile, then col2im paints the columns onto y (which starts as the bias)."""
    x, w, b = _dev(x, w, b)
    N, C, H, W = x.shape
    _, F, kh, kw = w.shape
    y = empty((N, F, deconv_out(H, kh, stride[0], pad[0]), deconv_out(W, kw, stride[1], pad[1])),
              x.dtype)
    if b is not None:
        fill_channels(y, b)
    else:
        fill(y, 0)
    cuda_conv.backward_data(x, w, y, stride, pad, (1, 1), 1)
    return y


def conv_transpose2d_backward(dout, x, w, stride, pad, need_dx=True, need_dw=True):
    """-> (dx (N, C, H, W), dw (C, F, kh, kw), db (F,)): dx is the plain convolution of dout
    with w, dw the convolution's weight gradient with the roles of x and dout swapped."""
    dout, x, w = _dev(dout, x, w)
    dx = dw = None
    if need_dx:
        dx = empty(x.shape, x.dtype)
        cuda_conv.forward(dout, w, dx, stride, pad, (1, 1), 1, accumulate=False)
    if need_dw:
        dw = zeros(w.shape, w.dtype)
        cuda_conv.backward_weight(x, dout, dw, stride, pad, (1, 1), 1)
    return dx, dw, _bias_grad(dout)


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
    (x,) = _dev(x)
    y = empty(x.shape, x.dtype)
    _relu_kernel[launch(x.size)](flat(x), x.dtype.type(slope), flat(y))
    return y


def relu_backward(dout, x, slope):
    """dout where x > 0, else slope * dout (x may be relu's output: same sign)."""
    dout, x = _dev(dout, x)
    dx = empty(x.shape, dout.dtype)
    _relu_backward_kernel[launch(x.size)](flat(dout), flat(x), dout.dtype.type(slope), flat(dx))
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
    (x,) = _dev(x)
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
    (dout,) = _dev(dout)
    if mask is None:
        return dout
    (mask,) = _dev(mask)
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
    (x,) = _dev(x)
    y = empty(x.shape[:2] + tuple(like_shape[-2:]), x.dtype)
    _crop_kernel[launch(y.size)](x, offset[0], offset[1], y)
    return y


def crop_backward(dout, x_shape, offset):
    (dout,) = _dev(dout)
    dx = empty(x_shape, dout.dtype)
    _uncrop_kernel[launch(dx.size)](dout, offset[0], offset[1], dx)
    return dx


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
    (x,) = _dev(x)
    y = empty(x.shape, x.dtype)
    _scale_kernel[launch(x.size)](flat(x), x.dtype.type(c), flat(y))
    return y


def eltwise_sum(xs, coeffs):
    """sum_i coeffs[i] * xs[i]: two inputs per pass (FCN's skip sums have exactly two)."""
    xs = _dev(*xs)
    if len(xs) == 1:
        return scale(xs[0], coeffs[0])
    T = xs[0].dtype.type
    y = empty(xs[0].shape, xs[0].dtype)
    yf = flat(y)
    _axpby_kernel[launch(y.size)](T(coeffs[0]), flat(xs[0]), T(coeffs[1]), flat(xs[1]), yf)
    for x, c in zip(xs[2:], coeffs[2:]):
        _axpby_kernel[launch(y.size)](T(1), yf, T(c), flat(x), yf)
    return y


# ----------------------------------------------------------------------------- arrays
asarray = to_device     # the dispatch table's "asarray": as this device holds arrays


def zeros_like(a):
    """A device array of zeros with a's shape and dtype."""
    return zeros(a.shape, a.dtype)


def add(a, b):
    """a + b as a new device array (two gradients reaching one blob)."""
    a, b = _dev(a, b)
    if tuple(a.shape) != tuple(b.shape):
        raise ValueError(f"add: shapes {tuple(a.shape)} and {tuple(b.shape)} differ")
    T = a.dtype.type
    y = empty(a.shape, a.dtype)
    _axpby_kernel[launch(y.size)](T(1), flat(a), T(1), flat(b), flat(y))
    return y


# ----------------------------------------------------------------------------- LRN
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
    (x,) = _dev(x)
    T = x.dtype.type
    y = empty(x.shape, x.dtype)
    _lrn_kernel(x.dtype)[launch(x.size)](x, size, T(alpha / size), T(beta), T(k), y)
    return y


def lrn_backward(dout, x, size, alpha, beta, k):
    """dx, in two passes: per element scale^-beta and dout*y/scale, then the window sums."""
    dout, x = _dev(dout, x)
    T = x.dtype.type
    sb, tt, dx = empty(x.shape, x.dtype), empty(x.shape, x.dtype), empty(x.shape, x.dtype)
    _lrn_prep_kernel(x.dtype)[launch(x.size)](dout, x, size, T(alpha / size), T(beta), T(k),
                                              sb, tt)
    _lrn_back_kernel(x.dtype)[launch(x.size)](dout, x, sb, tt, size,
                                              T(2 * alpha * beta / size), dx)
    return dx


# ----------------------------------------------------------------------------- loss
_NORM_MODES = {"valid": 0, "batch": 1, "none": 2}


@typed
def _softmax_pixel_kernel(T):
    @cuda.jit
    def kernel(scores, labels, ignore, cw, weighted, lse, stats):
        """One thread per pixel: lse = log sum_c exp(scores) (max-shifted, so exp never
        overflows), stats[0] = weight * (lse - scores[label]) (its loss), stats[1] = weight,
        stats[2] = 1 for a label outside [0, C) that is not ignore_label (reported, not
        read out of bounds)."""
        N, C, H, W = scores.shape
        HW = H * W
        for t in range(cuda.grid(1), N * HW, cuda.gridsize(1)):
            n = t // HW
            h = (t % HW) // W
            w = t % W
            m = scores[n, 0, h, w]
            for c in range(1, C):
                m = max(m, scores[n, c, h, w])
            se = T(0)
            for c in range(C):
                se += math.exp(scores[n, c, h, w] - m)
            lz = m + math.log(se)
            lse[t] = lz
            lab = labels[t]
            bad = lab != ignore and (lab < 0 or lab >= C)
            wt = T(0)
            loss = T(0)
            if lab != ignore and not bad:
                wt = cw[lab] if weighted else T(1)
                loss = wt * (lz - scores[n, lab, h, w])
            stats[0, 0, t] = loss
            stats[0, 1, t] = wt
            stats[0, 2, t] = T(1) if bad else T(0)
    return kernel


@typed
def _softmax_grad_kernel(T):
    @cuda.jit
    def kernel(scores, labels, lse, stats, sums, mode, d):
        """One thread per score: d = (softmax - [c == label]) * weight / norm, the normaliser
        read from the device-side sums, so nothing waits for the host in between."""
        N, C, H, W = scores.shape
        HW = H * W
        if mode == 0:
            norm = sums[1] if sums[1] > 0 else 1.0
        elif mode == 1:
            norm = float(N)
        else:
            norm = 1.0
        inv = T(1.0 / norm)
        for t in range(cuda.grid(1), scores.size, cuda.gridsize(1)):
            w = t % W
            h = (t // W) % H
            c = (t // HW) % C
            n = t // (C * HW)
            px = n * HW + h * W + w
            wt = stats[0, 1, px]
            g = T(0)
            if wt != 0:
                g = math.exp(scores[n, c, h, w] - lse[px])
                if c == labels[px]:
                    g -= T(1)
                g *= wt * inv
            d[n, c, h, w] = g
    return kernel


def softmax_cross_entropy(scores, labels, ignore_label, normalize, class_weights):
    """-> (loss: float, dscores (N, C, H, W)), as the reference: pixels labelled ignore_label
    count for nothing; normalize "valid" (by summed weight), "batch" (by N) or "none". The
    per-pixel terms are summed on the device (float64); a device-side label outside [0, C)
    that is not ignore_label raises ValueError after the pass."""
    scores, labels = _dev(scores, labels)
    N, C, H, W = scores.shape
    weighted = class_weights is not None
    if weighted:
        cw = to_device(to_host(class_weights).astype(scores.dtype))
    else:
        cw = empty((1,), scores.dtype)
    P = N * H * W
    lse = empty((P,), scores.dtype)
    stats = empty((1, 3, P), scores.dtype)
    _softmax_pixel_kernel(scores.dtype)[launch(P)](scores, flat(labels), int(ignore_label), cw,
                                                   weighted, lse, stats)
    sums = sum_planes(stats, empty((3,), np.float64))
    d = empty(scores.shape, scores.dtype)
    _softmax_grad_kernel(scores.dtype)[launch(scores.size)](scores, flat(labels), lse, stats, sums,
                                              _NORM_MODES[normalize], d)
    total, weight, bad = sums.copy_to_host()
    if bad:
        raise ValueError(f"softmax_cross_entropy: {int(bad)} labels lie outside [0, {C}) and "
                         f"are not ignore_label={ignore_label}")
    norm = {"valid": weight, "batch": N, "none": 1.0}[normalize]
    norm = float(norm) if norm > 0 else 1.0
    return float(total) / norm, d
