"""Convolution and transposed convolution on the CPU, forward and backward: the routes, and
which one runs. Twin: kernels/reference.py, section "conv".

The plain route is im2col + GEMM (im2col.py). Three faster routes where they apply, each
measured (figures in the comments beside them):
  * 3x3 stride-1 convolutions with enough channels use Winograd (winograd.py): F(4x4, 3x3) or
    F(2x2, 3x3), 4x / 2.25x fewer multiply-adds, for the forward pass, dx and dw alike;
  * with stride 1, dx is itself a convolution of dout (no thin GEMM and scatter-add col2im);
  * a transposed convolution whose weight is diagonal across channels (FCN's frozen bilinear
    upsampling) runs depthwise, C_out times less work than the dense product with its zeros.

Transposed convolution reuses the im2col loops backwards: its forward is col2im(W^T x), its
backward im2col.
"""
from __future__ import annotations

import numpy as np
from numba import njit, prange

from ..geometry import conv_out, deconv_out
from . import winograd     # looked up at call time: tests swap its functions to count calls
from .threads import matmul, one_thread_if_small
from .im2col import (_as_cols, _col2im, _flipped_weight, _gemm_into, _im2col, _scratch_matrix,
                     _tiles)


# ----------------------------------------------------------------------------- bias gradient
# Both convolutions' db: the sum of dout over everything but its channels.
@njit(parallel=True, cache=True, fastmath={"reassoc"})
def _channel_sums(a, out):
    """out[c] = sum of a[:, c] (the bias gradient), accumulated in float64; reassociation
    lets the sum vectorise (4x faster on FCN's 21x544x544 upsampled scores)."""
    N, C, H, W = a.shape
    for c in prange(C):
        s = 0.0
        for n in range(N):
            for h in range(H):
                row = a[n, c, h]
                for w in range(W):
                    s += row[w]
        out[c] = s


def _bias_grad(dout):
    out = np.empty(dout.shape[1], dtype=np.float64)
    _channel_sums(dout, out)
    return out.astype(dout.dtype)


# ----------------------------------------------------------------------------- convolution
def _is_pointwise(kh, kw, stride, pad):
    """A 1x1 conv with stride 1 and no pad needs no im2col: the input already is the matrix."""
    return kh == kw == 1 and stride == (1, 1) and pad == (0, 0)


def _flops(x_shape, w_shape, out_hw):
    return 2.0 * x_shape[0] * w_shape[0] * w_shape[1] * w_shape[2] * w_shape[3] * out_hw[0] * \
        out_hw[1]


def conv2d(x, w, b, stride, pad, dilation, groups):
    Ho = conv_out(x.shape[2], w.shape[2], stride[0], pad[0], dilation[0])
    Wo = conv_out(x.shape[3], w.shape[3], stride[1], pad[1], dilation[1])
    with one_thread_if_small(_flops(x.shape, w.shape, (Ho, Wo))):
        return _conv2d(x, w, b, stride, pad, dilation, groups)


def _conv2d(x, w, b, stride, pad, dilation, groups):
    N, C, H, W = x.shape
    F, Cg, kh, kw = w.shape
    Ho = conv_out(H, kh, stride[0], pad[0], dilation[0])
    Wo = conv_out(W, kw, stride[1], pad[1], dilation[1])
    m = winograd._winograd_tile(w.shape, stride, dilation, groups, (Ho, Wo), N)
    if m:
        return winograd._wino_conv(x, w, b, pad, groups, Ho, Wo, m)
    y = np.empty((N, F, Ho, Wo), dtype=x.dtype)
    Fg, K = F // groups, Cg * kh * kw
    wmat = np.ascontiguousarray(w).reshape(F, K)
    pointwise = _is_pointwise(kh, kw, stride, pad)
    if pointwise:
        x = np.ascontiguousarray(x)
    for n0, n1, r0, r1 in _tiles(N, Ho, Wo, K, x.itemsize):
        m = (n1 - n0) * (r1 - r0) * Wo
        for g in range(groups):
            if pointwise:
                col = _as_cols(x, n0, n1, g * Cg, Cg, r0, r1)
            else:
                col = _scratch_matrix("a", K, m, x.dtype)
                _im2col(x, n0, n1, g * Cg, Cg, kh, kw, *stride, *pad, *dilation, r0, r1, Wo, col)
            _gemm_into(wmat[g * Fg:(g + 1) * Fg], col, y, n0, n1, g * Fg, Fg, r0, r1,
                       None if b is None else b[g * Fg:(g + 1) * Fg])
    return y


