"""Stateless forward/backward ops on NCHW arrays: the public contract of the engine.

Every op checks its arguments (so a mistake is reported here, naming the shapes, not deep in a
kernel), normalises kernel/stride/pad/dilation to (h, w) pairs, then hands the work to the
kernel that ``minifcn.kernels.get(op, device)`` picks: ``device=None`` means the current
default (``minifcn.set_device`` / ``with minifcn.device(...)``).

Output sizes (Caffe's rules, see kernels/geometry.py):
    conv2d            H_out = floor((H + 2p - d(k-1) - 1) / s) + 1
    conv_transpose2d  H_out = s(H - 1) + k - 2p
    pooling           H_out = ceil((H + 2p - k) / s) + 1   (ceil_mode; last window in the input)
"""
from __future__ import annotations

import numpy as np

from .kernels import get
from .kernels.geometry import conv_out, deconv_out, pair, pool_out

_FLOATS = (np.dtype(np.float32), np.dtype(np.float64))
_NORMALIZE = ("valid", "batch", "none")
_default_rng = np.random.default_rng()


# ----------------------------------------------------------------------------- checks
def _check_arrays(op, **arrays):
    """Every array is float32 or float64 and they all share one dtype."""
    dtypes = {name: a.dtype for name, a in arrays.items() if a is not None}
    for name, dt in dtypes.items():
        if dt not in _FLOATS:
            raise ValueError(f"{op}: {name} has dtype {dt}; expected float32 or float64")
    if len(set(dtypes.values())) > 1:
        listed = ", ".join(f"{n} {d}" for n, d in dtypes.items())
        raise ValueError(f"{op}: arrays must share one dtype, got {listed}")


def _check_ndim(op, name, a, ndim):
    if a.ndim != ndim:
        raise ValueError(f"{op}: {name} must be {ndim}-D, got shape {tuple(a.shape)}")


def _check_geometry(op, kernel=None, stride=(1, 1), pad=(0, 0), dilation=(1, 1)):
    if kernel is not None and min(kernel) < 1:
        raise ValueError(f"{op}: kernel must be >= 1, got {kernel}")
    if min(stride) < 1 or min(dilation) < 1 or min(pad) < 0:
        raise ValueError(f"{op}: need stride >= 1, dilation >= 1, pad >= 0; got stride {stride},"
                         f" pad {pad}, dilation {dilation}")


def _check_out(op, x_shape, out_hw, what):
    if min(out_hw) < 1:
        raise ValueError(f"{op}: input {tuple(x_shape)} is too small for {what} "
                         f"(output would be {out_hw[0]}x{out_hw[1]})")


def _check_same_shape(op, name, a, shape):
    if tuple(a.shape) != tuple(shape):
        raise ValueError(f"{op}: {name} has shape {tuple(a.shape)}, expected {tuple(shape)}")


# ----------------------------------------------------------------------------- convolution
def conv2d_output_shape(x_shape, w_shape, stride=1, pad=0, dilation=1):
    (sh, sw), (ph, pw), (dh, dw) = pair(stride), pair(pad), pair(dilation)
    return (x_shape[0], w_shape[0], conv_out(x_shape[2], w_shape[2], sh, ph, dh),
            conv_out(x_shape[3], w_shape[3], sw, pw, dw))


