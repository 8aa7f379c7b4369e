"""Pooling on CUDA: max and average, forward and backward, Caffe's ceil-mode windows.
Twin: kernels/reference.py, section "pool"; the CPU's version: cpu/pool.py.

One thread per output (forward) or per input pixel (average backward); the window of output o
along an axis is [o*s - p, min(o*s - p + k, size + p)) clipped to [0, size), as in Caffe and
the reference.
"""
from __future__ import annotations

import numpy as np

from ..geometry import pool_out
from .util import cuda, empty, launch, on_device, typed, zeros


def _pool_shape(x_shape, kernel, stride, pad, ceil_mode):
    N, C, H, W = x_shape
    return (N, C, pool_out(H, kernel[0], stride[0], pad[0], ceil_mode),
            pool_out(W, kernel[1], stride[1], pad[1], ceil_mode))


@cuda.jit
def _max_pool_kernel(x, kh, kw, sh, sw, ph, pw, y, argmax):
    N, C, H, W = x.shape
    Ho, Wo = y.shape[2], y.shape[3]
    for t in range(cuda.grid(1), N * C * Ho * Wo, cuda.gridsize(1)):
        ow = t % Wo
        oh = (t // Wo) % Ho
        nc = t // (Ho * Wo)
        n, c = nc // C, nc % C
        h0 = oh * sh - ph
        w0 = ow * sw - pw
        h1 = min(min(h0 + kh, H + ph), H)
        w1 = min(min(w0 + kw, W + pw), W)
        h0 = max(h0, 0)
        w0 = max(w0, 0)
        best = x[n, c, h0, w0]
        arg = h0 * W + w0
        for h in range(h0, h1):
            for w in range(w0, w1):
                v = x[n, c, h, w]
                # strict: the first maximum wins ties; the first NaN wins, nothing beats it
                if v > best or (v != v and best == best):
                    best = v
                    arg = h * W + w
        y[n, c, oh, ow] = best
        argmax[n, c, oh, ow] = arg


def max_pool2d(x, kernel, stride, pad, ceil_mode):
    """-> (y (N, C, Ho, Wo), argmax int32: flat h*W + w of each window's winner)."""
    (x,) = on_device(x)
    shape = _pool_shape(x.shape, kernel, stride, pad, ceil_mode)
    y, argmax = empty(shape, x.dtype), empty(shape, np.int32)
    _max_pool_kernel[launch(y.size)](x, *kernel, *stride, *pad, y, argmax)
    return y, argmax


@cuda.jit
def _max_unpool_kernel(dout, argmax, dx):
    """dx (N*C, H*W) [plane, argmax] += dout, one thread per output. Scattered with atomics
    because the backward signature carries no window geometry, so a pixel cannot find the
    windows that may have chosen it; atomics only collide where overlapping windows (e.g.
    AlexNet's 3x3/s2) share a winner, which is rare."""
    plane_out = dout.shape[1]
    for t in range(cuda.grid(1), dout.size, cuda.gridsize(1)):
        p = t // plane_out
        q = t - p * plane_out
        cuda.atomic.add(dx, (p, int(argmax[p, q])), dout[p, q])


def max_pool2d_backward(dout, argmax, x_shape):
    """dx (x_shape): each output gradient routed to the pixel that won its window."""
    dout, argmax = on_device(dout, argmax)
    N, C, H, W = x_shape
    dx = zeros((N * C, H * W), dout.dtype)
    Ho, Wo = dout.shape[2:]
    _max_unpool_kernel[launch(dout.size)](dout.reshape(N * C, Ho * Wo),
                                          argmax.reshape(N * C, Ho * Wo), dx)
    return dx.reshape(N, C, H, W)


@typed
def _avg_pool_kernel(T):
    @cuda.jit
    def kernel(x, kh, kw, sh, sw, ph, pw, y):
        N, C, H, W = x.shape
        Ho, Wo = y.shape[2], y.shape[3]
        for t in range(cuda.grid(1), N * C * Ho * Wo, cuda.gridsize(1)):
            ow = t % Wo
            oh = (t // Wo) % Ho
            nc = t // (Ho * Wo)
            n, c = nc // C, nc % C
            h0 = oh * sh - ph
            w0 = ow * sw - pw
            h1 = min(h0 + kh, H + ph)
            w1 = min(w0 + kw, W + pw)
            div = T((h1 - h0) * (w1 - w0))      # counts the padding inside the window
            s = T(0)
            for h in range(max(h0, 0), min(h1, H)):
                for w in range(max(w0, 0), min(w1, W)):
                    s += x[n, c, h, w]
            y[n, c, oh, ow] = s / div
    return kernel


def avg_pool2d(x, kernel, stride, pad, ceil_mode):
    """y (N, C, Ho, Wo): window means, divisor = the window clipped to the padded input."""
    (x,) = on_device(x)
    y = empty(_pool_shape(x.shape, kernel, stride, pad, ceil_mode), x.dtype)
    _avg_pool_kernel(x.dtype)[launch(y.size)](x, *kernel, *stride, *pad, y)
    return y


@typed
def _avg_unpool_kernel(T):
    @cuda.jit
    def kernel(dout, kh, kw, sh, sw, ph, pw, dx):
        """A gather: each input pixel sums dout/divisor over the windows that cover it
        (oh in [ceil((h+p-k+1)/s), (h+p)/s]); no atomics, deterministic."""
        N, C, H, W = dx.shape
        Ho, Wo = dout.shape[2], dout.shape[3]
        for t in range(cuda.grid(1), dx.size, cuda.gridsize(1)):
            w = t % W
            h = (t // W) % H
            nc = t // (H * W)
            n, c = nc // C, nc % C
            s = T(0)
            for oh in range(max(0, -((kh - 1 - h - ph) // sh)), min(Ho, (h + ph) // sh + 1)):
                h0 = oh * sh - ph
                eh = min(h0 + kh, H + ph) - h0
                for ow in range(max(0, -((kw - 1 - w - pw) // sw)), min(Wo, (w + pw) // sw + 1)):
                    w0 = ow * sw - pw
                    ew = min(w0 + kw, W + pw) - w0
                    s += dout[n, c, oh, ow] / T(eh * ew)
            dx[n, c, h, w] = s
    return kernel


def avg_pool2d_backward(dout, x_shape, kernel, stride, pad, ceil_mode):
    """dx (x_shape): each output gradient spread evenly over its window."""
    (dout,) = on_device(dout)
    dx = empty(x_shape, dout.dtype)
    _avg_unpool_kernel(dout.dtype)[launch(dx.size)](dout, *kernel, *stride, *pad, dx)
    return dx
