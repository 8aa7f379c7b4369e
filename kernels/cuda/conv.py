"""Convolution and transposed convolution on CUDA, forward and backward: im2col (im2col.py) +
the tiled GEMM (gemm.py), and the transposed convolution as the same two loops run backwards
(its forward is col2im(W^T x), its backward im2col). Twin: kernels/reference.py, section
"conv"; the CPU's version: cpu/conv.py.
"""
from __future__ import annotations

from ..geometry import conv_out, deconv_out
from .gemm import gemm_raw
from .im2col import _col2im, _im2col, _scratch, _tiles
from .util import empty, fill, fill_channels, flat, on_device, sum_planes, zeros


# ----------------------------------------------------------------------------- drivers
# All three take device arrays of one dtype, C-contiguous; w is (F, C/groups, kh, kw) in the
# convolution's own sense (F outputs from C inputs), whatever op calls them.
def forward(x, w, y, stride, pad, dilation, groups, accumulate):
    """y (N, F, Ho, Wo) (+)= conv(x, w): per tile, im2col then for each group
    y_g[n] (Fg x P) = w_g (Fg x K) @ col_g[n] (K x P), one batched GEMM over the tile's images."""
    N, C, H, W = x.shape
    F, Cg, kh, kw = w.shape
    Ho, Wo = y.shape[2:]
    Fg, K = F // groups, Cg * kh * kw
    HW = Ho * Wo
    wf, yf = flat(w), flat(y)
    for n0, n1, r0, r1 in _tiles(N, Ho, Wo, C * kh * kw, y.dtype.itemsize):
        P, L = (r1 - r0) * Wo, (n1 - n0) * (r1 - r0) * Wo
        col = _scratch(y.dtype, C * kh * kw * L)
        _im2col(x, n0, n1, kh, kw, stride, pad, dilation, r0, r1, Wo, col)
        for g in range(groups):
            gemm_raw(Fg, P, K, wf, g * Fg * K, K, col, g * K * L, L,
                     yf, (n0 * F + g * Fg) * HW + r0 * Wo, HW, accumulate=accumulate,
                     nbatch=n1 - n0, a_bs=0, b_bs=P, c_bs=F * HW)


def backward_data(dout, w, dx, stride, pad, dilation, groups):
    """dx (N, C, H, W) += conv's input gradient: per tile, col_g[n] (K x P) = w_g^T (K x Fg)
    @ dout_g[n] (Fg x P) for every image in one batched GEMM, then col2im adds the columns back
    onto the pixels they came from."""
    N, C, H, W = dx.shape
    F, Cg, kh, kw = w.shape
    Ho, Wo = dout.shape[2:]
    Fg, K = F // groups, Cg * kh * kw
    HW = Ho * Wo
    wf, df = flat(w), flat(dout)
    for n0, n1, r0, r1 in _tiles(N, Ho, Wo, C * kh * kw, dx.dtype.itemsize):
        P, L = (r1 - r0) * Wo, (n1 - n0) * (r1 - r0) * Wo
        col = _scratch(dx.dtype, C * kh * kw * L)
        for g in range(groups):
            gemm_raw(K, P, Fg, wf, g * Fg * K, K, df, (n0 * F + g * Fg) * HW + r0 * Wo, HW,
                     col, g * K * L, L, trans_a=True,
                     nbatch=n1 - n0, a_bs=0, b_bs=F * HW, c_bs=P)
        _col2im(col, n0, n1, kh, kw, stride, pad, dilation, r0, r1, Wo, dx)


