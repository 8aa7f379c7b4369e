"""The paper's nets: VGG16 / AlexNet classifiers, convolutionalize, FCN-32s/16s/8s.

    net = fcn8s(num_classes=21)                 # the reference voc-fcn8s, VGG16 backbone
    net = fcn8s_tiny(num_classes=5)             # same builder, a laptop-sized backbone
    net = convolutionalize(vgg16())             # section 3.1: fully connected -> 1x1... convs

Every FCN is built as the reference nets (shelhamer/fcn.berkeleyvision.org, voc-fcn*/net.py):
conv1_1 padded, fc6 a k x k convolution, dropout after fc6/fc7, score layers zero-initialised,
upsampling deconvolutions initialised to bilinear interpolation (the last one frozen), skips
fused by a sum after a crop, the output cropped to the input. No crop offset is typed in:
``Crop()`` takes its offset from the coordinate maps when it is added (minifcn.coordmap).

Backbones are VGG-style: blocks of 3x3 convolutions (pad 1) with ReLU, each closed by a 2x2
max pool of stride 2 (ceil mode), then fc6 and fc7. ``BACKBONES`` holds the presets: "vgg16"
(the paper's), "tiny" (trains on a laptop CPU in minutes) and "micro" (for tests). A preset
whose first_pad is "auto" uses the smallest pad of conv1_1 for which every crop exists at
every input size (``smallest_first_pad``), derived by shape arithmetic, not typed in.

Parameters are drawn in the net's dtype straight into place (float32: half the memory and
time of drawing float64 and casting); ``init="zeros"`` builds even the full VGG16 nets
without touching their 500 MB (the pages stay unallocated until written), which is how tests
and ``minifcn rf`` derive shapes, offsets and receptive fields for free.
"""
from __future__ import annotations

import copy
import functools
import math
from dataclasses import dataclass, replace

import numpy as np

from . import layers as L
from .coordmap import (CropError, blob_shapes, coord_map, fits, fmt_map, inverse,
                       is_integer_shift, total_stride)
from .net import Net


# ----------------------------------------------------------------------------- backbones
@dataclass(frozen=True)
class Backbone:
    """A VGG-style backbone. widths/depths: channels and number of 3x3 convs per block (one
    2x2 pool after each block); fc_width: channels of fc6/fc7; fc6_kernel/fc6_pad: fc6's
    window (the reference's 7x7, pad 0, needs a 7x7 pool5); first_pad: conv1_1's pad (an int,
    or "auto"); init: conv weight init for training from scratch ('he', 'xavier', 'zeros' or
    a std); normalize: the loss normalisation (minifcn.layers.SoftmaxLoss)."""
    name: str
    widths: tuple = (64, 128, 256, 512, 512)
    depths: tuple = (2, 2, 3, 3, 3)
    fc_width: int = 4096
    fc6_kernel: int = 7
    fc6_pad: int = 0
    first_pad: int | str = 100
    init: str | float = "he"
    dropout: float = 0.5
    normalize: str = "batch"
    in_ch: int = 3

    def __post_init__(self):
        if len(self.widths) != len(self.depths) or min(self.depths) < 1:
            raise ValueError(f"backbone {self.name!r}: widths {self.widths} and depths "
                             f"{self.depths} must have one entry >= 1 per block")


BACKBONES = {
    # the paper's VGG16 (Simonyan & Zisserman's configuration D)
    "vgg16": Backbone("vgg16"),
    # widths 16-32-64-128-128, about 1 M parameters: the demo's net. fc6 is a 3x3 (pad 1)
    # conv so that it runs on any input; the first pad is derived (see smallest_first_pad)
    "tiny": Backbone("tiny", widths=(16, 32, 64, 128, 128), fc_width=128, fc6_kernel=3,
                     fc6_pad=1, first_pad="auto", normalize="valid"),
    # one conv per block and a handful of channels: fast enough for property tests
    "micro": Backbone("micro", widths=(4, 8, 8, 16, 16), depths=(1, 1, 1, 1, 1), fc_width=16,
                      fc6_kernel=3, fc6_pad=1, first_pad="auto", normalize="valid"),
}


