"""Layers: an op from minifcn.functional, the parameters it owns and what backward needs.

A layer is used by a Net (minifcn.net) through three things:
    tops = layer.forward(*bottoms)                  # arrays in, a tuple of arrays out
    dbottoms = layer.backward(dtops, need)          # need[i]: is bottom i's gradient wanted?
    layer.params / layer.grads                      # {"weight": array, "bias": array}
Parameter gradients are written to layer.grads (added to them when accumulating over several
backward passes, the reference's iter_size). lr_mult / decay_mult scale the solver's learning
rate and weight decay per parameter (Caffe's convention: biases 2x lr and no decay); an
lr_mult of 0 freezes a parameter, and its gradient is then never computed.

A layer's parameters and gradients live where its device keeps arrays: ``layer.to("cuda")``
(or ``net.to("cuda")``) copies them to the GPU, ``to("cpu")`` back; the copies and the one
in-place sum below go through the dispatch table, like every op.

Geometric layers keep their kernel / stride / pad / dilation as (h, w) pairs: coordinate maps
and receptive fields are derived from them (minifcn.coordmap), never typed in.
"""
from __future__ import annotations

import numpy as np

from . import functional as F
from .kernels import get
from .kernels.geometry import pair


class Layer:
    """Base class. Subclasses set n_bottoms (None: any number >= 1) and implement _forward /
    _backward; the base class handles device, train/eval and gradient bookkeeping."""
    n_bottoms = 1
    inplace_ok = False       # may its top reuse its bottom's name (Caffe's in-place layers)?
    is_loss = False

    def __init__(self):
        self.params: dict[str, np.ndarray] = {}
        self.grads: dict[str, np.ndarray] = {}
        self.lr_mult: dict[str, float] = {}
        self.decay_mult: dict[str, float] = {}
        self.device = None          # None: the current default device
        self.training = True

    # -- parameters
    def _param(self, name, value, lr_mult=1.0, decay_mult=1.0):
        self.params[name] = value
        self.grads[name] = np.zeros(value.shape, value.dtype)    # calloc: no pages touched
        self.lr_mult[name] = float(lr_mult)
        self.decay_mult[name] = float(decay_mult)

    def trainable(self, name):
        return name in self.params and self.lr_mult[name] != 0

    def freeze(self, *names):
        """Set lr_mult 0 (all parameters if no names given): the solver leaves them alone and
        backward skips their gradients."""
        for name in names or tuple(self.params):
            self.lr_mult[name] = 0.0
        return self

    def to(self, device):
        """Run on `device` (None: the current default), its parameters and gradients copied to
        where that device keeps arrays (no copy when they are there already)."""
        self.device = device
        move = get("asarray", device)
        for name in self.params:
            self.params[name] = move(self.params[name])
            self.grads[name] = move(self.grads[name])
        return self

    def _store_grad(self, name, g, accumulate):
        if g is None:
            return
        if accumulate:
            self.grads[name] = get("accumulate", self.device)(self.grads[name], g)
        else:
            self.grads[name] = g

    # -- the interface the Net uses
    def forward(self, *bottoms):
        out = self._forward(*bottoms)
        return out if isinstance(out, tuple) else (out,)

    def backward(self, dtops, need, accumulate=False):
        if not accumulate:    # the new gradients replace the old: free those first (peak memory)
            self.grads.update({p: None for p in self.grads if self.trainable(p)})
        out = self._backward(dtops, need, accumulate)
        return out if isinstance(out, tuple) else (out,)

    def __repr__(self):
        geo = {k: getattr(self, k) for k in ("kernel", "stride", "pad", "dilation")
               if getattr(self, k, None) is not None}
        inner = ", ".join(f"{k}={v}" for k, v in geo.items())
        return f"{type(self).__name__}({inner})"


# ----------------------------------------------------------------------------- initialisers
def upsample_filt(size):
    """The bilinear kernel of the reference's surgery.upsample_filt: a (size, size) tent."""
    factor = (size + 1) // 2
    center = factor - 1 if size % 2 == 1 else factor - 0.5
    og = np.ogrid[:size, :size]
    return (1 - abs(og[0] - center) / factor) * (1 - abs(og[1] - center) / factor)


