"""Shift-and-stitch and filter rarefaction (section 3.2 of the paper).

A net whose layer `L` has stride f gives one output per f input pixels. Two ways to get an
output for every pixel instead, with the same weights:

shift-and-stitch   run the net on the f x f inputs shifted by (dy, dx), 0 <= dy, dx < f, and
                   interlace: out[..., f*i + dy, f*j + dx] = net(x shifted by (dy, dx))[..., i, j]
rarefaction        set L's stride to 1 and dilate every later filter by f (its taps f apart,
                   its pad times f): the "filter enlargement" f'_ij = f_{i/s, j/s}

The two agree exactly (tests/test_paper_claims.py). Pooling has no dilation in this engine,
so rarefy() accepts after the strided layer only convolutions (stride 1) and pointwise
layers; the strided layer itself may be a convolution or a pooling.

Boundaries: the shifted inputs are x[..., dy:dy + H - f + 1, dx:dx + W - f + 1], all of one
size, so every shift is a plain crop (nothing invented past the edge). The two results are
equal element by element when L has no padding and the bottom of L, on a shifted input, has
a size m with (m - k) a multiple of f (k: L's kernel): then no shifted run has a partial
window that the stride-1 net lacks. ``stitch_size`` finds the nearest such input size.
"""
from __future__ import annotations

import copy

import numpy as np

from . import layers as L
from .kernels.geometry import pair


def _run(net_or_fn, x):
    if callable(net_or_fn) and not hasattr(net_or_fn, "forward"):
        return net_or_fn(x)
    out = net_or_fn.forward(**{net_or_fn.inputs[0]: x})
    if isinstance(out, dict):
        raise ValueError(f"{net_or_fn.name}: shift_and_stitch needs a net with one output, "
                         f"got {list(out)}")
    return out


def shift_and_stitch(net_or_fn, x, f):
    """Dense output of a net with total stride f by running it on f*f shifted inputs.

    net_or_fn: a Net with one input and one output (a score map), or a function x -> y.
    x: (N, C, H, W). f: the stride to undo, an int or (f_h, f_w).
    Returns (N, C_out, f_h * h', f_w * w') where (h', w') is the net's output size on an
    input of (H - f_h + 1, W - f_w + 1)."""
    fh, fw = pair(f, "f")
    N, C, H, W = x.shape
    Hs, Ws = H - fh + 1, W - fw + 1
    if Hs < 1 or Ws < 1:
        raise ValueError(f"shift_and_stitch: input {H}x{W} is smaller than the stride {fh}x{fw}")
    out = None
    for dy in range(fh):
        for dx in range(fw):
            y = _run(net_or_fn, np.ascontiguousarray(x[:, :, dy:dy + Hs, dx:dx + Ws]))
            if out is None:
                out = np.empty(y.shape[:2] + (fh * y.shape[2], fw * y.shape[3]), y.dtype)
            out[:, :, dy::fh, dx::fw] = y
    return out


def stitch_size(net, layer_name, size):
    """The input size nearest to `size` (an int or (H, W); the largest below it, else the
    smallest above) at which shift_and_stitch(net, ., f) equals rarefy(net, layer_name)
    exactly: the shifted inputs, of size n - f + 1, must bring the strided layer a bottom of
    size m with (m - k) a multiple of f, so that no shifted run has a partial window the
    stride-1 net lacks, and the whole net must run. Derived by shape arithmetic."""
    from .coordmap import ShapeError, blob_shapes
    layer = net.layers[layer_name]
    bottom = net.bottoms[layer_name][0]
    if any(layer.pad):
        raise ValueError(f"{net.name}: {layer_name!r} has pad {layer.pad}; shift-and-stitch "
                         f"crops its shifted inputs, which equals rarefaction only without "
                         f"padding in the strided layer")

    def exact(n, f, k, ax):
        try:
            m = blob_shapes(net, (n - f + 1,) * 2)[bottom][1 + ax]
        except ShapeError:
            return False
        return m >= k and (m - k) % f == 0

    best = []
    for ax, n0 in enumerate(pair(size, "size")):
        f, k = layer.stride[ax], layer.kernel[ax]
        order = list(range(n0, f - 1, -1)) + list(range(n0 + 1, n0 + 64 * f * k))
        found = next((n for n in order if exact(n, f, k, ax)), None)
        if found is None:
            raise ValueError(f"{net.name}: no input size near {n0} fits {layer_name!r} exactly")
        best.append(found)
    return tuple(best)


def rarefy(net, layer_name):
    """A copy of `net` in which layer `layer_name` has stride 1 and every later convolution
    is dilated by that layer's stride (its pad scaled to match): the net computes on the
    denser grid what shift_and_stitch computes by shifting. Parameters are copied."""
    if layer_name not in net.layers:
        raise KeyError(f"{net.name}: no layer named {layer_name!r}")
    new = copy.deepcopy(net)
    names = list(new.layers)
    strided = new.layers[layer_name]
    if not isinstance(strided, (L.Conv, L.MaxPool)) or isinstance(strided, L.InnerProduct):
        raise ValueError(f"{net.name}: layer {layer_name!r} ({type(strided).__name__}) is not "
                         f"a strided convolution or pooling")
    f = strided.stride
    strided.stride = (1, 1)
    for name in names[names.index(layer_name) + 1:]:
        layer = new.layers[name]
        if isinstance(layer, L.Conv) and not isinstance(layer, L.InnerProduct):
            if layer.stride != (1, 1):
                raise ValueError(f"{net.name}: layer {name!r} after {layer_name!r} is strided "
                                 f"too; rarefy one strided layer at a time (the last first)")
            layer.dilation = tuple(d * s for d, s in zip(layer.dilation, f))
            layer.pad = tuple(p * s for p, s in zip(layer.pad, f))
        elif isinstance(layer, (L.MaxPool, L.Deconv, L.InnerProduct, L.Crop)):
            raise ValueError(f"{net.name}: cannot rarefy through layer {name!r} "
                             f"({type(layer).__name__}): only convolutions and pointwise "
                             f"layers may follow {layer_name!r} (pooling has no dilation "
                             f"here)")
    return new