def get_backbone(backbone, **overrides):
    """A Backbone from a preset name (or a Backbone), with fields overridden."""
    if isinstance(backbone, str):
        if backbone not in BACKBONES:
            raise ValueError(f"unknown backbone {backbone!r}; presets: {', '.join(BACKBONES)}")
        backbone = BACKBONES[backbone]
    unknown = [k for k in overrides if k not in Backbone.__dataclass_fields__]
    if unknown:
        raise TypeError(f"unknown backbone field(s) {unknown}")
    return replace(backbone, **overrides) if overrides else backbone


# ----------------------------------------------------------------------------- building blocks
def _std(init, fan_in):
    if init == "he":
        return math.sqrt(2.0 / fan_in)
    if init == "xavier":
        return math.sqrt(1.0 / fan_in)
    if isinstance(init, (int, float)) and not isinstance(init, bool):
        return float(init)
    raise ValueError(f"unknown init {init!r}: use 'he', 'xavier', 'zeros' or a std")


class _Builder:
    """Adds layers to a Net with the naming and initialisation conventions of the reference."""

    def __init__(self, net, dtype, init, seed):
        self.net, self.dtype, self.init = net, np.dtype(dtype), init
        self.rng = np.random.default_rng(seed)
        self.seed = seed

    def fill(self, layer, init):
        """Draw a freshly built (all-zero) layer's weight in place, in its dtype."""
        if init == "zeros":
            return
        w = layer.params["weight"]
        std = _std(init, w[0].size)
        x = self.rng.standard_normal(w.shape, dtype=self.dtype)
        x *= self.dtype.type(std)
        layer.params["weight"] = x

    def conv(self, name, bottom, c_in, c_out, kernel, stride=1, pad=0, groups=1, init=None,
             relu=True):
        layer = L.Conv(c_in, c_out, kernel, stride, pad, groups=groups, init="zeros",
                       dtype=self.dtype)
        self.fill(layer, self.init if init is None else init)
        self.net.add(name, layer, bottom)
        if relu:
            self.net.add("relu" + name.removeprefix("conv").removeprefix("fc"), L.ReLU(),
                         name, name)
        return name

    def fc(self, name, bottom, in_shape, out, relu=True):
        layer = L.InnerProduct(in_shape, out, init="zeros", dtype=self.dtype)
        self.fill(layer, self.init)
        self.net.add(name, layer, bottom)
        if relu:
            self.net.add("relu" + name.removeprefix("fc"), L.ReLU(), name, name)
        return name

    def dropout(self, name, blob, p):
        if p > 0:
            seed = None if self.seed is None else [self.seed, int(name.removeprefix("drop"))]
            self.net.add(name, L.Dropout(p, seed=seed), blob, blob)

    def deconv(self, name, bottom, channels, kernel, stride, frozen):
        layer = L.Deconv(channels, channels, kernel, stride, bias=False, init="bilinear",
                         dtype=self.dtype)
        if frozen:
            layer.freeze()
        self.net.add(name, layer, bottom)
        return name


def _vgg_features(b, cfg, first_pad, conv_pad=1):
    """conv1_1 ... pool5; returns the last blob and its channels."""
    bottom, c = "data", cfg.in_ch
    for blk, (width, depth) in enumerate(zip(cfg.widths, cfg.depths), 1):
        for i in range(1, depth + 1):
            pad = first_pad if (blk, i) == (1, 1) else conv_pad
            bottom = b.conv(f"conv{blk}_{i}", bottom, c, width, 3, pad=pad)
            c = width
        b.net.add(f"pool{blk}", L.MaxPool(2, 2), bottom)
        bottom = f"pool{blk}"
    return bottom, c


