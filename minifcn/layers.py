"""Layers: an op from minifcn.functional, the parameters it owns and what backward needs.

A layer is used by a Net (minifcn.net) through three things:
    tops = layer.forward(*bottoms)                  # arrays in, a tuple of arrays out
    dbottoms = layer.backward(dtops, need)          # need[i]: is bottom i's gradient wanted?
    layer.params / layer.grads                      # {"weight": array, "bias": array}
Parameter gradients are written to layer.grads (added to them over several backward passes:
iter_size), or handed to layer.grad_sink as they are made while Solver.during_backward sets it
(fc6's in blocks). lr_mult / decay_mult scale the solver's learning rate and weight decay per
parameter (Caffe's convention: biases 2x lr and no decay); lr_mult 0 freezes it (no gradient).

A layer's parameters and gradients live where its device keeps arrays: ``layer.to("cuda")``
(or ``net.to("cuda")``) copies them to the GPU, ``to("cpu")`` back; the copies and the one
in-place sum below are minifcn.functional ops, like every op.

Each layer also says how it moves coordinates and sizes, the rules minifcn.coordmap composes
through a graph (it knows no layer types, only these three methods):
    layer.coord_map()          ((a_h, b_h), (a_w, b_w)): bottom coordinate x -> a x + b in the top
    layer.extent(field)        the receptive field of top unit 0 from bottom unit 0's
    layer.out_shape(*shapes)   the top's (C, H, W) from the bottoms'; ShapeError if it cannot run
A layer without a coordinate map (a fully connected layer, or a new type that does not define
one) raises UndefinedMap, as Caffe's coord_map.py does: a crop is never derived through it.
Geometric layers keep their kernel / stride / pad / dilation as (h, w) pairs, so maps and
receptive fields are derived from them, never typed in.
"""
from __future__ import annotations

import math
from fractions import Fraction

import numpy as np

from . import functional as F
from .coordmap import IDENTITY, ShapeError, UndefinedMap
from .kernels.geometry import conv_out, deconv_out, pair, pool_out

GRAD_BLOCK_BYTES = 32 << 20    # with a grad_sink, bigger weight gradients go out in blocks


class Layer:
    """Base class. Subclasses set n_bottoms (None: any number >= 1) and implement _forward /
    _backward; the base class handles device, train/eval and gradient bookkeeping."""
    n_bottoms = 1
    inplace_ok = False       # may its top reuse its bottom's name (Caffe's in-place layers)?
    is_loss = False
    spatial_bottoms = None   # how many bottoms' coordinates reach the top (None: all of them)
    saved = ()               # what _forward keeps for _backward (release() drops it)
    grad_sink = None         # f(param, grad, accumulate, rows=None) applies a gradient (above)

    def __init__(self):
        self.params, self.grads = {}, {}            # name -> array (grads: the last backward's)
        self.lr_mult, self.decay_mult = {}, {}      # name -> float: the solver's multipliers
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
        for name in self.params:
            self.params[name] = F.asarray(self.params[name], device=device)
            self.grads[name] = F.asarray(self.grads[name], device=device)
        return self

    def _store_grad(self, name, g, accumulate):
        if g is None or not self.trainable(name):
            return
        if self.grad_sink:
            self.grad_sink(name, g, accumulate)
        elif accumulate:
            self.grads[name] = F.accumulate(self.grads[name], g, device=self.device)
        else:
            self.grads[name] = g

    # -- geometry (see the module docstring); a layer type that defines none has no map
    def coord_map(self):
        raise UndefinedMap(f"a {type(self).__name__} layer has no coordinate map")

    def extent(self, field):
        """[(lo, hi, stride)] per axis: the input interval top unit 0 sees and the input pixels
        between neighbouring top units, given the same for bottom unit 0."""
        raise UndefinedMap(f"a {type(self).__name__} layer has no coordinate map")

    def out_shape(self, *shapes):
        raise ShapeError(f"a {type(self).__name__} layer does not say its output shape")

    def note(self):
        """A word for minifcn.rf_table's last column ("" for most layers)."""
        return ""

    # -- the interface the Net uses
    def forward(self, *bottoms):
        out = self._forward(*bottoms)
        return out if isinstance(out, tuple) else (out,)

    def backward(self, dtops, need, accumulate=False):
        if not accumulate:    # the new gradients replace the old: free those first (peak memory)
            self.grads.update({p: None for p in self.grads if self.trainable(p)})
        out = self._backward(dtops, need, accumulate)
        return out if isinstance(out, tuple) else (out,)

    def release(self):       # a Net calls this once its backward is past this layer
        self.__dict__.update(dict.fromkeys(self.saved))

    def __repr__(self):
        geo = {k: getattr(self, k) for k in ("kernel", "stride", "pad", "dilation")
               if getattr(self, k, None) is not None}
        inner = ", ".join(f"{k}={v}" for k, v in geo.items())
        return f"{type(self).__name__}({inner})"

    # -- for minifcn.bench: this layer in PyTorch ops, and its arithmetic
    def torch_twin(self, torch):
        """This layer in PyTorch ops (`torch` the module): a function (bottoms, params, train,
        inplace) -> top; bottoms a list of tensors, params {"weight": tensor, ...}, inplace
        whether the Net runs this layer in place."""
        raise NotImplementedError(f"a {type(self).__name__} layer has no PyTorch twin")

    def flops(self, bottom_shape, top_shape):
        """Multiply-adds x 2 of a forward pass (only convolutions count)."""
        return 0.0


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