def _dx_as_conv(x_shape, w_shape, dout_shape, stride, pad, dilation):
    """The pad with which dx is itself a convolution of dout (stride 1 only), or None.

    With stride 1, dx = conv2d(dout, w', pad=d(k-1) - p) where w'[c, f] is w[f, c] turned by
    180 degrees. That replaces a thin GEMM (K = C_out) and a scatter-add col2im with the same
    im2col + GEMM as the forward pass, writing dx straight in place. Only taken when it does
    not grow the work: dout must be about as large as dx (not fc6's 16x16 from 22x22)."""
    if stride != (1, 1):
        return None
    p = tuple(dilation[a] * (w_shape[2 + a] - 1) - pad[a] for a in (0, 1))
    if min(p) < 0 or x_shape[2] * x_shape[3] > 1.25 * dout_shape[2] * dout_shape[3]:
        return None
    return p


def conv2d_backward(dout, x, w, stride, pad, dilation, groups, need_dx=True, need_dw=True):
    with one_thread_if_small(_flops(x.shape, w.shape, dout.shape[2:])):     # as forward
        return _conv2d_backward(dout, x, w, stride, pad, dilation, groups, need_dx, need_dw)


def _conv2d_backward(dout, x, w, stride, pad, dilation, groups, need_dx=True, need_dw=True):
    N, C, H, W = x.shape
    F, Cg, kh, kw = w.shape
    Ho, Wo = dout.shape[2:]
    Fg, K = F // groups, Cg * kh * kw
    dout = np.ascontiguousarray(dout)
    wmat = np.ascontiguousarray(w).reshape(F, K)
    pointwise = _is_pointwise(kh, kw, stride, pad)
    if pointwise:
        x = np.ascontiguousarray(x)
    dx = dwm = None
    dx_pad = _dx_as_conv(x.shape, w.shape, dout.shape, stride, pad, dilation) \
        if need_dx and not pointwise else None
    m = winograd._winograd_tile(w.shape, stride, dilation, groups, (H, W), N) if dx_pad else 0
    if m:
        dx = winograd._wino_conv(dout, w, None, dx_pad, groups, H, W, m, transpose=True)
    elif dx_pad is not None and w.size <= dout.size:
        # im2col + GEMM on the turned weight, when turning it (a copy) costs less than dout's
        # size: at conv5 of VGG16 (14x14, a 9 MB weight) the GEMM + col2im below is faster
        dx = conv2d(dout, _flipped_weight(w, groups), None, (1, 1), dx_pad, dilation, groups)
    elif need_dx:
        dx_pad = None
        dx = np.empty_like(x) if pointwise else np.zeros_like(x)
    dw = None
    m = winograd._winograd_tile(w.shape, stride, dilation, groups, (Ho, Wo), N) if need_dw else 0
    if m:
        dw = winograd._wino_dw(dout, x, w.shape, pad, groups, m)
        need_dw = False
    if need_dw:
        dwm = np.empty((F, K), dtype=w.dtype)
    first = True
    tiles = _tiles(N, Ho, Wo, K, x.itemsize) if need_dw or (need_dx and dx_pad is None) else ()
    for n0, n1, r0, r1 in tiles:
        m = (n1 - n0) * (r1 - r0) * Wo
        for g in range(groups):
            d = _as_cols(dout, n0, n1, g * Fg, Fg, r0, r1)          # (Fg, m)
            if need_dw:
                if pointwise:
                    col = _as_cols(x, n0, n1, g * Cg, Cg, r0, r1)
                else:
                    col = _scratch_matrix("a", K, m, x.dtype)
                    _im2col(x, n0, n1, g * Cg, Cg, kh, kw, *stride, *pad, *dilation, r0, r1, Wo,
                            col)
                dst = dwm[g * Fg:(g + 1) * Fg]
                if first:
                    matmul(d, col.T, out=dst)
                else:
                    dst += matmul(d, col.T, out=_scratch_matrix("c", Fg, K, w.dtype))
            if need_dx and dx_pad is None:
                wg = wmat[g * Fg:(g + 1) * Fg]
                if pointwise:
                    _gemm_into(wg.T, d, dx, n0, n1, g * Cg, Cg, r0, r1)
                else:
                    dcol = matmul(wg.T, d, out=_scratch_matrix("a", K, m, x.dtype))
                    _col2im(dcol, n0, n1, g * Cg, Cg, kh, kw, *stride, *pad, *dilation, r0,
                            r1, Wo, dx)
        first = False
    if need_dw:
        dw = dwm.reshape(w.shape)
    return dx, dw, _bias_grad(dout)