def bilinear_weight(c_in, c_out, kernel):
    """Deconvolution weight (c_in, c_out, k, k) that upsamples each channel bilinearly: the
    tent on the diagonal w[c, c], zero across channels (the reference's `interp`)."""
    kh, kw = pair(kernel)
    if kh != kw or not (c_in == c_out or c_in == 1 or c_out == 1):
        raise ValueError(f"bilinear init needs a square kernel and c_in == c_out (or one of "
                         f"them 1); got kernel {kernel}, c_in {c_in}, c_out {c_out}")
    w = np.zeros((c_in, c_out, kh, kw))
    filt = upsample_filt(kh)
    if c_in == c_out:
        w[range(c_in), range(c_out)] = filt
    else:
        w[:, :] = filt
    return w


def init_weight(shape, init, rng, fan_in, dtype=np.float64):
    """'he' (Gaussian, std sqrt(2/fan_in): keeps ReLU activations' scale), 'xavier', 'zeros',
    or a float: a Gaussian with that std (Caffe's gaussian filler)."""
    if init == "zeros":
        return np.zeros(shape, dtype)     # lazily zeroed memory: a big zero net costs nothing
    if init == "he":
        std = np.sqrt(2.0 / fan_in)
    elif init == "xavier":
        std = np.sqrt(1.0 / fan_in)
    elif isinstance(init, (int, float)):
        std = float(init)
    else:
        raise ValueError(f"unknown init {init!r}: use 'he', 'xavier', 'zeros' or a std")
    return rng.standard_normal(shape) * std


def _rng(seed):
    return seed if isinstance(seed, np.random.Generator) else np.random.default_rng(seed)