def _init(init, materialize):
    """materialize=False: draw nothing (zeros, lazily allocated), for derivations."""
    return init if materialize else "zeros"


def _inputs(loss):
    return ["data", "label"] if loss else ["data"]


# ----------------------------------------------------------------------------- classifiers
def vgg_classifier(backbone="vgg16", num_classes=1000, input_size=224, conv_pad=1, loss=False,
                   init=None, dtype=np.float32, seed=0, normalize="valid", materialize=True,
                   **overrides):
    """A VGG-style ImageNet-type classifier: the backbone's convs (all with pad conv_pad),
    then fc6, fc7 (fully connected, with ReLU and dropout) and fc8 (num_classes scores) on an
    input of exactly input_size. Output blob "fc8" (N, num_classes, 1, 1)."""
    cfg = get_backbone(backbone, **overrides)
    net = Net(_inputs(loss), name=f"{cfg.name}_classifier")
    b = _Builder(net, dtype, _init(cfg.init if init is None else init, materialize), seed)
    top, c = _vgg_features(b, cfg, conv_pad, conv_pad)
    shape = blob_shapes(net, input_size)[top]            # pool5's shape, derived
    b.fc("fc6", top, shape, cfg.fc_width)
    b.dropout("drop6", "fc6", cfg.dropout)
    b.fc("fc7", "fc6", (cfg.fc_width, 1, 1), cfg.fc_width)
    b.dropout("drop7", "fc7", cfg.dropout)
    b.fc("fc8", "fc7", (cfg.fc_width, 1, 1), num_classes, relu=False)
    if loss:
        net.add("loss", L.SoftmaxLoss(normalize=normalize), ["fc8", "label"])
    return net


def vgg16(num_classes=1000, loss=False, init="he", dtype=np.float32, seed=0, normalize="valid",
          materialize=True):
    """VGG16 (configuration D) for 224 x 224 ImageNet inputs, fc6/fc7/fc8 fully connected:
    138 M parameters with 1000 classes."""
    return vgg_classifier("vgg16", num_classes, 224, 1, loss, init, dtype, seed, normalize,
                          materialize)


def _alexnet_features(b, pad1):
    """conv1 ... pool5 of AlexNet as the reference FCN has it (CaffeNet order: pool, then
    LRN; conv2, conv4, conv5 in two groups)."""
    b.conv("conv1", "data", 3, 96, 11, stride=4, pad=pad1)
    b.net.add("pool1", L.MaxPool(3, 2), "conv1")
    b.net.add("norm1", L.LRN(5, 1e-4, 0.75), "pool1")
    b.conv("conv2", "norm1", 96, 256, 5, pad=2, groups=2)
    b.net.add("pool2", L.MaxPool(3, 2), "conv2")
    b.net.add("norm2", L.LRN(5, 1e-4, 0.75), "pool2")
    b.conv("conv3", "norm2", 256, 384, 3, pad=1)
    b.conv("conv4", "conv3", 384, 384, 3, pad=1, groups=2)
    b.conv("conv5", "conv4", 384, 256, 3, pad=1, groups=2)
    b.net.add("pool5", L.MaxPool(3, 2), "conv5")
    return "pool5", 256


def alexnet(num_classes=1000, loss=False, init="he", dtype=np.float32, seed=0, normalize="valid",
            materialize=True):
    """AlexNet (Caffe's, with LRN and grouped convs) for 227 x 227 inputs, fc6/fc7/fc8 fully
    connected: 61 M parameters with 1000 classes."""
    net = Net(_inputs(loss), name="alexnet")
    b = _Builder(net, dtype, _init(init, materialize), seed)
    top, c = _alexnet_features(b, 0)
    b.fc("fc6", top, blob_shapes(net, 227)[top], 4096)
    b.dropout("drop6", "fc6", 0.5)
    b.fc("fc7", "fc6", (4096, 1, 1), 4096)
    b.dropout("drop7", "fc7", 0.5)
    b.fc("fc8", "fc7", (4096, 1, 1), num_classes, relu=False)
    if loss:
        net.add("loss", L.SoftmaxLoss(normalize=normalize), ["fc8", "label"])
    return net