# ----------------------------------------------------------------------------- geometry kinds
class Pointwise(Layer):
    """A layer that works at each place on its own (ReLU, Dropout, Scale, LRN, Sum): its top
    has the bottom's coordinates, receptive field and size."""

    def coord_map(self):
        return IDENTITY

    def extent(self, field):
        return list(field)

    def out_shape(self, *shapes):
        return shapes[0]


class Window(Layer):
    """A layer whose top unit reads a k x k window (dilation d) of its bottom at stride s
    after padding p (convolution, pooling). Caffe's coord_map.py rule, per axis:
        a = 1/s,  b = (p - (k_e - 1)/2) / s,   k_e = d(k - 1) + 1
    and the paper's composition rule for the field: it grows by (k_e - 1) bottom strides."""

    def coord_map(self):
        return tuple((Fraction(1, s), Fraction(2 * p - (d * (k - 1) + 1) + 1, 2 * s))
                     for k, s, p, d in zip(self.kernel, self.stride, self.pad, self.dilation))

    def extent(self, field):
        out = []
        for (lo, hi, s_), k, s, p, d in zip(field, self.kernel, self.stride, self.pad,
                                            self.dilation):
            ke = d * (k - 1) + 1
            out.append((lo - p * s_, hi + (ke - 1 - p) * s_, s_ * s))
        return out