def backward_weight(dout, x, dw, stride, pad, dilation, groups):
    """dw (F, Cg, kh, kw) += conv's weight gradient: per tile and image,
    dw_g (Fg x K) += dout_g[n] (Fg x P) @ col_g[n]^T (P x K). Images are separate GEMMs here:
    they all add into the same dw, so they cannot run as concurrent batches."""
    N, C, H, W = x.shape
    F, Cg, kh, kw = dw.shape
    Ho, Wo = dout.shape[2:]
    Fg, K = F // groups, Cg * kh * kw
    HW = Ho * Wo
    dwf, df = flat(dw), flat(dout)
    for n0, n1, r0, r1 in _tiles(N, Ho, Wo, C * kh * kw, dw.dtype.itemsize):
        P, L = (r1 - r0) * Wo, (n1 - n0) * (r1 - r0) * Wo
        col = _scratch(dw.dtype, C * kh * kw * L)
        _im2col(x, n0, n1, kh, kw, stride, pad, dilation, r0, r1, Wo, col)
        for n in range(n0, n1):
            for g in range(groups):
                gemm_raw(Fg, K, P, df, (n * F + g * Fg) * HW + r0 * Wo, HW,
                         col, g * K * L + (n - n0) * P, L, dwf, g * Fg * K, K,
                         trans_b=True, accumulate=True)
# ----------------------------------------------------------------------------- the ops
def conv2d(x, w, b, stride, pad, dilation, groups):
    """y (N, F, Ho, Wo) = conv(x (N, C, H, W), w (F, C/groups, kh, kw)) + b (F,);
    Ho = floor((H + 2p - d(k-1) - 1) / s) + 1. The bias is written first and the GEMM adds
    onto it, so it costs no extra pass."""
    x, w, b = on_device(x, w, b)
    N, C, H, W = x.shape
    F, _, kh, kw = w.shape
    y = empty((N, F, conv_out(H, kh, stride[0], pad[0], dilation[0]),
               conv_out(W, kw, stride[1], pad[1], dilation[1])), x.dtype)
    if b is not None:
        fill_channels(y, b)
    forward(x, w, y, stride, pad, dilation, groups, accumulate=b is not None)
    return y


def _bias_grad(dout):
    N, F, H, W = dout.shape
    return sum_planes(dout.reshape(N, F, H * W))


def conv2d_backward(dout, x, w, stride, pad, dilation, groups, need_dx=True, need_dw=True):
    """-> (dx (N, C, H, W) or None, dw (F, C/groups, kh, kw) or None, db (F,))."""
    dout, x, w = on_device(dout, x, w)
    dx = dw = None
    if need_dx:
        dx = zeros(x.shape, x.dtype)
        backward_data(dout, w, dx, stride, pad, dilation, groups)
    if need_dw:
        dw = zeros(w.shape, w.dtype)
        backward_weight(dout, x, dw, stride, pad, dilation, groups)
    return dx, dw, _bias_grad(dout)


def conv_transpose2d(x, w, b, stride, pad):
    """y (N, F, Ho, Wo) = transposed conv of x (N, C, H, W) with w (C, F, kh, kw) + b (F,);
    Ho = s(H - 1) + k - 2p. It is exactly the input gradient of the convolution that maps y's
    shape back to x's (weights w read as (C out, F in)), so it runs that code path: one GEMM
    w^T x per tile, then col2im paints the columns onto y (which starts as the bias)."""
    x, w, b = on_device(x, w, b)
    N, C, H, W = x.shape
    _, F, kh, kw = w.shape
    y = empty((N, F, deconv_out(H, kh, stride[0], pad[0]), deconv_out(W, kw, stride[1], pad[1])),
              x.dtype)
    if b is not None:
        fill_channels(y, b)
    else:
        fill(y, 0)
    backward_data(x, w, y, stride, pad, (1, 1), 1)
    return y


def conv_transpose2d_backward(dout, x, w, stride, pad, need_dx=True, need_dw=True):
    """-> (dx (N, C, H, W), dw (C, F, kh, kw), db (F,)): dx is the plain convolution of dout
    with w, dw the convolution's weight gradient with the roles of x and dout swapped."""
    dout, x, w = on_device(dout, x, w)
    dx = dw = None
    if need_dx:
        dx = empty(x.shape, x.dtype)
        forward(dout, w, dx, stride, pad, (1, 1), 1, accumulate=False)
    if need_dw:
        dw = zeros(w.shape, w.dtype)
        backward_weight(x, dout, dw, stride, pad, (1, 1), 1)
    return dx, dw, _bias_grad(dout)