def convolutionalize(net, copy_params=True):
    """Section 3.1: the same net with every fully connected layer turned into a convolution
    whose kernel covers that layer's whole input (weight (out, C*H*W) reshaped to
    (out, C, H, W)). It then slides over inputs of any size: on an input larger than the
    classifier's, its scores form a map whose unit (i, j) is the classifier applied to the
    input patch under that unit's receptive field.

    copy_params=False shares the parameter arrays with `net` (no memory; updating one
    updates the other)."""
    out = Net(net.inputs, name=net.name.removesuffix("_classifier") + "_conv")
    for name, layer in net.layers.items():
        if isinstance(layer, L.InnerProduct):
            c, h, w = layer.in_shape
            new = L.Conv(c, layer.out_ch, (h, w), bias="bias" in layer.params, init="zeros",
                         dtype=layer.params["weight"].dtype)
            wt = layer.params["weight"].reshape(layer.out_ch, c, h, w)
            new.params["weight"] = wt.copy() if copy_params else wt
            if "bias" in layer.params:
                new.params["bias"] = (layer.params["bias"].copy() if copy_params
                                      else layer.params["bias"])
            new.lr_mult.update(layer.lr_mult)
            new.decay_mult.update(layer.decay_mult)
            new.device = layer.device
        else:
            # a fresh object (layers cache their inputs between forward and backward); the
            # parameter arrays are copied or shared as asked
            memo = {} if copy_params else {id(v): v for v in layer.params.values()}
            new = copy.deepcopy(layer, memo)
            new.grads = {p: np.zeros(v.shape, v.dtype) for p, v in new.params.items()}
        out.add(name, new, net.bottoms[name], net.tops[name])
    return out


# ----------------------------------------------------------------------------- FCN heads
HEADS = ("32s", "16s", "8s")


def _fuse(b, up, skip, fuse):
    """Sum the upsampled scores `up` and the skip scores `skip`, after cropping one to the
    other. The reference always cuts the skip (pad 100 puts pool4's score map around the
    upsampled one: score_pool4c); with a small first pad the upsampled map reaches further
    and is the one cut (upscore2c). Which one, and where, comes from the coordinate map."""
    m = coord_map(b.net, skip, up)
    if is_integer_shift(m):
        b.net.add(skip + "c", L.Crop(), [skip, up])
        b.net.add(fuse, L.Sum(), [up, skip + "c"])
    elif is_integer_shift(inverse(m)):
        b.net.add(up + "c", L.Crop(), [up, skip])
        b.net.add(fuse, L.Sum(), [up + "c", skip])
    else:
        raise CropError(f"{b.net.name}: cannot fuse {up!r} and {skip!r}: the map between them "
                        f"is {fmt_map(m)}, not an integer shift either way")
    return fuse