def _conv_args(op, x, w, b, stride, pad, dilation, groups, dout=None):
    stride, pad = pair(stride, "stride"), pair(pad, "pad")
    dilation = pair(dilation, "dilation")
    _check_ndim(op, "x", x, 4)
    _check_ndim(op, "w", w, 4)
    _check_arrays(op, x=x, w=w, b=b, dout=dout)
    _check_geometry(op, w.shape[2:], stride, pad, dilation)
    groups = int(groups)
    if groups < 1 or w.shape[0] % groups:
        raise ValueError(f"{op}: w {tuple(w.shape)} has {w.shape[0]} output channels, not "
                         f"divisible by groups={groups}")
    if w.shape[1] * groups != x.shape[1]:
        raise ValueError(f"{op}: x has {x.shape[1]} channels but w {tuple(w.shape)} with groups="
                         f"{groups} expects {w.shape[1] * groups}")
    if b is not None and tuple(b.shape) != (w.shape[0],):
        raise ValueError(f"{op}: b has shape {tuple(b.shape)}, expected ({w.shape[0]},)")
    out = conv2d_output_shape(x.shape, w.shape, stride, pad, dilation)
    _check_out(op, x.shape, out[2:], f"kernel {tuple(w.shape[2:])} with pad {pad}, "
                                     f"dilation {dilation}")
    return stride, pad, dilation, groups, out


def conv2d(x, w, b=None, stride=1, pad=0, dilation=1, groups=1, *, device=None):
    """x (N, C_in, H, W), w (C_out, C_in/groups, kh, kw), b (C_out,) -> (N, C_out, H', W')."""
    stride, pad, dilation, groups, _ = _conv_args("conv2d", x, w, b, stride, pad, dilation,
                                                  groups)
    return get("conv2d", device)(x, w, b, stride, pad, dilation, groups)


def conv2d_backward(dout, x, w, stride=1, pad=0, dilation=1, groups=1, *, need_dx=True,
                    need_dw=True, device=None):
    """-> (dx, dw, db): the gradients of conv2d's loss with respect to x, w and the bias.
    need_dx / need_dw = False skip work nobody wants (the image's gradient, a frozen weight)
    and return None in that place."""
    stride, pad, dilation, groups, out = _conv_args("conv2d_backward", x, w, None, stride, pad,
                                                    dilation, groups, dout)
    _check_same_shape("conv2d_backward", "dout", dout, out)
    return get("conv2d_backward", device)(dout, x, w, stride, pad, dilation, groups,
                                          need_dx, need_dw)


def _deconv_args(op, x, w, b, stride, pad, dout=None):
    stride, pad = pair(stride, "stride"), pair(pad, "pad")
    _check_ndim(op, "x", x, 4)
    _check_ndim(op, "w", w, 4)
    _check_arrays(op, x=x, w=w, b=b, dout=dout)
    _check_geometry(op, w.shape[2:], stride, pad)
    if w.shape[0] != x.shape[1]:
        raise ValueError(f"{op}: x has {x.shape[1]} channels but w {tuple(w.shape)} expects "
                         f"{w.shape[0]} (w is (C_in, C_out, kh, kw))")
    if b is not None and tuple(b.shape) != (w.shape[1],):
        raise ValueError(f"{op}: b has shape {tuple(b.shape)}, expected ({w.shape[1]},)")
    out = (x.shape[0], w.shape[1], deconv_out(x.shape[2], w.shape[2], stride[0], pad[0]),
           deconv_out(x.shape[3], w.shape[3], stride[1], pad[1]))
    _check_out(op, x.shape, out[2:], f"kernel {tuple(w.shape[2:])} with pad {pad}")
    return stride, pad, out


def conv_transpose2d(x, w, b=None, stride=1, pad=0, *, device=None):
    """Caffe's Deconvolution: x (N, C_in, H, W), w (C_in, C_out, kh, kw) ->
    (N, C_out, s(H-1)+k-2p, ...). The adjoint of conv2d with the same w, stride and pad."""
    stride, pad, _ = _deconv_args("conv_transpose2d", x, w, b, stride, pad)
    return get("conv_transpose2d", device)(x, w, b, stride, pad)


def conv_transpose2d_backward(dout, x, w, stride=1, pad=0, *, need_dx=True, need_dw=True,
                              device=None):
    """-> (dx, dw, db) of conv_transpose2d."""
    stride, pad, out = _deconv_args("conv_transpose2d_backward", x, w, None, stride, pad, dout)
    _check_same_shape("conv_transpose2d_backward", "dout", dout, out)
    return get("conv_transpose2d_backward", device)(dout, x, w, stride, pad, need_dx, need_dw)