# ----------------------------------------------------------------------------- deconvolution
@njit(cache=True)
def _is_diagonal(w):
    """Is w (C, C, kh, kw) zero off the channel diagonal? Stops at the first nonzero, so a
    dense weight costs one look; a bilinear upsampling weight, one pass over it."""
    C, F = w.shape[0], w.shape[1]
    if C != F:
        return False
    for c in range(C):
        for f in range(F):
            if c != f:
                for i in range(w.shape[2]):
                    for j in range(w.shape[3]):
                        if w[c, f, i, j] != 0:
                            return False
    return True


@njit(parallel=True, cache=True)
def _deconv_depthwise(x, w, sh, sw, ph, pw, y):
    """y[n, c] = transposed conv of x[n, c] with w[c, c] alone. One output row at a time: each
    input row under it (ceil(k/s) of them) paints its pixels' scaled kernel rows into a row
    buffer, a contiguous multiply-add over the kernel width that LLVM vectorises; then the
    row, cut by the pad, is copied out. Each thread owns whole planes. (Measured against a
    per-pixel gather of the same sums: 13x faster on FCN-32s's k64 s32 upsampling at 500.)
    Indexing goes through slices that start at 0: Numba then needs no negative-index test in
    the inner loop, which is what keeps it vectorised."""
    N, C, H, W = x.shape
    Ho, Wo = y.shape[2], y.shape[3]
    kh, kw = w.shape[2], w.shape[3]
    Wf = sw * (W - 1) + kw                    # the un-cropped output row
    for t in prange(N * C):
        n, c = t // C, t % C
        row = np.empty(Wf, dtype=y.dtype)
        for oh in range(Ho):
            a = oh + ph                       # row in the un-cropped output
            row[:] = 0
            for ih in range(max(0, (a - kh + sh) // sh), min(H - 1, a // sh) + 1):
                wr, xr = w[c, c, a - ih * sh], x[n, c, ih]
                for iw in range(W):
                    v = xr[iw]
                    seg = row[iw * sw:iw * sw + kw]
                    for j in range(kw):
                        seg[j] += v * wr[j]
            y[n, c, oh, :] = row[pw:pw + Wo]


@njit(parallel=True, cache=True, fastmath={"reassoc", "contract"})
def _deconv_depthwise_dx(dout, w, sh, sw, ph, pw, dx):
    """The adjoint: dx[n, c, ih, iw] = the dot product of w[c, c] with the window of dout[n, c]
    that input pixel painted (clipped to dout). Reassociation lets the dot product vectorise
    (5x faster on k64 s32); the order of a float sum is all it changes."""
    N, C, H, W = dx.shape
    Ho, Wo = dout.shape[2], dout.shape[3]
    kh, kw = w.shape[2], w.shape[3]
    for t in prange(N * C):
        n, c = t // C, t % C
        for ih in range(H):
            i0, i1 = max(0, ph - ih * sh), min(kh, Ho + ph - ih * sh)
            for iw in range(W):
                off = iw * sw - pw
                j0, j1 = max(0, -off), min(kw, Wo - off)
                s = dx.dtype.type(0)
                for i in range(i0, i1):
                    dr = dout[n, c, ih * sh - ph + i, off + j0:off + j1]
                    wr = w[c, c, i, j0:j1]
                    for j in range(j1 - j0):
                        s += dr[j] * wr[j]
                dx[n, c, ih, iw] = s


def conv_transpose2d(x, w, b, stride, pad):
    """Forward of a transposed conv = backward-data of a conv: col = W^T x, then col2im.
    A weight that is diagonal across channels (FCN's bilinear upsampling) takes the
    depthwise kernel instead: C_out times less work than the dense product with its zeros."""
    N, C, H, W = x.shape
    _, F, kh, kw = w.shape
    Ho, Wo = deconv_out(H, kh, stride[0], pad[0]), deconv_out(W, kw, stride[1], pad[1])
    if _is_diagonal(w):
        y = np.empty((N, F, Ho, Wo), dtype=x.dtype)
        _deconv_depthwise(x, w, *stride, *pad, y)
    else:
        y = np.zeros((N, F, Ho, Wo), dtype=x.dtype)
        K = F * kh * kw
        wmat_t = np.ascontiguousarray(w).reshape(C, K).T
        x = np.ascontiguousarray(x)
        for n0, n1, r0, r1 in _tiles(N, H, W, K, x.itemsize):
            m = (n1 - n0) * (r1 - r0) * W
            col = matmul(wmat_t, _as_cols(x, n0, n1, 0, C, r0, r1),
                         out=_scratch_matrix("a", K, m, x.dtype))
            _col2im(col, n0, n1, 0, F, kh, kw, *stride, *pad, 1, 1, r0, r1, W, y)
    if b is not None:
        y += b.reshape(1, F, 1, 1)
    return y


def conv_transpose2d_backward(dout, x, w, stride, pad, need_dx=True, need_dw=True):
    N, C, H, W = x.shape
    _, F, kh, kw = w.shape
    K = F * kh * kw
    wmat = np.ascontiguousarray(w).reshape(C, K)
    dout = np.ascontiguousarray(dout)
    x = np.ascontiguousarray(x)
    dx = dwm = None
    if need_dx and _is_diagonal(w):
        dx = np.empty_like(x)
        _deconv_depthwise_dx(dout, w, *stride, *pad, dx)
        dense_dx = False
    else:
        dense_dx = need_dx
        dx = np.empty_like(x) if need_dx else None
    if need_dw:
        dwm = np.empty((C, K), dtype=w.dtype)
    if dense_dx or need_dw:
        first = True
        for n0, n1, r0, r1 in _tiles(N, H, W, K, x.itemsize):
            m = (n1 - n0) * (r1 - r0) * W
            col = _scratch_matrix("a", K, m, x.dtype)
            _im2col(dout, n0, n1, 0, F, kh, kw, *stride, *pad, 1, 1, r0, r1, W, col)
            if dense_dx:
                _gemm_into(wmat, col, dx, n0, n1, 0, C, r0, r1)
            if need_dw:
                xc = _as_cols(x, n0, n1, 0, C, r0, r1)
                if first:
                    matmul(xc, col.T, out=dwm)
                else:
                    dwm += matmul(xc, col.T, out=_scratch_matrix("c", C, K, w.dtype))
            first = False
    return dx, (dwm.reshape(w.shape) if need_dw else None), _bias_grad(dout)
