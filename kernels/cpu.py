"""Numba CPU kernels: the loops of the engine, parallel over independent planes with prange.

Convolution is im2col + GEMM: im2col lays every receptive field out as a column, so the whole
layer becomes one matrix product that numpy hands to BLAS. The column matrix of a big image is
huge (conv1_2 of VGG16 at 500x500 with pad 100 would need 1.1 GB), so it is built a tile of
output rows at a time, never more than COL_BUDGET bytes. Small images go the other way: several
whole images share one tile, so a tiny net on a batch does one GEMM per layer, not one per image.

Transposed convolution reuses the same two loops backwards: its forward is col2im(W^T x), its
backward im2col. Everything not defined here (crop, eltwise sums) falls back to reference.py.
"""
from __future__ import annotations

import os

# Numba's OpenMP threads spin after each parallel loop, and so do OpenBLAS's after each GEMM;
# with 2 cores the two pools then fight for them and every kernel waits for a time slice.
# Measured on the 2-core dev machine, a tiny FCN-8s training step (batch 8, 64x64): 444 ms
# with spinning, 125 ms with passive waiting. Only set if the user has not chosen; read by
# libgomp when Numba first starts its threads.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import numpy as np  # noqa: E402
from numba import njit, prange  # noqa: E402

from .geometry import conv_out, deconv_out, pool_out

COL_BUDGET = 32 << 20   # bytes of im2col buffer per tile