def _build_fcn(head, cfg, num_classes, loss, first_pad, init, score_init, normalize, dtype,
               seed, upsampling, atonce=False, name=None):
    if head not in HEADS:
        raise ValueError(f"unknown head {head!r}; one of {HEADS}")
    if upsampling not in ("final", "all", "none"):
        raise ValueError(f"upsampling={upsampling!r}: which deconvolutions are frozen, "
                         f"'final' (the paper), 'all' (the reference nets) or 'none'")
    n = len(cfg.widths)
    if n < {"32s": 1, "16s": 2, "8s": 3}[head]:
        raise ValueError(f"FCN-{head} needs more than {n} pooling blocks")
    S = 2 ** n
    net = Net(_inputs(loss), name=name or f"fcn{head}")
    b = _Builder(net, dtype, init, seed)
    top, c = _vgg_features(b, cfg, first_pad)
    b.conv("fc6", top, c, cfg.fc_width, cfg.fc6_kernel, pad=cfg.fc6_pad)
    b.dropout("drop6", "fc6", cfg.dropout)
    b.conv("fc7", "fc6", cfg.fc_width, cfg.fc_width, 1)
    b.dropout("drop7", "fc7", cfg.dropout)
    b.conv("score_fr", "fc7", cfg.fc_width, num_classes, 1, init=score_init, relu=False)
    frozen = upsampling != "none"
    mid_frozen = upsampling == "all"

    def skip_score(pool, scale):
        src = pool
        if atonce:            # the at-once net scales pool4 / pool3 down before scoring them
            src = b.net.add("scale_" + pool, L.Scale(scale), pool)
        width = cfg.widths[int(pool.removeprefix("pool")) - 1]
        return b.conv("score_" + pool, src, width, num_classes, 1, init=score_init, relu=False)

    if head == "32s":
        final = b.deconv("upscore", "score_fr", num_classes, 2 * S, S, frozen)
    else:
        b.deconv("upscore2", "score_fr", num_classes, 4, 2, mid_frozen)
        p = f"pool{n - 1}"
        fuse = _fuse(b, "upscore2", skip_score(p, 0.01), "fuse_" + p)
        if head == "16s":
            final = b.deconv(f"upscore{S // 2}", fuse, num_classes, S, S // 2, frozen)
        else:
            up = b.deconv("upscore_" + p, fuse, num_classes, 4, 2, mid_frozen)
            p3 = f"pool{n - 2}"
            fuse = _fuse(b, up, skip_score(p3, 0.0001), "fuse_" + p3)
            final = b.deconv(f"upscore{S // 4}", fuse, num_classes, S // 2, S // 4, frozen)
    net.add("score", L.Crop(), [final, "data"])
    if loss:
        net.add("loss", L.SoftmaxLoss(normalize=normalize), ["score", "label"])
    return net


def _geometry(cfg):
    """The same backbone with one channel everywhere: coordinate maps and sizes do not depend
    on channels, so questions about them can be answered on a net that costs nothing."""
    return replace(cfg, widths=(1,) * len(cfg.widths), fc_width=1, in_ch=1, dropout=0.0)


@functools.lru_cache(maxsize=None)
def smallest_first_pad(head="8s", backbone="tiny", max_pad=1024):
    """The smallest pad of conv1_1 for which FCN-`head` on `backbone` runs at every input size
    H >= 1 with every crop existing: each crop's map an integer shift with b <= 0, and its
    window inside the blob it cuts.

    Only sizes 1 .. 2S are checked, S = total_stride(net) (32 for five pools), which covers
    all sizes: (1) every size rule (conv floor, pool ceil, deconv s(h-1)+k-2p, crop and sum
    copying their reference) is nondecreasing in its input, so a net that runs at H runs at
    every larger H, and runs at all H >= 1 iff it runs at H = 1; (2) growing the input by S
    grows a blob of stride s by exactly S/s units (S/s a whole number for every blob: floor
    and ceil of (n + S/s_in)/s shift by S/s_out exactly), so the slack of a crop, cut size
    minus offset minus reference size between blobs of the same stride, repeats with period S.
    H = 1 .. S is one full period; 2S leaves a margin."""
    cfg = _geometry(get_backbone(backbone))
    for pad in range(max_pad + 1):
        try:
            net = _build_fcn(head, cfg, 1, False, pad, "zeros", "zeros", "none", np.float32,
                             None, "final", name=f"fcn{head}_pad{pad}")
        except CropError:
            continue
        S = total_stride(net)
        if all(fits(net, (h, h)) for h in range(1, 2 * S + 1)):
            return pad
    raise ValueError(f"no first pad <= {max_pad} lets FCN-{head} on {backbone!r} run at every "
                     f"input size")


def _fcn(head, num_classes, loss, backbone, init, score_init, normalize, dtype, seed,
         upsampling, materialize, atonce=False, **overrides):
    cfg = get_backbone(backbone, **overrides)
    pad = cfg.first_pad
    if pad == "auto":
        pad = smallest_first_pad(head, _geometry(cfg))
    suffix = "" if cfg.name == "vgg16" else "_" + cfg.name
    name = f"fcn{head}{'_atonce' if atonce else ''}{suffix}"
    init = _init(cfg.init if init is None else init, materialize)
    normalize = cfg.normalize if normalize is None else normalize
    return _build_fcn(head, cfg, num_classes, loss, pad, init, score_init, normalize, dtype,
                      seed, upsampling, atonce, name)


_DOC = """FCN-{h} ({what}): inputs ["data", "label"] and a SoftmaxLoss (ignore_label 255) when
    loss=True, else input "data" and output "score" (N, num_classes, H, W) for any H x W.

    backbone: a preset of BACKBONES or a Backbone; other keyword arguments override its
    fields (first_pad=..., fc6_kernel=..., dropout=...). init: backbone conv init (default the
    backbone's: 'he'); 'zeros' builds instantly and leaves memory untouched (for derivations,
    or before importing pretrained weights). score_init: the score layers' (zeros, as the
    reference). normalize: the loss's ('batch' = the reference VGG FCNs' normalize: false).
    upsampling: frozen deconvolutions, 'final' (the paper), 'all' (the reference nets) or
    'none'. seed: weights and dropout masks. materialize=False: as init="zeros"."""


def fcn32s(num_classes=21, loss=True, backbone="vgg16", *, init=None, score_init="zeros",
           normalize=None, dtype=np.float32, seed=0, upsampling="final", materialize=True,
           **overrides):
    return _fcn("32s", num_classes, loss, backbone, init, score_init, normalize, dtype, seed,
                upsampling, materialize, **overrides)


def fcn16s(num_classes=21, loss=True, backbone="vgg16", *, init=None, score_init="zeros",
           normalize=None, dtype=np.float32, seed=0, upsampling="final", materialize=True,
           **overrides):
    return _fcn("16s", num_classes, loss, backbone, init, score_init, normalize, dtype, seed,
                upsampling, materialize, **overrides)


def fcn8s(num_classes=21, loss=True, backbone="vgg16", *, init=None, score_init="zeros",
          normalize=None, dtype=np.float32, seed=0, upsampling="final", materialize=True,
           **overrides):
    return _fcn("8s", num_classes, loss, backbone, init, score_init, normalize, dtype, seed,
                upsampling, materialize, **overrides)


def fcn8s_atonce(num_classes=21, loss=True, backbone="vgg16", *, init=None,
                 score_init="zeros", normalize=None, dtype=np.float32, seed=0,
                 upsampling="final", materialize=True, **overrides):
    return _fcn("8s", num_classes, loss, backbone, init, score_init, normalize, dtype, seed,
                upsampling, materialize, atonce=True, **overrides)


fcn32s.__doc__ = _DOC.format(h="32s", what="score_fr upsampled 32x in one step")
fcn16s.__doc__ = _DOC.format(h="16s", what="plus a pool4 skip")
fcn8s.__doc__ = _DOC.format(h="8s", what="plus pool4 and pool3 skips")
fcn8s_atonce.__doc__ = _DOC.format(h="8s at once", what="pool4 x 0.01 and pool3 x 0.0001 "
                                   "scaled before scoring, trained in one stage")


def fcn32s_tiny(num_classes=21, loss=True, **kwargs):
    """FCN-32s on the "tiny" backbone (He init, derived first pad, loss normalised by valid
    pixels). Keyword arguments as fcn32s."""
    return fcn32s(num_classes, loss, "tiny", **kwargs)


def fcn16s_tiny(num_classes=21, loss=True, **kwargs):
    """FCN-16s on the "tiny" backbone. Keyword arguments as fcn16s."""
    return fcn16s(num_classes, loss, "tiny", **kwargs)


def fcn8s_tiny(num_classes=21, loss=True, **kwargs):
    """FCN-8s on the "tiny" backbone (widths 16-32-64-128-128, fc 128, fc6 3x3: about 1 M
    parameters): the net the demo trains on a laptop CPU. Keyword arguments as fcn8s."""
    return fcn8s(num_classes, loss, "tiny", **kwargs)


def fcn8s_micro(num_classes=21, loss=True, **kwargs):
    """FCN-8s on the "micro" backbone (widths 4-8-8-16-16, one conv per block: about 10 k
    parameters): every layer of FCN-8s at a size that trains in seconds, for tests and for
    running the CUDA kernels in Numba's simulator. Keyword arguments as fcn8s."""
    return fcn8s(num_classes, loss, "micro", **kwargs)


def fcn_alexnet(num_classes=21, loss=True, *, init="he", score_init="zeros", normalize="valid",
                dtype=np.float32, seed=0, first_pad=100, upsampling="final", materialize=True):
    """FCN-AlexNet (voc-fcn-alexnet): conv1 11x11 stride 4 pad 100, fc6 6x6, upscore 63x63
    stride 32 (frozen bilinear), loss normalised by valid pixels (normalize: true). Its conv
    and fc layers keep Caffe's default multipliers, as the reference's prototxt gives them
    no param blocks: biases learn at lr 1 with decay 1, not at 2 without decay as in the VGG
    FCNs (score_fr has the 2 / 0 there too)."""
    net = Net(_inputs(loss), name="fcn_alexnet")
    b = _Builder(net, dtype, _init(init, materialize), seed)
    top, c = _alexnet_features(b, first_pad)
    b.conv("fc6", top, c, 4096, 6)
    b.dropout("drop6", "fc6", 0.5)
    b.conv("fc7", "fc6", 4096, 4096, 1)
    for name in ("conv1", "conv2", "conv3", "conv4", "conv5", "fc6", "fc7"):
        net.layers[name].lr_mult["bias"] = net.layers[name].decay_mult["bias"] = 1.0
    b.dropout("drop7", "fc7", 0.5)
    b.conv("score_fr", "fc7", 4096, num_classes, 1, init=score_init, relu=False)
    b.deconv("upscore", "score_fr", num_classes, 63, 32, upsampling != "none")
    net.add("score", L.Crop(), ["upscore", "data"])
    if loss:
        net.add("loss", L.SoftmaxLoss(normalize=normalize), ["score", "label"])
    return net


MODELS = {
    "vgg16": vgg16, "alexnet": alexnet,
    "fcn32s": fcn32s, "fcn16s": fcn16s, "fcn8s": fcn8s, "fcn8s_atonce": fcn8s_atonce,
    "fcn_alexnet": fcn_alexnet,
    "fcn32s_tiny": fcn32s_tiny, "fcn16s_tiny": fcn16s_tiny, "fcn8s_tiny": fcn8s_tiny,
    "fcn8s_micro": fcn8s_micro,
}


class UnknownModel(ValueError):
    """A model name that MODELS does not hold."""


def build(name, **kwargs):
    """The one way to build a model by name (the command line, examples, the bench):
    build("fcn8s", num_classes=21, init="zeros")."""
    if name not in MODELS:
        raise UnknownModel(f"unknown model {name!r}; choose one of {', '.join(sorted(MODELS))}")
    return MODELS[name](**kwargs)


# the paper's section-5 nets (SIFT Flow, NYUDv2, PASCAL-Context) live in their own module
from .scene_models import MODELS as _SCENE_MODELS  # noqa: E402

MODELS.update(_SCENE_MODELS)