# ----------------------------------------------------------------------------- pooling
def _pool_args(op, x_shape, kernel, stride, pad, ceil_mode):
    kernel = pair(kernel, "kernel")
    stride = kernel if stride is None else pair(stride, "stride")
    pad = pair(pad, "pad")
    if len(x_shape) != 4:
        raise ValueError(f"{op}: x must be 4-D, got shape {tuple(x_shape)}")
    _check_geometry(op, kernel, stride, pad)
    if pad[0] >= kernel[0] or pad[1] >= kernel[1]:
        raise ValueError(f"{op}: pad {pad} must be smaller than kernel {kernel}")
    H, W = x_shape[2:]
    out = (x_shape[0], x_shape[1], pool_out(H, kernel[0], stride[0], pad[0], ceil_mode),
           pool_out(W, kernel[1], stride[1], pad[1], ceil_mode))
    # Caffe's ceil mode lets a window hang over the edge, even when the input is smaller than
    # the kernel (1 px -> 1 px through a 2x2 pool); only an empty output is an error
    if min(H, W) < 1 or min(out[2:]) < 1:
        raise ValueError(f"{op}: input {tuple(x_shape)} with pad {pad} is too small for kernel "
                         f"{kernel}, stride {stride} (output would be {out[2]}x{out[3]})")
    return kernel, stride, pad, bool(ceil_mode), out


def max_pool2d(x, kernel, stride=None, pad=0, ceil_mode=True, *, device=None):
    """-> (y, argmax): window maxima and, for backward, the flat index h*W + w of each winner
    within its (n, c) plane (int32). Padding never wins."""
    _check_arrays("max_pool2d", x=x)
    kernel, stride, pad, ceil_mode, _ = _pool_args("max_pool2d", x.shape, kernel, stride, pad,
                                                   ceil_mode)
    return get("max_pool2d", device)(x, kernel, stride, pad, ceil_mode)


def max_pool2d_backward(dout, argmax, x_shape, *, device=None):
    """dx of shape x_shape: each dout entry added at its window's argmax."""
    _check_arrays("max_pool2d_backward", dout=dout)
    _check_same_shape("max_pool2d_backward", "argmax", argmax, dout.shape)
    if len(x_shape) != 4 or tuple(x_shape[:2]) != tuple(dout.shape[:2]):
        raise ValueError(f"max_pool2d_backward: x_shape {tuple(x_shape)} does not match dout "
                         f"{tuple(dout.shape)}")
    return get("max_pool2d_backward", device)(dout, argmax, tuple(x_shape))


def avg_pool2d(x, kernel, stride=None, pad=0, ceil_mode=True, *, device=None):
    """Window means; the divisor is the window clipped to the padded input, as in Caffe."""
    _check_arrays("avg_pool2d", x=x)
    kernel, stride, pad, ceil_mode, _ = _pool_args("avg_pool2d", x.shape, kernel, stride, pad,
                                                   ceil_mode)
    return get("avg_pool2d", device)(x, kernel, stride, pad, ceil_mode)


def avg_pool2d_backward(dout, x_shape, kernel, stride=None, pad=0, ceil_mode=True, *,
                        device=None):
    _check_arrays("avg_pool2d_backward", dout=dout)
    kernel, stride, pad, ceil_mode, out = _pool_args("avg_pool2d_backward", tuple(x_shape),
                                                     kernel, stride, pad, ceil_mode)
    _check_same_shape("avg_pool2d_backward", "dout", dout, out)
    return get("avg_pool2d_backward", device)(dout, tuple(x_shape), kernel, stride, pad,
                                              ceil_mode)