# ----------------------------------------------------------------------------- im2col / col2im
@njit(parallel=True, cache=True)
def _im2col(x, n0, n1, c0, C, kh, kw, sh, sw, ph, pw, dh, dw, r0, r1, Wo, col):
    """col[(c*kh + i)*kw + j, ((n - n0)*R + oh - r0)*Wo + ow] = xpad[n, c0 + c, oh*sh + i*dh,
    ow*sw + j*dw] for images n0..n1 and output rows r0..r1 (R = r1 - r0); zero in the padding."""
    H, W = x.shape[2], x.shape[3]
    K = C * kh * kw
    R = r1 - r0
    for t in prange(K * (n1 - n0)):
        k, nn = t % K, t // K
        c, i, j = k // (kh * kw), (k // kw) % kh, k % kw
        # output columns whose input column lies inside the image: ow in [lo, hi)
        off = j * dw - pw
        lo = min(max(0, (-off + sw - 1) // sw), Wo)
        hi = max(min(Wo, (W - 1 - off) // sw + 1), lo)
        for oh in range(r0, r1):
            ih = oh * sh - ph + i * dh
            base = (nn * R + oh - r0) * Wo
            if ih < 0 or ih >= H:
                for ow in range(Wo):
                    col[k, base + ow] = 0
                continue
            for ow in range(lo):
                col[k, base + ow] = 0
            for ow in range(lo, hi):
                col[k, base + ow] = x[n0 + nn, c0 + c, ih, ow * sw + off]
            for ow in range(hi, Wo):
                col[k, base + ow] = 0


@njit(parallel=True, cache=True)
def _col2im(col, n0, n1, c0, C, kh, kw, sh, sw, ph, pw, dh, dw, r0, r1, Wo, dx):
    """The adjoint of _im2col: dx[n, c0 + c, ...] += every column entry that read it. One
    thread owns one (image, channel) plane, so no two threads ever add to the same pixel."""
    H, W = dx.shape[2], dx.shape[3]
    R = r1 - r0
    for t in prange((n1 - n0) * C):
        nn, c = t // C, t % C
        for i in range(kh):
            for j in range(kw):
                k = (c * kh + i) * kw + j
                off = j * dw - pw
                lo = min(max(0, (-off + sw - 1) // sw), Wo)
                hi = max(min(Wo, (W - 1 - off) // sw + 1), lo)
                for oh in range(r0, r1):
                    ih = oh * sh - ph + i * dh
                    if ih < 0 or ih >= H:
                        continue
                    base = (nn * R + oh - r0) * Wo
                    for ow in range(lo, hi):
                        dx[n0 + nn, c0 + c, ih, ow * sw + off] += col[k, base + ow]


def _tiles(N, Ho, Wo, K, itemsize):
    """(n0, n1, r0, r1) tiles whose column matrix (K x (n1-n0)(r1-r0)Wo) fits COL_BUDGET."""
    rows = max(1, COL_BUDGET // max(1, K * Wo * itemsize))
    if rows >= Ho:                       # whole images, several per tile
        per = max(1, rows // Ho)
        for n0 in range(0, N, per):
            yield n0, min(N, n0 + per), 0, Ho
    else:                                # one image, a band of rows at a time
        for n in range(N):
            for r0 in range(0, Ho, rows):
                yield n, n + 1, r0, min(Ho, r0 + rows)


def _as_cols(a, n0, n1, c0, C, r0, r1):
    """Channels c0..c0+C of images n0..n1, rows r0..r1, as a (C, cols) matrix: a view when it
    is one image (BLAS reads it with a row stride), a transposed copy when several."""
    if n1 - n0 == 1:
        plane = a.shape[2] * a.shape[3]
        Wd = a.shape[3]
        return a[n0, c0:c0 + C].reshape(C, plane)[:, r0 * Wd:r1 * Wd]
    return np.ascontiguousarray(a[n0:n1, c0:c0 + C].transpose(1, 0, 2, 3)).reshape(C, -1)


def _store_cols(res, out, n0, n1, c0, C, r0, r1):
    """Inverse of _as_cols: write a (C, cols) matrix back into out[n0:n1, c0:c0+C, r0:r1]."""
    if n1 - n0 == 1:
        plane = out.shape[2] * out.shape[3]
        Wd = out.shape[3]
        out[n0, c0:c0 + C].reshape(C, plane)[:, r0 * Wd:r1 * Wd] = res
    else:
        out[n0:n1, c0:c0 + C] = res.reshape(C, n1 - n0, out.shape[2], out.shape[3]).transpose(
            1, 0, 2, 3)


def _is_pointwise(kh, kw, stride, pad):
    """A 1x1 conv with stride 1 and no pad needs no im2col: the input already is the matrix."""
    return kh == kw == 1 and stride == (1, 1) and pad == (0, 0)


# ----------------------------------------------------------------------------- convolution
def conv2d(x, w, b, stride, pad, dilation, groups):
    N, C, H, W = x.shape
    F, Cg, kh, kw = w.shape
    Ho = conv_out(H, kh, stride[0], pad[0], dilation[0])
    Wo = conv_out(W, kw, stride[1], pad[1], dilation[1])
    y = np.empty((N, F, Ho, Wo), dtype=x.dtype)
    Fg, K = F // groups, Cg * kh * kw
    wmat = w.reshape(F, K)
    buf = np.empty(0, dtype=x.dtype)
    for n0, n1, r0, r1 in _tiles(N, Ho, Wo, K, x.itemsize):
        m = (n1 - n0) * (r1 - r0) * Wo
        for g in range(groups):
            if _is_pointwise(kh, kw, stride, pad):
                col = _as_cols(x, n0, n1, g * Cg, Cg, r0, r1)
            else:
                if buf.size < K * m:
                    buf = np.empty(K * m, dtype=x.dtype)
                col = buf[:K * m].reshape(K, m)
                _im2col(x, n0, n1, g * Cg, Cg, kh, kw, *stride, *pad, *dilation, r0, r1, Wo, col)
            _store_cols(wmat[g * Fg:(g + 1) * Fg] @ col, y, n0, n1, g * Fg, Fg, r0, r1)
    if b is not None:
        y += b.reshape(1, F, 1, 1)
    return y


def conv2d_backward(dout, x, w, stride, pad, dilation, groups, need_dx=True, need_dw=True):
    N, C, H, W = x.shape
    F, Cg, kh, kw = w.shape
    Ho, Wo = dout.shape[2:]
    Fg, K = F // groups, Cg * kh * kw
    wmat = w.reshape(F, K)
    dx = np.zeros_like(x) if need_dx else None
    dwm = np.zeros((F, K), dtype=w.dtype) if need_dw else None
    pointwise = _is_pointwise(kh, kw, stride, pad)
    buf = np.empty(0, dtype=x.dtype)
    for n0, n1, r0, r1 in _tiles(N, Ho, Wo, K, x.itemsize):
        m = (n1 - n0) * (r1 - r0) * Wo
        if buf.size < K * m and not pointwise:
            buf = np.empty(K * m, dtype=x.dtype)
        for g in range(groups):
            d = _as_cols(dout, n0, n1, g * Fg, Fg, r0, r1)          # (Fg, m)
            wg = wmat[g * Fg:(g + 1) * Fg]
            if need_dw:
                if pointwise:
                    col = _as_cols(x, n0, n1, g * Cg, Cg, r0, r1)
                else:
                    col = buf[:K * m].reshape(K, m)
                    _im2col(x, n0, n1, g * Cg, Cg, kh, kw, *stride, *pad, *dilation, r0, r1, Wo,
                            col)
                dwm[g * Fg:(g + 1) * Fg] += d @ col.T
            if need_dx:
                dcol = wg.T @ d                                      # (K, m)
                if pointwise:
                    _store_cols(dcol, dx, n0, n1, g * Cg, Cg, r0, r1)
                else:
                    _col2im(dcol, n0, n1, g * Cg, Cg, kh, kw, *stride, *pad, *dilation, r0, r1,
                            Wo, dx)
    db = dout.sum(axis=(0, 2, 3))
    return dx, (dwm.reshape(w.shape) if need_dw else None), db


def conv_transpose2d(x, w, b, stride, pad):
    """Forward of a transposed conv = backward-data of a conv: col = W^T x, then col2im."""
    N, C, H, W = x.shape
    _, F, kh, kw = w.shape
    Ho, Wo = deconv_out(H, kh, stride[0], pad[0]), deconv_out(W, kw, stride[1], pad[1])
    y = np.zeros((N, F, Ho, Wo), dtype=x.dtype)
    K = F * kh * kw
    wmat_t = w.reshape(C, K).T
    for n0, n1, r0, r1 in _tiles(N, H, W, K, x.itemsize):
        col = wmat_t @ _as_cols(x, n0, n1, 0, C, r0, r1)
        _col2im(np.ascontiguousarray(col), n0, n1, 0, F, kh, kw, *stride, *pad, 1, 1, r0, r1,
                W, y)
    if b is not None:
        y += b.reshape(1, F, 1, 1)
    return y


def conv_transpose2d_backward(dout, x, w, stride, pad, need_dx=True, need_dw=True):
    N, C, H, W = x.shape
    _, F, kh, kw = w.shape
    K = F * kh * kw
    wmat = w.reshape(C, K)
    dx = np.empty_like(x) if need_dx else None
    dwm = np.zeros((C, K), dtype=w.dtype) if need_dw else None
    buf = np.empty(0, dtype=x.dtype)
    for n0, n1, r0, r1 in _tiles(N, H, W, K, x.itemsize):
        m = (n1 - n0) * (r1 - r0) * W
        if buf.size < K * m:
            buf = np.empty(K * m, dtype=x.dtype)
        col = buf[:K * m].reshape(K, m)
        _im2col(dout, n0, n1, 0, F, kh, kw, *stride, *pad, 1, 1, r0, r1, W, col)
        if need_dx:
            _store_cols(wmat @ col, dx, n0, n1, 0, C, r0, r1)
        if need_dw:
            dwm += _as_cols(x, n0, n1, 0, C, r0, r1) @ col.T
    return dx, (dwm.reshape(w.shape) if need_dw else None), dout.sum(axis=(0, 2, 3))


# ----------------------------------------------------------------------------- pooling
@njit(parallel=True, cache=True)
def _max_pool(x, kh, kw, sh, sw, ph, pw, y, argmax):
    N, C, H, W = x.shape
    Ho, Wo = y.shape[2], y.shape[3]
    for t in prange(N * C):
        n, c = t // C, t % C
        for oh in range(Ho):
            h0 = oh * sh - ph
            h1, h0 = min(h0 + kh, H), max(h0, 0)
            for ow in range(Wo):
                w0 = ow * sw - pw
                w1, w0 = min(w0 + kw, W), max(w0, 0)
                best, arg = x[n, c, h0, w0], h0 * W + w0
                for ih in range(h0, h1):
                    for iw in range(w0, w1):
                        v = x[n, c, ih, iw]
                        if v > best:                 # strict: the first maximum wins ties
                            best, arg = v, ih * W + iw
                y[n, c, oh, ow] = best
                argmax[n, c, oh, ow] = arg


@njit(parallel=True, cache=True)
def _max_unpool(dout, argmax, dx):
    N, C, Ho, Wo = dout.shape
    W = dx.shape[3]
    for t in prange(N * C):
        n, c = t // C, t % C
        for oh in range(Ho):
            for ow in range(Wo):
                a = argmax[n, c, oh, ow]
                dx[n, c, a // W, a % W] += dout[n, c, oh, ow]


def max_pool2d(x, kernel, stride, pad, ceil_mode):
    N, C, H, W = x.shape
    Ho = pool_out(H, kernel[0], stride[0], pad[0], ceil_mode)
    Wo = pool_out(W, kernel[1], stride[1], pad[1], ceil_mode)
    y = np.empty((N, C, Ho, Wo), dtype=x.dtype)
    argmax = np.empty((N, C, Ho, Wo), dtype=np.int32)
    _max_pool(x, *kernel, *stride, *pad, y, argmax)
    return y, argmax


def max_pool2d_backward(dout, argmax, x_shape):
    dx = np.zeros(x_shape, dtype=dout.dtype)
    _max_unpool(dout, argmax, dx)
    return dx


@njit(parallel=True, cache=True)
def _avg_pool(x, kh, kw, sh, sw, ph, pw, y, backward):
    """Forward: y = window means of x. Backward (backward=True): x += y spread over windows
    (there x is the gradient being filled and y the output gradient)."""
    N, C = x.shape[0], x.shape[1]
    H, W = x.shape[2], x.shape[3]
    Ho, Wo = y.shape[2], y.shape[3]
    for t in prange(N * C):
        n, c = t // C, t % C
        for oh in range(Ho):
            h0 = oh * sh - ph
            h1 = min(h0 + kh, H + ph)
            area_h = h1 - h0
            h0, h1 = max(h0, 0), min(h1, H)
            for ow in range(Wo):
                w0 = ow * sw - pw
                w1 = min(w0 + kw, W + pw)
                area = area_h * (w1 - w0)              # Caffe's divisor counts the padding
                w0, w1 = max(w0, 0), min(w1, W)
                if backward:
                    g = y[n, c, oh, ow] / area
                    for ih in range(h0, h1):
                        for iw in range(w0, w1):
                            x[n, c, ih, iw] += g
                else:
                    s = 0.0
                    for ih in range(h0, h1):
                        for iw in range(w0, w1):
                            s += x[n, c, ih, iw]
                    y[n, c, oh, ow] = s / area


def avg_pool2d(x, kernel, stride, pad, ceil_mode):
    N, C, H, W = x.shape
    Ho = pool_out(H, kernel[0], stride[0], pad[0], ceil_mode)
    Wo = pool_out(W, kernel[1], stride[1], pad[1], ceil_mode)
    y = np.empty((N, C, Ho, Wo), dtype=x.dtype)
    _avg_pool(x, *kernel, *stride, *pad, y, False)
    return y


def avg_pool2d_backward(dout, x_shape, kernel, stride, pad, ceil_mode):
    dx = np.zeros(x_shape, dtype=dout.dtype)
    _avg_pool(dx, *kernel, *stride, *pad, dout, True)
    return dx


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


# ----------------------------------------------------------------------------- LRN
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


# ----------------------------------------------------------------------------- loss
@njit(parallel=True, cache=True)
def _softmax_ce(scores, labels, ignore_label, weights, d, row_loss, row_weight):
    """Per pixel: stable log-softmax, the weighted loss of its label, d = w * (p - onehot).
    Each (n, h) row sums its own loss and weight; the caller adds the rows."""
    N, C, H, W = scores.shape
    for t in prange(N * H):
        n, h = t // H, t % H
        loss, wsum = 0.0, 0.0
        for w in range(W):
            lab = labels[n, h, w]
            if lab == ignore_label:
                for c in range(C):
                    d[n, c, h, w] = 0
                continue
            m = scores[n, 0, h, w]
            for c in range(1, C):
                m = max(m, scores[n, c, h, w])
            z = 0.0
            for c in range(C):
                z += np.exp(scores[n, c, h, w] - m)
            wt = weights[lab]
            loss += wt * (np.log(z) - (scores[n, lab, h, w] - m))
            wsum += wt
            for c in range(C):
                d[n, c, h, w] = wt * np.exp(scores[n, c, h, w] - m) / z
            d[n, lab, h, w] -= wt
        row_loss[t], row_weight[t] = loss, wsum


def softmax_cross_entropy(scores, labels, ignore_label, normalize, class_weights):
    N, C, H, W = scores.shape
    weights = (np.ones(C) if class_weights is None
               else np.asarray(class_weights, dtype=np.float64))
    d = np.empty_like(scores)
    row_loss, row_weight = np.empty(N * H), np.empty(N * H)
    _softmax_ce(np.ascontiguousarray(scores), labels, ignore_label, weights, d, row_loss,
                row_weight)
    norm = {"valid": row_weight.sum(), "batch": N, "none": 1.0}[normalize]
    norm = float(norm) if norm > 0 else 1.0
    d *= d.dtype.type(1.0 / norm)
    return float(row_loss.sum() / norm), d
