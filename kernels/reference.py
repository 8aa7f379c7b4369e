"""Naive NumPy references: the version of every op a student reads first.

Each function is written for clarity, not speed: convolution loops over the kernel taps and
does one small matrix product per tap; pooling loops over output positions. The fast kernels
(the packages kernels/cpu/ and kernels/cuda/) are tested against these. Arguments arrive
normalised by minifcn.functional: every kernel/stride/pad/dilation is an (h, w) tuple of ints,
arrays are NCHW, shapes have been checked.

Each section below is named after the file of each fast package that holds its twin (its
header lists them), so the naive and the fast version of an op can be read side by side:
conv, pool, pointwise, lrn, loss, solver, arrays, score. An op a fast package lacks falls
back to this file (the cpu device's crop, for one).
"""
from __future__ import annotations

import numpy as np

from .geometry import conv_out, deconv_out, pool_out


def _taps(x, i, j, out_h, out_w, stride, dilation=(1, 1)):
    """The input samples that kernel tap (i, j) sees at every output position: (N, C, Ho, Wo)."""
    h0, w0 = i * dilation[0], j * dilation[1]
    return x[:, :, h0:h0 + stride[0] * (out_h - 1) + 1:stride[0],
                   w0:w0 + stride[1] * (out_w - 1) + 1:stride[1]]


def _pad(x, pad):
    return np.pad(x, ((0, 0), (0, 0), (pad[0], pad[0]), (pad[1], pad[1])))


# ----------------------------------------------------------------------------- conv
# Twins: cpu/conv.py (the routes), cpu/im2col.py, cpu/winograd.py; cuda/conv.py,
# cuda/im2col.py, cuda/gemm.py.
def conv2d(x, w, b, stride, pad, dilation, groups):
    """y[n, f, oh, ow] = b[f] + sum_{c,i,j} w[f, c, i, j] * xpad[n, c, oh*s + i*d, ow*s + j*d]."""
    N, C, H, W = x.shape
    F, Cg, kh, kw = w.shape
    Ho = conv_out(H, kh, stride[0], pad[0], dilation[0])
    Wo = conv_out(W, kw, stride[1], pad[1], dilation[1])
    xp = _pad(x, pad)
    y = np.zeros((N, F, Ho, Wo), dtype=x.dtype)
    Fg = F // groups
    for g in range(groups):
        xg, wg = xp[:, g * Cg:(g + 1) * Cg], w[g * Fg:(g + 1) * Fg]
        for i in range(kh):
            for j in range(kw):
                tap = _taps(xg, i, j, Ho, Wo, stride, dilation)
                y[:, g * Fg:(g + 1) * Fg] += np.einsum("nchw,fc->nfhw", tap, wg[:, :, i, j])
    if b is not None:
        y += b[None, :, None, None]
    return y


def conv2d_backward(dout, x, w, stride, pad, dilation, groups, need_dx=True, need_dw=True):
    """Gradients of conv2d: each tap's product, transposed. Returns (dx, dw, db)."""
    N, C, H, W = x.shape
    F, Cg, kh, kw = w.shape
    Ho, Wo = dout.shape[2:]
    xp = _pad(x, pad)
    dxp = np.zeros_like(xp) if need_dx else None
    dw = np.zeros_like(w) if need_dw else None
    Fg = F // groups
    for g in range(groups):
        cs, fs = slice(g * Cg, (g + 1) * Cg), slice(g * Fg, (g + 1) * Fg)
        for i in range(kh):
            for j in range(kw):
                if need_dw:
                    tap = _taps(xp[:, cs], i, j, Ho, Wo, stride, dilation)
                    dw[fs, :, i, j] = np.einsum("nfhw,nchw->fc", dout[:, fs], tap)
                if need_dx:
                    _taps(dxp[:, cs], i, j, Ho, Wo, stride, dilation)[...] += np.einsum(
                        "nfhw,fc->nchw", dout[:, fs], w[fs, :, i, j])
    dx = dxp[:, :, pad[0]:pad[0] + H, pad[1]:pad[1] + W].copy() if need_dx else None
    db = dout.sum(axis=(0, 2, 3))
    return dx, dw, db


def conv_transpose2d(x, w, b, stride, pad):
    """Each input pixel paints w[c] (scaled by its value) onto the output at stride s, then the
    border p is cut: out = s(H - 1) + k - 2p. w has shape (C_in, C_out, kh, kw)."""
    N, C, H, W = x.shape
    _, F, kh, kw = w.shape
    full = np.zeros((N, F, stride[0] * (H - 1) + kh, stride[1] * (W - 1) + kw), dtype=x.dtype)
    for i in range(kh):
        for j in range(kw):
            _taps(full, i, j, H, W, stride)[...] += np.einsum("nchw,cf->nfhw", x, w[:, :, i, j])
    Ho, Wo = deconv_out(H, kh, stride[0], pad[0]), deconv_out(W, kw, stride[1], pad[1])
    y = full[:, :, pad[0]:pad[0] + Ho, pad[1]:pad[1] + Wo].copy()
    if b is not None:
        y += b[None, :, None, None]
    return y