# ----------------------------------------------------------------------------- pointwise
def relu(x, slope=0.0, *, bits=False, device=None):
    """max(x, 0); with slope > 0 a leaky ReLU (slope * x for x < 0). bits=True returns (y,
    bits): also where y > 0, as np.packbits(y.ravel() > 0), all relu_backward needs."""
    _check_arrays("relu", x=x)
    if slope < 0:
        raise ValueError(f"relu: slope must be >= 0, got {slope}")
    return get("relu_bits" if bits else "relu", device)(x, float(slope))


def relu_backward(dout, x, slope=0.0, *, device=None):
    """x may be relu's input or its output (the same sign pattern), or relu's uint8 bits."""
    bits = x.dtype == np.uint8
    _check_arrays("relu_backward", dout=dout, x=None if bits else x)
    _check_same_shape("relu_backward", "bits" if bits else "x", x,
                      ((dout.size + 7) // 8,) if bits else dout.shape)
    return get("relu_backward_bits" if bits else "relu_backward", device)(dout, x, float(slope))


def dropout(x, p, rng=None, train=True, *, device=None):
    """Inverted dropout -> (y, mask). Each unit is kept with probability 1 - p and scaled by
    1/(1 - p); at test time (train=False) y is x and mask is None."""
    _check_arrays("dropout", x=x)
    if not 0 <= p < 1:
        raise ValueError(f"dropout: p must be in [0, 1), got {p}")
    return get("dropout", device)(x, float(p), _default_rng if rng is None else rng, bool(train))


def dropout_backward(dout, mask, *, device=None):
    if mask is not None:
        _check_same_shape("dropout_backward", "mask", mask, dout.shape)
    return get("dropout_backward", device)(dout, mask)


def _crop_args(op, x_shape, like_shape, offset):
    offset = pair(offset, "offset")
    H, W = tuple(like_shape)[-2:]
    if min(offset) < 0 or offset[0] + H > x_shape[2] or offset[1] + W > x_shape[3]:
        raise ValueError(f"{op}: cannot take {H}x{W} at offset {offset} from "
                         f"{tuple(x_shape)}")
    return offset


def crop(x, like_shape, offset=0, *, device=None):
    """Caffe's Crop on the spatial axes: x[:, :, o_h:o_h + H_ref, o_w:o_w + W_ref], where
    (H_ref, W_ref) are the last two entries of like_shape. Not centred: the offset is where the
    window starts (FCN derives it from coordinate maps)."""
    _check_ndim("crop", "x", x, 4)
    offset = _crop_args("crop", x.shape, like_shape, offset)
    return get("crop", device)(x, tuple(like_shape), offset)


def crop_backward(dout, x_shape, offset=0, *, device=None):
    offset = _crop_args("crop_backward", x_shape, dout.shape, offset)
    return get("crop_backward", device)(dout, tuple(x_shape), offset)


def eltwise_sum(xs, coeffs=None, *, device=None):
    """sum_i coeffs[i] * xs[i] over arrays of one shape (coeffs default to 1)."""
    xs = list(xs)
    if not xs:
        raise ValueError("eltwise_sum: needs at least one input")
    coeffs = [1.0] * len(xs) if coeffs is None else [float(c) for c in coeffs]
    if len(coeffs) != len(xs):
        raise ValueError(f"eltwise_sum: {len(xs)} inputs but {len(coeffs)} coeffs")
    _check_arrays("eltwise_sum", **{f"xs[{i}]": x for i, x in enumerate(xs)})
    for i, x in enumerate(xs[1:], 1):
        _check_same_shape("eltwise_sum", f"xs[{i}]", x, xs[0].shape)
    return get("eltwise_sum", device)(xs, coeffs)


def eltwise_sum_backward(dout, coeffs, *, device=None):
    """The gradient reaching each input: coeffs[i] * dout."""
    return [scale(dout, c, device=device) for c in coeffs]


def concat(xs, *, device=None):
    """Caffe's Concat on the channel axis: arrays (N, C_i, H, W) of one N, H, W ->
    (N, sum C_i, H, W), the inputs' channels one after the other."""
    xs = list(xs)
    if not xs:
        raise ValueError("concat: needs at least one input")
    _check_arrays("concat", **{f"xs[{i}]": x for i, x in enumerate(xs)})
    for i, x in enumerate(xs):
        _check_ndim("concat", f"xs[{i}]", x, 4)
        if (x.shape[0],) + tuple(x.shape[2:]) != (xs[0].shape[0],) + tuple(xs[0].shape[2:]):
            raise ValueError(f"concat: xs[{i}] has shape {tuple(x.shape)}, xs[0] "
                             f"{tuple(xs[0].shape)}: only the channels may differ")
    return get("concat", device)(xs)


def concat_backward(dout, channels, *, device=None):
    """The gradient of each concat input: dout's channels cut back into pieces of
    `channels` (a list of C_i), each a new contiguous array."""
    channels = [int(c) for c in channels]
    _check_ndim("concat_backward", "dout", dout, 4)
    if min(channels, default=0) < 1 or sum(channels) != dout.shape[1]:
        raise ValueError(f"concat_backward: channels {channels} do not add up to dout's "
                         f"{dout.shape[1]}")
    return get("concat_backward", device)(dout, channels)


def scale(x, c, *, device=None):
    """c * x for a constant c (FCN-8s at-once scales pool3/pool4 down before scoring them)."""
    _check_arrays("scale", x=x)
    return get("scale", device)(x, float(c))


scale_backward = scale      # d(c x)/dx = c: the backward of a constant scale is the same op


def lrn(x, size=5, alpha=1e-4, beta=0.75, k=1.0, *, device=None):
    """AlexNet's local response normalisation across channels:
    y = x / (k + alpha/size * sum_{window} x^2)^beta, window of `size` channels around c."""
    _check_ndim("lrn", "x", x, 4)
    _check_arrays("lrn", x=x)
    if int(size) < 1:
        raise ValueError(f"lrn: size must be >= 1, got {size}")
    return get("lrn", device)(x, int(size), float(alpha), float(beta), float(k))


def lrn_backward(dout, x, size=5, alpha=1e-4, beta=0.75, k=1.0, *, device=None):
    _check_arrays("lrn_backward", dout=dout, x=x)
    _check_same_shape("lrn_backward", "dout", dout, x.shape)
    return get("lrn_backward", device)(dout, x, int(size), float(alpha), float(beta), float(k))


# ----------------------------------------------------------------------------- loss
def softmax_cross_entropy(scores, labels, ignore_label=255, normalize="valid",
                          class_weights=None, *, device=None):
    """Pixelwise softmax loss -> (loss, dscores).

    scores (N, C, H, W) float; labels (N, H, W) ints in [0, C) or ignore_label.
    normalize: "valid" divides by the valid pixels (weighted: by their summed class weight),
    "batch" by N (the reference FCN's `normalize: false`), "none" is the plain sum.
    dscores is the gradient of the returned loss."""
    op = "softmax_cross_entropy"
    _check_ndim(op, "scores", scores, 4)
    _check_arrays(op, scores=scores)
    if normalize not in _NORMALIZE:
        raise ValueError(f"{op}: normalize must be one of {_NORMALIZE}, got {normalize!r}")
    N, C, H, W = scores.shape
    if tuple(labels.shape) != (N, H, W):
        raise ValueError(f"{op}: labels have shape {tuple(labels.shape)}, scores "
                         f"{tuple(scores.shape)}: expected labels ({N}, {H}, {W})")
    if not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(f"{op}: labels must be integers, got dtype {labels.dtype}")
    if class_weights is not None:
        class_weights = np.asarray(class_weights, dtype=np.float64)
        if class_weights.shape != (C,):
            raise ValueError(f"{op}: class_weights has shape {class_weights.shape}, expected "
                             f"({C},)")
    if isinstance(labels, np.ndarray):          # device arrays are checked by their kernel
        bad = (labels != ignore_label) & ((labels < 0) | (labels >= C))
        if bad.any():
            values = np.unique(labels[bad])[:8].tolist()
            raise ValueError(f"{op}: labels hold values {values} outside [0, {C}) that are not "
                             f"ignore_label={ignore_label}")
        labels = np.ascontiguousarray(labels, dtype=np.int32)
    return get(op, device)(scores, labels, int(ignore_label), normalize, class_weights)


# ----------------------------------------------------------------------------- solver updates
def _check_like(op, param, **arrays):
    for name, a in arrays.items():
        _check_same_shape(op, name, a, param.shape)


def sgd_update(param, grad, buf, lr, momentum, weight_decay, *, device=None):
    """Caffe's SGD step, in place: buf = momentum buf + lr (grad + wd param); param -= buf."""
    _check_like("sgd_update", param, grad=grad, buf=buf)
    return get("sgd_update", device)(param, grad, buf, float(lr), float(momentum),
                                     float(weight_decay))


def adam_update(param, grad, m, v, lr, beta1, beta2, eps, weight_decay, t, *, device=None):
    """One Adam step (Kingma & Ba) at step t >= 1, in place on param, m and v; L2 weight decay
    is added to the gradient, as Caffe's solvers do."""
    _check_like("adam_update", param, grad=grad, m=m, v=v)
    if int(t) < 1:
        raise ValueError(f"adam_update: step t must be >= 1, got {t}")
    return get("adam_update", device)(param, grad, m, v, float(lr), float(beta1), float(beta2),
                                      float(eps), float(weight_decay), int(t))


# ----------------------------------------------------------------------------- arrays
# The chores a Net and a solver do between ops, on the device that holds the arrays. On the
# host devices each is the one-line NumPy expression it names; on cuda the arrays stay on the
# GPU and only what to_host returns comes back.
def asarray(a, *, device=None):
    """`a` as `device` holds arrays (a NumPy array on numpy/cpu, a GPU array on cuda); no copy
    when it is there already."""
    return get("asarray", device)(a)


def to_host(a, *, device=None):
    """A NumPy array with a's values (copied back from a GPU if it lives there)."""
    return get("to_host", device)(a)


def zeros_like(a, *, device=None):
    return get("zeros_like", device)(a)


def add(a, b, *, device=None):
    """a + b, a new array (two gradients reaching one blob)."""
    _check_same_shape("add", "b", b, a.shape)
    return get("add", device)(a, b)


def accumulate(dst, src, *, device=None):
    """dst += src in place (gradients summed over iter_size passes); returns dst."""
    _check_same_shape("accumulate", "src", src, dst.shape)
    return get("accumulate", device)(dst, src)


# ----------------------------------------------------------------------------- scoring
def argmax(scores, *, device=None):
    """The class map (N, H, W) of scores (N, C, H, W); the first highest class wins ties."""
    _check_ndim("argmax", "scores", scores, 4)
    return get("argmax", device)(scores)


def confusion_update(hist, gt, pred, num_classes, *, device=None):
    """hist (n, n) int64 += the confusion counts of gt (rows) vs pred (columns), the
    reference's fast_hist; gt and pred hold the same pixels in any shape, and pixels whose gt
    is outside [0, n) (255: void) are skipped.
    Returns hist."""
    n = int(num_classes)
    if tuple(hist.shape) != (n, n):
        raise ValueError(f"confusion_update: hist has shape {tuple(hist.shape)}, expected "
                         f"({n}, {n})")
    if gt.size != pred.size:
        raise ValueError(f"confusion_update: gt {tuple(gt.shape)} and pred {tuple(pred.shape)} "
                         f"hold different numbers of pixels")
    return get("confusion_update", device)(hist, gt, pred, n)