# ----------------------------------------------------------------------------- layers
class Conv(Layer):
    """2-D convolution. weight (out_ch, in_ch/groups, kh, kw), bias (out_ch,)."""

    def __init__(self, in_ch, out_ch, kernel, stride=1, pad=0, dilation=1, groups=1, bias=True,
                 init="he", seed=None, dtype=np.float32):
        super().__init__()
        self.in_ch, self.out_ch, self.groups = int(in_ch), int(out_ch), int(groups)
        self.kernel, self.stride = pair(kernel, "kernel"), pair(stride, "stride")
        self.pad, self.dilation = pair(pad, "pad"), pair(dilation, "dilation")
        if self.in_ch % self.groups or self.out_ch % self.groups:
            raise ValueError(f"Conv: in_ch {in_ch} and out_ch {out_ch} must divide by groups "
                             f"{groups}")
        shape = (self.out_ch, self.in_ch // self.groups) + self.kernel
        fan_in = shape[1] * shape[2] * shape[3]
        self._param("weight", init_weight(shape, init, _rng(seed), fan_in, dtype).astype(
            dtype, copy=False))
        if bias:
            self._param("bias", np.zeros(self.out_ch, dtype=dtype), lr_mult=2.0, decay_mult=0.0)

    def _geometry(self):
        return dict(stride=self.stride, pad=self.pad, dilation=self.dilation, groups=self.groups)

    def _forward(self, x):
        self.x = x
        return F.conv2d(x, self.params["weight"], self.params.get("bias"), **self._geometry(),
                        device=self.device)

    def _backward(self, dtops, need, accumulate):
        dx, dw, db = F.conv2d_backward(dtops[0], self.x, self.params["weight"],
                                       **self._geometry(), need_dx=need[0],
                                       need_dw=self.trainable("weight"), device=self.device)
        self._store_grad("weight", dw, accumulate)
        if self.trainable("bias"):
            self._store_grad("bias", db, accumulate)
        return dx


class InnerProduct(Conv):
    """A fully connected layer on a (N, C, H, W) input of fixed size: out[n, f] = sum over
    c, h, w of weight[f, c*H*W + h*W + w] x[n, c, h, w] + bias[f], returned as (N, out, 1, 1).

    weight is kept 2-D, (out, C*H*W), as a classifier's. It is run as a convolution whose
    kernel covers the whole input -- the very observation of the paper's section 3.1, which
    minifcn.models.convolutionalize then turns into a real, slidable convolution."""

    def __init__(self, in_shape, out_features, bias=True, init="he", seed=None,
                 dtype=np.float32):
        c, h, w = (int(v) for v in in_shape)
        super().__init__(c, out_features, (h, w), bias=bias, init=init, seed=seed, dtype=dtype)
        self.in_shape = (c, h, w)
        self.params["weight"] = self.params["weight"].reshape(out_features, c * h * w)
        self.grads["weight"] = np.zeros(self.params["weight"].shape, self.params["weight"].dtype)
        self.kernel = None            # not a sliding window: no coordinate map

    def _geometry(self):
        return dict(stride=1, pad=0, dilation=1, groups=1)

    def _forward(self, x):
        if tuple(x.shape[1:]) != self.in_shape:
            raise ValueError(f"InnerProduct expects inputs (N, {', '.join(map(str, self.in_shape))})"
                             f", got {tuple(x.shape)}")
        self.x = x
        w = self.params["weight"].reshape((-1,) + self.in_shape)
        return F.conv2d(x, w, self.params.get("bias"), device=self.device)

    def _backward(self, dtops, need, accumulate):
        w = self.params["weight"].reshape((-1,) + self.in_shape)
        dx, dw, db = F.conv2d_backward(dtops[0], self.x, w, need_dx=need[0],
                                       need_dw=self.trainable("weight"), device=self.device)
        self._store_grad("weight", None if dw is None else dw.reshape(w.shape[0], -1),
                         accumulate)
        if self.trainable("bias"):
            self._store_grad("bias", db, accumulate)
        return dx


class Deconv(Layer):
    """Transposed convolution (Caffe's Deconvolution): weight (in_ch, out_ch, k, k); output
    s(H-1) + k - 2p. init='bilinear' gives the reference's upsampling filters."""

    def __init__(self, in_ch, out_ch, kernel, stride=1, pad=0, bias=False, init="bilinear",
                 seed=None, dtype=np.float32):
        super().__init__()
        self.in_ch, self.out_ch = int(in_ch), int(out_ch)
        self.kernel, self.stride, self.pad = pair(kernel), pair(stride), pair(pad)
        self.dilation = (1, 1)
        shape = (self.in_ch, self.out_ch) + self.kernel
        if init == "bilinear":
            w = bilinear_weight(self.in_ch, self.out_ch, self.kernel)
        else:
            w = init_weight(shape, init, _rng(seed), self.in_ch * self.kernel[0] * self.kernel[1])
        self._param("weight", w.astype(dtype))
        if bias:
            self._param("bias", np.zeros(self.out_ch, dtype=dtype), lr_mult=2.0, decay_mult=0.0)

    def _forward(self, x):
        self.x = x
        return F.conv_transpose2d(x, self.params["weight"], self.params.get("bias"),
                                  self.stride, self.pad, device=self.device)

    def _backward(self, dtops, need, accumulate):
        dx, dw, db = F.conv_transpose2d_backward(dtops[0], self.x, self.params["weight"],
                                                 self.stride, self.pad, need_dx=need[0],
                                                 need_dw=self.trainable("weight"),
                                                 device=self.device)
        self._store_grad("weight", dw, accumulate)
        if self.trainable("bias"):
            self._store_grad("bias", db, accumulate)
        return dx


class MaxPool(Layer):
    def __init__(self, kernel, stride=None, pad=0, ceil_mode=True):
        super().__init__()
        self.kernel = pair(kernel)
        self.stride = self.kernel if stride is None else pair(stride)
        self.pad, self.dilation, self.ceil_mode = pair(pad), (1, 1), ceil_mode

    def _forward(self, x):
        y, self.argmax = F.max_pool2d(x, self.kernel, self.stride, self.pad, self.ceil_mode,
                                      device=self.device)
        self.x_shape = x.shape
        return y

    def _backward(self, dtops, need, accumulate):
        if not need[0]:
            return None
        return F.max_pool2d_backward(dtops[0], self.argmax, self.x_shape, device=self.device)


class AvgPool(MaxPool):
    def _forward(self, x):
        self.x_shape = x.shape
        return F.avg_pool2d(x, self.kernel, self.stride, self.pad, self.ceil_mode,
                            device=self.device)

    def _backward(self, dtops, need, accumulate):
        if not need[0]:
            return None
        return F.avg_pool2d_backward(dtops[0], self.x_shape, self.kernel, self.stride, self.pad,
                                     self.ceil_mode, device=self.device)


class ReLU(Layer):
    inplace_ok = True

    def __init__(self, slope=0.0):
        super().__init__()
        self.slope = float(slope)

    def _forward(self, x):
        self.y = F.relu(x, self.slope, device=self.device)
        return self.y

    def _backward(self, dtops, need, accumulate):
        # the output has the input's sign pattern, so x need not be kept
        return F.relu_backward(dtops[0], self.y, self.slope, device=self.device)


class Dropout(Layer):
    """Inverted dropout; identity in eval mode. Its own seeded generator keeps runs
    reproducible (the solver saves and restores its state)."""
    inplace_ok = True

    def __init__(self, p=0.5, seed=None):
        super().__init__()
        self.p, self.rng = float(p), _rng(seed)

    def _forward(self, x):
        y, self.mask = F.dropout(x, self.p, self.rng, self.training, device=self.device)
        return y

    def _backward(self, dtops, need, accumulate):
        return F.dropout_backward(dtops[0], self.mask, device=self.device)


class Crop(Layer):
    """Caffe's Crop: bottoms (x, reference) -> x cut to the reference's height and width,
    starting at `offset`. Leave offset None in a Net: it is derived from the coordinate maps
    when the net is built (an explicit offset is only an override)."""
    n_bottoms = 2

    def __init__(self, offset=None):
        super().__init__()
        self.offset = None if offset is None else pair(offset, "offset")
        self.explicit = offset is not None

    def _forward(self, x, ref):
        if self.offset is None:
            raise ValueError("Crop has no offset: add it to a Net (which derives it from the "
                             "coordinate maps) or give one")
        self.x_shape = x.shape
        return F.crop(x, ref.shape, self.offset, device=self.device)

    def _backward(self, dtops, need, accumulate):
        dx = F.crop_backward(dtops[0], self.x_shape, self.offset, device=self.device) \
            if need[0] else None
        return dx, None          # the reference only lends its shape


class Sum(Layer):
    """Caffe's Eltwise SUM: coeffs[i] * bottoms[i], summed."""
    n_bottoms = None

    def __init__(self, coeffs=None):
        super().__init__()
        self.coeffs = None if coeffs is None else [float(c) for c in coeffs]

    def _forward(self, *xs):
        self.n = len(xs)
        return F.eltwise_sum(xs, self.coeffs, device=self.device)

    def _backward(self, dtops, need, accumulate):
        coeffs = self.coeffs or [1.0] * self.n
        return tuple(F.scale(dtops[0], c, device=self.device) if nd else None
                     for c, nd in zip(coeffs, need))


class Scale(Layer):
    """Multiply by a constant (FCN-8s at-once: pool4 x 0.01, pool3 x 0.0001)."""
    inplace_ok = True

    def __init__(self, c):
        super().__init__()
        self.c = float(c)

    def _forward(self, x):
        return F.scale(x, self.c, device=self.device)

    def _backward(self, dtops, need, accumulate):
        return F.scale(dtops[0], self.c, device=self.device)


class LRN(Layer):
    """Local response normalisation across channels (AlexNet)."""

    def __init__(self, size=5, alpha=1e-4, beta=0.75, k=1.0):
        super().__init__()
        self.size, self.alpha, self.beta, self.k = int(size), float(alpha), float(beta), float(k)

    def _args(self):
        return dict(size=self.size, alpha=self.alpha, beta=self.beta, k=self.k)

    def _forward(self, x):
        self.x = x
        return F.lrn(x, **self._args(), device=self.device)

    def _backward(self, dtops, need, accumulate):
        return F.lrn_backward(dtops[0], self.x, **self._args(), device=self.device)


class SoftmaxLoss(Layer):
    """Pixelwise softmax cross-entropy: bottoms (scores, labels) -> the loss, a float.
    normalize: 'valid' (by valid pixels), 'batch' (by N: the reference FCN's normalize: false)
    or 'none'. loss_weight scales the loss and its gradient (Caffe's loss_weight)."""
    n_bottoms = 2
    is_loss = True

    def __init__(self, ignore_label=255, normalize="valid", class_weights=None, loss_weight=1.0):
        super().__init__()
        self.ignore_label, self.normalize = int(ignore_label), normalize
        self.class_weights, self.loss_weight = class_weights, float(loss_weight)

    def _forward(self, scores, labels):
        loss, self.dscores = F.softmax_cross_entropy(
            scores, labels, self.ignore_label, self.normalize, self.class_weights,
            device=self.device)
        return self.loss_weight * loss

    def _backward(self, dtops, need, accumulate):
        scale = self.loss_weight * float(dtops[0])
        d = self.dscores if scale == 1 else F.scale(self.dscores, scale, device=self.device)
        return d, None