def conv_transpose2d_backward(dout, x, w, stride, pad, need_dx=True, need_dw=True):
    """Gradients of conv_transpose2d: read back what each tap painted. Returns (dx, dw, db)."""
    N, C, H, W = x.shape
    _, F, kh, kw = w.shape
    dfull = _pad(dout, pad)
    dx = np.zeros_like(x) if need_dx else None
    dw = np.zeros_like(w) if need_dw else None
    for i in range(kh):
        for j in range(kw):
            tap = _taps(dfull, i, j, H, W, stride)
            if need_dx:
                dx += np.einsum("nfhw,cf->nchw", tap, w[:, :, i, j])
            if need_dw:
                dw[:, :, i, j] = np.einsum("nchw,nfhw->cf", x, tap)
    return dx, dw, dout.sum(axis=(0, 2, 3))


# ----------------------------------------------------------------------------- pool
# Twins: cpu/pool.py, cuda/pool.py.
def _windows(size, kernel, stride, pad, ceil_mode):
    """(start, end, divisor_extent) of each pooling window along one axis, Caffe's way."""
    for o in range(pool_out(size, kernel, stride, pad, ceil_mode)):
        start = o * stride - pad
        end = min(start + kernel, size + pad)        # the window clipped to the padded input
        extent = end - start                         # avg pool's divisor counts padding
        yield max(start, 0), min(end, size), extent