# ----------------------------------------------------------------------------- layers
class Conv(Window):
    """2-D convolution. weight (out_ch, in_ch/groups, kh, kw), bias (out_ch,)."""
    saved = ("x",)

    def __init__(self, in_ch, out_ch, kernel, stride=1, pad=0, dilation=1, groups=1, bias=True,
                 init="he", seed=None, dtype=np.float32):
        super().__init__()
        self.in_ch, self.out_ch, self.groups = int(in_ch), int(out_ch), int(groups)
        self.kernel, self.stride = pair(kernel, "kernel"), pair(stride, "stride")
        self.pad, self.dilation = pair(pad, "pad"), pair(dilation, "dilation")
        if self.in_ch % self.groups or self.out_ch % self.groups:
            raise ValueError(f"Conv: in_ch {in_ch}, out_ch {out_ch} must divide by groups {groups}")
        shape = (self.out_ch, self.in_ch // self.groups) + self.kernel
        fan_in = shape[1] * shape[2] * shape[3]
        self._param("weight", init_weight(shape, init, _rng(seed), fan_in, dtype).astype(
            dtype, copy=False))
        if bias:
            self._param("bias", np.zeros(self.out_ch, dtype=dtype), lr_mult=2.0, decay_mult=0.0)

    def _geometry(self):
        return dict(stride=self.stride, pad=self.pad, dilation=self.dilation, groups=self.groups)

    def out_shape(self, x):
        out = tuple(conv_out(n, k, s, p, d) for n, k, s, p, d in
                    zip(x[1:], self.kernel, self.stride, self.pad, self.dilation))
        if min(out) < 1:
            raise ShapeError(f"input too small for kernel {self.kernel}, pad {self.pad}, "
                             f"dilation {self.dilation}")
        return (self.out_ch,) + out

    def _forward(self, x):
        self.x = x
        return F.conv2d(x, self._weight4d(), self.params.get("bias"), **self._geometry(),
                        device=self.device)

    def _weight4d(self):
        return self.params["weight"]

    def _backward(self, dtops, need, accumulate):
        w, geo = self._weight4d(), self._geometry()
        big = (self.grad_sink and self.trainable("weight") and self.groups == 1
               and isinstance(w, np.ndarray) and w.nbytes > GRAD_BLOCK_BYTES)
        n = max(1, GRAD_BLOCK_BYTES * len(w) // w.nbytes) if big else 0    # rows per block
        blocks = [slice(r, r + n) for r in range(0, len(w), n)] if big else []   # to grad_sink
        dx, dw, db = F.conv2d_backward(dtops[0], self.x, w, **geo, need_dx=need[0],
                                       need_dw=self.trainable("weight") and not blocks,
                                       device=self.device)
        shape = self.params["weight"].shape                       # InnerProduct's is 2-D
        for rows in blocks:      # each block's gradient is rows of the whole one, same sums
            dwb = F.conv2d_backward(dtops[0][:, rows], self.x, w[rows], **geo, need_dx=False,
                                    device=self.device)[1]
            self.grad_sink("weight", dwb.reshape((-1,) + shape[1:]), accumulate, rows)
        self._store_grad("weight", dw if dw is None else dw.reshape(shape), accumulate)
        self._store_grad("bias", db, accumulate)
        return dx

    # -- for minifcn.bench: this layer in PyTorch ops, and its arithmetic
    def torch_twin(self, torch):
        return lambda xs, p, train, inplace: torch.nn.functional.conv2d(
            xs[0], p["weight"], p.get("bias"), self.stride, self.pad, self.dilation, self.groups)

    def flops(self, bottom_shape, top_shape):
        n, f, ho, wo = top_shape
        kh, kw = self.params["weight"].shape[2:]
        return 2.0 * n * f * ho * wo * (self.in_ch // self.groups) * kh * kw


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
        self._param("weight", self.params["weight"].reshape(out_features, c * h * w))
        self.kernel = None            # not a sliding window: no coordinate map

    def coord_map(self):
        raise UndefinedMap("a fully connected layer has no coordinate map")

    def extent(self, field):                 # every unit sees the whole (fixed-size) input
        (lo_h, hi_h, s_h), (lo_w, hi_w, s_w) = field
        _, h, w = self.in_shape
        return [(lo_h, hi_h + (h - 1) * s_h, s_h), (lo_w, hi_w + (w - 1) * s_w, s_w)]

    def out_shape(self, x):
        c, h, w = x
        if c is not None and tuple(x) != self.in_shape or (h, w) != self.in_shape[1:]:
            raise ShapeError(f"a fully connected layer needs exactly "
                             f"{'x'.join(map(str, self.in_shape))}")
        return (self.out_ch, 1, 1)

    def _forward(self, x):
        if tuple(x.shape[1:]) != self.in_shape:
            raise ValueError(f"InnerProduct expects inputs (N, {', '.join(map(str, self.in_shape))})"
                             f", got {tuple(x.shape)}")
        return super()._forward(x)             # (stride 1, no pad: Conv's defaults)

    def _weight4d(self):               # Conv._forward / _backward run on this view of it
        return self.params["weight"].reshape((-1,) + self.in_shape)

    # -- for minifcn.bench: this layer in PyTorch ops, and its arithmetic
    def torch_twin(self, torch):
        return lambda xs, p, train, inplace: torch.nn.functional.linear(
            xs[0].flatten(1), p["weight"], p.get("bias"))[:, :, None, None]

    def flops(self, bottom_shape, top_shape):
        return 2.0 * top_shape[0] * self.out_ch * math.prod(self.in_shape)


class Deconv(Layer):
    """Transposed convolution (Caffe's Deconvolution): weight (in_ch, out_ch, k, k); output
    s(H-1) + k - 2p. init='bilinear' gives the reference's upsampling filters."""
    saved = ("x",)

    def __init__(self, in_ch, out_ch, kernel, stride=1, pad=0, bias=False, init="bilinear",
                 seed=None, dtype=np.float32):
        super().__init__()
        self.in_ch, self.out_ch = int(in_ch), int(out_ch)
        self.kernel, self.stride, self.pad = pair(kernel), pair(stride), pair(pad)
        self.dilation = (1, 1)
        shape = (self.in_ch, self.out_ch) + self.kernel
        w = bilinear_weight(self.in_ch, self.out_ch, self.kernel) if init == "bilinear" else \
            init_weight(shape, init, _rng(seed), self.in_ch * self.kernel[0] * self.kernel[1])
        self._param("weight", w.astype(dtype))
        if bias:
            self._param("bias", np.zeros(self.out_ch, dtype=dtype), lr_mult=2.0, decay_mult=0.0)

    def coord_map(self):
        """Caffe's rule for Deconvolution, the inverse of a window's: a = s, b = (k_e-1)/2 - p."""
        return tuple((Fraction(s), Fraction(d * (k - 1), 2) - p)
                     for k, s, p, d in zip(self.kernel, self.stride, self.pad, self.dilation))

    def extent(self, field):
        out = []
        for (lo, hi, s_), k, s, p in zip(field, self.kernel, self.stride, self.pad):
            # top unit o reads bottom units i with 0 <= o + p - i*s < k. Units of one period
            # (o = 0..s-1) read different sets; the interval is their union, which starts
            # where unit 0's does (an upper bound on any one unit's field)
            first = min(math.ceil((o + p - k + 1) / s) for o in range(s))
            last = max((o + p) // s for o in range(s))
            out.append((lo + first * s_, hi + last * s_, Fraction(s_, s)))
        return out

    def out_shape(self, x):
        out = tuple(deconv_out(n, k, s, p) for n, k, s, p in
                    zip(x[1:], self.kernel, self.stride, self.pad))
        if min(out) < 1:
            raise ShapeError(f"empty output for kernel {self.kernel}, pad {self.pad}")
        return (self.out_ch,) + out

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
        self._store_grad("bias", db, accumulate)
        return dx

    # -- for minifcn.bench: this layer in PyTorch ops, and its arithmetic
    def torch_twin(self, torch):
        return lambda xs, p, train, inplace: torch.nn.functional.conv_transpose2d(
            xs[0], p["weight"], p.get("bias"), self.stride, self.pad)

    def flops(self, bottom_shape, top_shape):
        n, c, h, w = bottom_shape
        return 2.0 * n * c * h * w * self.out_ch * self.kernel[0] * self.kernel[1]


class MaxPool(Window):
    saved = ("argmax",)
    def __init__(self, kernel, stride=None, pad=0, ceil_mode=True):
        super().__init__()
        self.kernel = pair(kernel)
        self.stride = self.kernel if stride is None else pair(stride)
        self.pad, self.dilation, self.ceil_mode = pair(pad), (1, 1), ceil_mode

    def out_shape(self, x):
        # as minifcn.functional: ceil mode may hang a window over the edge, but the output
        # must not be empty
        out = tuple(pool_out(n, k, s, p, self.ceil_mode) for n, k, s, p in
                    zip(x[1:], self.kernel, self.stride, self.pad))
        if min(out) < 1:
            raise ShapeError(f"input too small for pooling kernel {self.kernel}, stride "
                             f"{self.stride}")
        return (x[0],) + out

    def _forward(self, x):
        y, self.argmax = F.max_pool2d(x, self.kernel, self.stride, self.pad, self.ceil_mode,
                                      device=self.device)
        self.x_shape = x.shape
        return y

    def _backward(self, dtops, need, accumulate):
        return F.max_pool2d_backward(dtops[0], self.argmax, self.x_shape,
                                     device=self.device) if need[0] else None

    # -- for minifcn.bench: this layer in PyTorch ops
    def torch_twin(self, torch):
        return lambda xs, p, train, inplace: torch.nn.functional.max_pool2d(
            xs[0], self.kernel, self.stride, self.pad, ceil_mode=self.ceil_mode)


class AvgPool(MaxPool):
    def _forward(self, x):
        self.x_shape = x.shape
        return F.avg_pool2d(x, self.kernel, self.stride, self.pad, self.ceil_mode,
                            device=self.device)

    def _backward(self, dtops, need, accumulate):
        return F.avg_pool2d_backward(dtops[0], self.x_shape, self.kernel, self.stride, self.pad,
                                     self.ceil_mode, device=self.device) if need[0] else None

    # -- for minifcn.bench: this layer in PyTorch ops
    def torch_twin(self, torch):
        return lambda xs, p, train, inplace: torch.nn.functional.avg_pool2d(
            xs[0], self.kernel, self.stride, self.pad, ceil_mode=self.ceil_mode)


class ReLU(Pointwise):
    saved = ("bits",)
    inplace_ok = True

    def __init__(self, slope=0.0):
        super().__init__()
        self.slope = float(slope)

    def _forward(self, x):
        # backward needs only the sign pattern: 1 bit an element, so the net may drop the top
        y, self.bits = F.relu(x, self.slope, bits=True, device=self.device)
        return y

    def _backward(self, dtops, need, accumulate):
        return F.relu_backward(dtops[0], self.bits, self.slope, device=self.device)

    # -- for minifcn.bench: this layer in PyTorch ops
    def torch_twin(self, torch):
        fn = torch.nn.functional
        if self.slope:
            return lambda xs, p, train, inplace: fn.leaky_relu(xs[0], self.slope, inplace)
        return lambda xs, p, train, inplace: fn.relu(xs[0], inplace)


class Dropout(Pointwise):
    """Inverted dropout; identity in eval mode. Its own seeded generator keeps runs
    reproducible (the solver saves and restores its state)."""
    saved = ("mask",)
    inplace_ok = True

    def __init__(self, p=0.5, seed=None):
        super().__init__()
        self.p, self.rng = float(p), _rng(seed)

    def _forward(self, x):
        y, self.mask = F.dropout(x, self.p, self.rng, self.training, device=self.device)
        return y

    def _backward(self, dtops, need, accumulate):
        return F.dropout_backward(dtops[0], self.mask, device=self.device)

    # -- for minifcn.bench: this layer in PyTorch ops
    def torch_twin(self, torch):
        # never in place: ReLU's backward reads the output it made in place (as in
        # torchvision's VGG: ReLU(inplace=True), then Dropout())
        return lambda xs, p, train, inplace: torch.nn.functional.dropout(xs[0], self.p, train)


class Crop(Layer):
    """Caffe's Crop: bottoms (x, reference) -> x cut to the reference's height and width,
    starting at `offset`. Leave offset None in a Net: it is derived from the coordinate maps
    when the net is built (an explicit offset is only an override)."""
    n_bottoms = 2
    spatial_bottoms = 1       # the reference only lends its shape (Caffe walks bottom 0 only)

    def __init__(self, offset=None):
        super().__init__()
        self.offset = None if offset is None else pair(offset, "offset")
        self.explicit = offset is not None

    @property
    def derives_offset(self):
        """Should a Net set the offset from the coordinate maps (no explicit one given)?"""
        return not self.explicit

    def _offset(self):
        if self.offset is None:
            raise UndefinedMap("crop offset not derived yet")
        return self.offset

    def coord_map(self):
        return tuple((Fraction(1), Fraction(-o)) for o in self._offset())

    def extent(self, field):
        return [(lo + o * s, hi + o * s, s) for (lo, hi, s), o in zip(field, self._offset())]

    def out_shape(self, x, ref):
        (oh, ow), (hr, wr) = self._offset(), ref[1:]
        if oh + hr > x[1] or ow + wr > x[2]:
            raise ShapeError(f"cannot take {hr}x{wr} at offset {self.offset} from "
                             f"{x[1]}x{x[2]}")
        return (x[0], hr, wr)

    def note(self):
        if self.offset is None:
            return ""
        oh, ow = self.offset
        return f"offset {oh if oh == ow else f'{oh}x{ow}'}" + (" (explicit)" if self.explicit
                                                                else "")

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

    # -- for minifcn.bench: this layer in PyTorch ops
    def torch_twin(self, torch):
        def twin(xs, p, train, inplace):
            (oh, ow), (h, w) = self.offset, xs[1].shape[-2:]
            return xs[0][:, :, oh:oh + h, ow:ow + w]
        return twin


class Sum(Pointwise):
    """Caffe's Eltwise SUM: coeffs[i] * bottoms[i], summed."""
    n_bottoms = None

    def __init__(self, coeffs=None):
        super().__init__()
        self.coeffs = None if coeffs is None else [float(c) for c in coeffs]

    def out_shape(self, *shapes):
        if any(s[1:] != shapes[0][1:] for s in shapes):
            raise ShapeError("adds blobs of different sizes")
        return shapes[0]

    def _forward(self, *xs):
        self.n = len(xs)
        return F.eltwise_sum(xs, self.coeffs, device=self.device)

    def _backward(self, dtops, need, accumulate):
        coeffs = self.coeffs or [1.0] * self.n
        return tuple(F.scale(dtops[0], c, device=self.device) if nd else None
                     for c, nd in zip(coeffs, need))

    # -- for minifcn.bench: this layer in PyTorch ops
    def torch_twin(self, torch):
        def twin(xs, p, train, inplace):
            coeffs = self.coeffs or [1.0] * len(xs)
            return sum(c * x if c != 1 else x for c, x in zip(coeffs, xs))
        return twin


class Concat(Pointwise):
    """Caffe's Concat on the channel axis: bottoms (N, C_i, H, W) of one size ->
    (N, sum C_i, H, W). Stacking channels moves no coordinate: an identity map (NYUD's
    early fusion stacks colour and depth this way)."""
    n_bottoms = None

    def out_shape(self, *shapes):
        if any(s[1:] != shapes[0][1:] for s in shapes):
            raise ShapeError("concatenates blobs of different sizes")
        c = [s[0] for s in shapes]
        return (None if None in c else sum(c),) + tuple(shapes[0][1:])

    def _forward(self, *xs):
        self.channels = [x.shape[1] for x in xs]
        return F.concat(xs, device=self.device)

    def _backward(self, dtops, need, accumulate):
        parts = F.concat_backward(dtops[0], self.channels, device=self.device)
        return tuple(p if nd else None for p, nd in zip(parts, need))

    def torch_twin(self, torch):
        return lambda xs, p, train, inplace: torch.cat(list(xs), 1)


class Silence(Pointwise):
    """Caffe's Silence: reads its bottoms and makes nothing (add it with tops=[]), so a blob
    nobody uses is not a net output."""
    n_bottoms = None

    def _forward(self, *xs):
        self.n = len(xs)
        return ()

    def _backward(self, dtops, need, accumulate):
        return (None,) * self.n


class Scale(Pointwise):
    """Multiply by a constant (FCN-8s at-once: pool4 x 0.01, pool3 x 0.0001)."""
    inplace_ok = True

    def __init__(self, c):
        super().__init__()
        self.c = float(c)

    def _forward(self, x):
        return F.scale(x, self.c, device=self.device)

    def _backward(self, dtops, need, accumulate):
        return F.scale(dtops[0], self.c, device=self.device)

    # -- for minifcn.bench: this layer in PyTorch ops
    def torch_twin(self, torch):
        return lambda xs, p, train, inplace: xs[0] * self.c


class LRN(Pointwise):
    """Local response normalisation across channels (AlexNet)."""
    saved = ("x",)

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

    # -- for minifcn.bench: this layer in PyTorch ops
    def torch_twin(self, torch):
        return lambda xs, p, train, inplace: torch.nn.functional.local_response_norm(
            xs[0], self.size, self.alpha, self.beta, self.k)


class SoftmaxLoss(Layer):
    """Pixelwise softmax cross-entropy: bottoms (scores, labels) -> the loss, a float.
    normalize: 'valid' (by valid pixels), 'batch' (by N: the reference FCN's normalize: false)
    or 'none'. loss_weight scales the loss and its gradient (Caffe's loss_weight)."""
    saved = ("dscores",)
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

    # -- for minifcn.bench: this layer in PyTorch ops
    def torch_twin(self, torch):
        # "valid": the mean over valid pixels; "batch": the sum, over N; "none": the sum
        reduction = "mean" if self.normalize == "valid" else "sum"

        def twin(xs, p, train, inplace):
            loss = torch.nn.functional.cross_entropy(
                xs[0], xs[1], ignore_index=self.ignore_label, reduction=reduction)
            if self.normalize == "batch":
                loss = loss / xs[0].shape[0]
            return loss * self.loss_weight
        return twin