def max_pool2d(x, kernel, stride, pad, ceil_mode):
    """Max over each window (padding never wins). argmax holds the flat index h*W + w of the
    winner within its (n, c) plane, for the backward pass."""
    N, C, H, W = x.shape
    rows = list(_windows(H, kernel[0], stride[0], pad[0], ceil_mode))
    cols = list(_windows(W, kernel[1], stride[1], pad[1], ceil_mode))
    y = np.empty((N, C, len(rows), len(cols)), dtype=x.dtype)
    argmax = np.empty((N, C, len(rows), len(cols)), dtype=np.int32)
    for oh, (h0, h1, _) in enumerate(rows):
        for ow, (w0, w1, _) in enumerate(cols):
            win = x[:, :, h0:h1, w0:w1].reshape(N, C, -1)
            a = win.argmax(axis=-1)                  # first maximum wins ties; a NaN wins
            y[:, :, oh, ow] = np.take_along_axis(win, a[..., None], -1)[..., 0]
            argmax[:, :, oh, ow] = (h0 + a // (w1 - w0)) * W + w0 + a % (w1 - w0)
    return y, argmax


def max_pool2d_backward(dout, argmax, x_shape):
    """Route each output gradient to the input pixel that won its window."""
    N, C, H, W = x_shape
    dx = np.zeros((N * C, H * W), dtype=dout.dtype)
    planes = np.repeat(np.arange(N * C), dout.shape[2] * dout.shape[3])
    np.add.at(dx, (planes, argmax.reshape(-1)), dout.reshape(-1))
    return dx.reshape(x_shape)


def avg_pool2d(x, kernel, stride, pad, ceil_mode):
    """Mean over each window; the divisor is the window clipped to the padded input (Caffe)."""
    N, C, H, W = x.shape
    rows = list(_windows(H, kernel[0], stride[0], pad[0], ceil_mode))
    cols = list(_windows(W, kernel[1], stride[1], pad[1], ceil_mode))
    y = np.empty((N, C, len(rows), len(cols)), dtype=x.dtype)
    for oh, (h0, h1, eh) in enumerate(rows):
        for ow, (w0, w1, ew) in enumerate(cols):
            y[:, :, oh, ow] = x[:, :, h0:h1, w0:w1].sum(axis=(2, 3)) / (eh * ew)
    return y


def avg_pool2d_backward(dout, x_shape, kernel, stride, pad, ceil_mode):
    """Spread each output gradient evenly over its window (same divisor as the forward)."""
    N, C, H, W = x_shape
    dx = np.zeros(x_shape, dtype=dout.dtype)
    rows = _windows(H, kernel[0], stride[0], pad[0], ceil_mode)
    cols = list(_windows(W, kernel[1], stride[1], pad[1], ceil_mode))
    for oh, (h0, h1, eh) in enumerate(rows):
        for ow, (w0, w1, ew) in enumerate(cols):
            dx[:, :, h0:h1, w0:w1] += (dout[:, :, oh, ow] / (eh * ew))[:, :, None, None]
    return dx


# ----------------------------------------------------------------------------- pointwise
# Twins: cpu/pointwise.py (relu, dropout), cuda/pointwise.py (all of them).
def relu(x, slope):
    """max(x, 0), or a leaky slope for x < 0."""
    return np.where(x > 0, x, x * x.dtype.type(slope))


def relu_backward(dout, x, slope):
    """x may also be relu's output: its sign is the same (slope >= 0)."""
    return np.where(x > 0, dout, dout * dout.dtype.type(slope))


def relu_bits(x, slope):
    """relu, and where its output (so its input) is > 0, packed 8 to a byte: for backward."""
    return relu(x, slope), np.packbits(x.reshape(-1) > 0)


def relu_backward_bits(dout, bits, slope):
    return relu_backward(dout, np.unpackbits(bits, count=dout.size).reshape(dout.shape), slope)


def dropout(x, p, rng, train):
    """Inverted dropout: keep each unit with probability 1 - p and scale it by 1 / (1 - p), so
    nothing changes at test time. Returns (y, mask); mask is None when nothing was dropped."""
    if not train or p == 0:
        return x, None
    mask = (rng.random(x.shape) >= p).astype(x.dtype) / x.dtype.type(1 - p)
    return x * mask, mask


def dropout_backward(dout, mask):
    return dout if mask is None else dout * mask


def crop(x, like_shape, offset):
    """Caffe's Crop on axes 2 and 3: start at `offset`, take the reference's height and width."""
    H, W = like_shape[-2:]
    return np.ascontiguousarray(x[:, :, offset[0]:offset[0] + H, offset[1]:offset[1] + W])


def crop_backward(dout, x_shape, offset):
    dx = np.zeros(x_shape, dtype=dout.dtype)
    H, W = dout.shape[2:]
    dx[:, :, offset[0]:offset[0] + H, offset[1]:offset[1] + W] = dout
    return dx


def eltwise_sum(xs, coeffs):
    """sum_i coeffs[i] * xs[i]."""
    y = xs[0] * xs[0].dtype.type(coeffs[0])
    for x, c in zip(xs[1:], coeffs[1:]):
        y += x * x.dtype.type(c)
    return y


def scale(x, c):
    return x * x.dtype.type(c)


def concat(xs):
    """The inputs' channels one after the other (Caffe's Concat, axis 1)."""
    return np.concatenate(xs, axis=1)


def concat_backward(dout, channels):
    """dout cut back into the inputs' channel ranges."""
    bounds = np.cumsum([0] + list(channels))
    return [np.ascontiguousarray(dout[:, a:b]) for a, b in zip(bounds[:-1], bounds[1:])]


# ----------------------------------------------------------------------------- lrn
# Twins: the lrn sections of cpu/pointwise.py and cuda/pointwise.py.
def _lrn_scale(x, size, alpha, k):
    """scale[c] = k + alpha/size * sum of x^2 over the channel window of c (Caffe's pre-pad
    (size-1)//2 in front)."""
    pre = (size - 1) // 2
    sq = np.pad(x * x, ((0, 0), (pre, size - 1 - pre), (0, 0), (0, 0)))
    C = x.shape[1]
    window_sum = sum(sq[:, i:i + C] for i in range(size))
    return k + (alpha / size) * window_sum


def lrn(x, size, alpha, beta, k):
    """AlexNet's local response normalisation across channels: y = x * scale^-beta."""
    return x * _lrn_scale(x, size, alpha, k) ** -beta


def lrn_backward(dout, x, size, alpha, beta, k):
    """dx[c] = dout[c] scale[c]^-beta
               - 2 alpha beta / size * x[c] * sum over windows c' containing c of
                 dout[c'] y[c'] / scale[c']."""
    s = _lrn_scale(x, size, alpha, k)
    y = x * s ** -beta
    t = dout * y / s
    pre = (size - 1) // 2
    # channel c lies in the window of c' for c' in [c - (size-1-pre), c + pre]
    tp = np.pad(t, ((0, 0), (size - 1 - pre, pre), (0, 0), (0, 0)))
    C = x.shape[1]
    back = sum(tp[:, i:i + C] for i in range(size))
    return dout * s ** -beta - (2 * alpha * beta / size) * x * back


# ----------------------------------------------------------------------------- loss
# Twins: cpu/loss.py, cuda/loss.py.
def softmax_cross_entropy(scores, labels, ignore_label, normalize, class_weights):
    """Mean (or summed) -log softmax(scores)[label] over pixels; pixels labelled ignore_label
    count for nothing. Returns (loss, dscores). Normalisation:
      "valid": divide by the number of valid pixels (by their summed class weight if weighted),
      "batch": divide by N (Caffe's `normalize: false`, as the reference FCN nets train),
      "none":  the plain sum."""
    N, C = scores.shape[:2]
    valid = labels != ignore_label
    lab = np.where(valid, labels, 0)
    z = scores - scores.max(axis=1, keepdims=True)           # stable: exp never overflows
    logp = z - np.log(np.exp(z).sum(axis=1, keepdims=True))
    logp_label = np.take_along_axis(logp, lab[:, None].astype(np.intp), axis=1)[:, 0]
    weight = valid.astype(scores.dtype)
    if class_weights is not None:
        weight *= np.asarray(class_weights, dtype=scores.dtype)[lab]
    norm = {"valid": weight.sum(), "batch": N, "none": 1.0}[normalize]
    norm = float(norm) if norm > 0 else 1.0           # no valid pixel: loss 0, gradient 0
    loss = -(weight * logp_label).sum() / norm
    d = np.exp(logp)
    np.put_along_axis(d, lab[:, None].astype(np.intp),
                      np.take_along_axis(d, lab[:, None].astype(np.intp), axis=1) - 1, axis=1)
    d *= (weight / norm)[:, None].astype(scores.dtype)
    return float(loss), d.astype(scores.dtype, copy=False)


# ----------------------------------------------------------------------------- solver
# Twins: cpu/solver.py, cuda/solver.py.
def sgd_update(param, grad, buf, lr, momentum, weight_decay):
    """Caffe's SGD step, in place: buf = momentum*buf + lr*(grad + weight_decay*param);
    param -= buf."""
    buf *= momentum
    buf += lr * (grad + weight_decay * param)
    param -= buf


def adam_update(param, grad, m, v, lr, beta1, beta2, eps, weight_decay, t):
    """Adam step t (1-based), in place, with L2 weight decay added to the gradient:
    m, v = running means of g and g^2; param -= lr * m_hat / (sqrt(v_hat) + eps)."""
    g = grad + weight_decay * param
    m *= beta1
    m += (1 - beta1) * g
    v *= beta2
    v += (1 - beta2) * g * g
    m_hat = m / (1 - beta1 ** t)
    v_hat = v / (1 - beta2 ** t)
    param -= lr * m_hat / (np.sqrt(v_hat) + eps)


# ----------------------------------------------------------------------------- arrays
# Twin: cuda/arrays.py (the cpu device uses these).
# What a Net and a solver do between ops. On the host each is the NumPy expression it names;
# a device's version does the same where that device keeps its arrays.
def asarray(a):
    """`a` as this device holds arrays: a NumPy array. NumPy arrays pass through (no copy); an
    array on a GPU (anything with copy_to_host, e.g. a Numba device array) is copied back."""
    copy_to_host = getattr(a, "copy_to_host", None)
    return copy_to_host() if copy_to_host is not None else np.asarray(a)


to_host = asarray       # on the host, "as this device holds it" is "as NumPy holds it"


def zeros_like(a):
    # np.zeros, not np.zeros_like: it takes zeroed pages from the OS (calloc) and touches none
    # until they are written, where zeros_like writes every zero (537 MB for VGG16's grads)
    return np.zeros(a.shape, a.dtype)


def add(a, b):
    """a + b, a new array (two gradients reaching one blob)."""
    return a + b


def accumulate(dst, src):
    """dst += src in place (gradients summed over iter_size passes); returns dst."""
    dst += src
    return dst


# ----------------------------------------------------------------------------- score
# Twin: cuda/score.py (the cpu device uses these).
def argmax(scores):
    """The class map (N, H, W) of scores (N, C, H, W): the first highest class wins ties."""
    return scores.argmax(axis=1)


def confusion_update(hist, gt, pred, num_classes):
    """hist (n, n) int64 += the confusion counts of gt vs pred (score.py's fast_hist): pixels
    whose gt lies outside [0, n) (255: void) are skipped, and so (as on the GPU) are the
    predictions outside it, which argmax never makes. Returns hist."""
    n = int(num_classes)
    gt, pred = np.asarray(gt).ravel(), np.asarray(pred).ravel()
    keep = (gt >= 0) & (gt < n) & (pred >= 0) & (pred < n)
    # one bincount over the flat index n*gt + pred counts every (gt, pred) pair at once; cast
    # to int64 first: with uint8 labels n*gt would wrap around at 256
    flat = n * gt[keep].astype(np.int64) + pred[keep].astype(np.int64)
    hist += np.bincount(flat, minlength=n * n).reshape(n, n)
    return hist
