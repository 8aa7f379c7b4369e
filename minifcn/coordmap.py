"""Coordinate maps: where a unit of one blob sits in another, derived from the layers.

Caffe's coord_map.py rules, per spatial axis, as exact fractions. A layer maps a coordinate x
of its bottom to the coordinate y = a*x + b of its top:
    conv / pool    a = 1/s,  b = (p - (k_e - 1)/2) / s        k_e = d(k - 1) + 1
    deconv         a = s,    b = (k_e - 1)/2 - p
    crop           a = 1,    b = -offset
    pointwise      a = 1,    b = 0          (ReLU, Dropout, Sum, Scale, LRN)
Maps compose, (a1, b1) o (a2, b2) = (a1 a2, a1 b2 + b1), and invert, (1/a, -b/a). The map
between two blobs walks back from both to a common ancestor. A Crop's offset is then -b of the
map from the blob it cuts to its reference blob, which must be a pure integer shift (a = 1,
b <= 0): that is how FCN aligns its upsampled scores with the input for any input size.

Receptive fields are derived the same way, by walking forward from the input with the
composition rule of the paper: f_ks o g_k's' = (f o g)_{k' + (k-1)s', ss'}.
"""
from __future__ import annotations

import math
from fractions import Fraction

from . import layers as L

IDENTITY = ((Fraction(1), Fraction(0)),) * 2


class UndefinedMap(ValueError):
    """A layer without a coordinate map (e.g. a fully connected one)."""


def layer_map(layer):
    """((a_h, b_h), (a_w, b_w)): the layer's map from bottom to top coordinates."""
    if isinstance(layer, L.InnerProduct):
        raise UndefinedMap("a fully connected layer has no coordinate map")
    if isinstance(layer, (L.Conv, L.MaxPool)):            # AvgPool is a MaxPool subclass
        return tuple((Fraction(1, s), Fraction(2 * p - (d * (k - 1) + 1) + 1, 2 * s))
                     for k, s, p, d in zip(layer.kernel, layer.stride, layer.pad,
                                           layer.dilation))
    if isinstance(layer, L.Deconv):
        return tuple((Fraction(s), Fraction(k - 1, 2) - p)
                     for k, s, p in zip(layer.kernel, layer.stride, layer.pad))
    if isinstance(layer, L.Crop):
        if layer.offset is None:
            raise UndefinedMap("crop offset not derived yet")
        return tuple((Fraction(1), Fraction(-o)) for o in layer.offset)
    return IDENTITY


def compose(m1, m2):
    """Apply m2 first, then m1."""
    return tuple((a1 * a2, a1 * b2 + b1) for (a1, b1), (a2, b2) in zip(m1, m2))


def inverse(m):
    return tuple((1 / a, -b / a) for a, b in m)


# A node is (blob, layer that produced it): in-place layers reuse a blob's name, so the name
# alone does not say which version a consumer read.
def _sources(net, layer_name):
    """The nodes a layer reads; a Crop's reference bottom only lends its shape, so only the
    first bottom is walked (as Caffe does)."""
    bottoms = net.bottoms[layer_name]
    srcs = net.bottom_sources[layer_name]
    n = 1 if isinstance(net.layers[layer_name], L.Crop) else len(bottoms)
    return list(zip(bottoms, srcs))[:n]


def _maps_to(net, node):
    """{ancestor node: map from the ancestor's coordinates to node's} by walking back."""
    maps, frontier = {node: IDENTITY}, [node]
    while frontier:
        blob, producer = frontier.pop()
        if producer is None:
            continue
        try:
            m = compose(maps[(blob, producer)], layer_map(net.layers[producer]))
        except UndefinedMap:
            continue
        for src in _sources(net, producer):
            if src not in maps:
                maps[src] = m
                frontier.append(src)
    return maps


def _node(net, blob):
    if blob not in net.producer:
        raise KeyError(f"{net.name}: no blob named {blob!r}")
    return (blob, net.producer[blob])


def map_between(net, from_node, to_node):
    """The map from from_node's coordinates to to_node's, through a common ancestor."""
    from_maps, to_maps = _maps_to(net, from_node), _maps_to(net, to_node)
    common = [n for n in to_maps if n in from_maps]
    if not common:
        raise ValueError(f"{net.name}: blobs {from_node[0]!r} and {to_node[0]!r} share no "
                         f"ancestor through spatial layers; no coordinate map between them")
    c = common[0]
    return compose(to_maps[c], inverse(from_maps[c]))


def coord_map(net, from_blob, to_blob):
    """((a_h, b_h), (a_w, b_w)) with to = a * from + b, between two blobs of a Net."""
    return map_between(net, _node(net, from_blob), _node(net, to_blob))


def crop_offset(net, layer_name):
    """The offset a Crop layer must use, derived from the coordinate maps."""
    (cut, ref) = list(zip(net.bottoms[layer_name], net.bottom_sources[layer_name]))
    m = map_between(net, cut, ref)
    for a, b in m:
        if a != 1 or b > 0 or b.denominator != 1:
            raise ValueError(
                f"{net.name}: crop {layer_name!r} cannot align blob {cut[0]!r} to {ref[0]!r}: "
                f"the map between them is {_fmt(m)}, not an integer shift with b <= 0 "
                f"(check strides, kernel sizes and the first layer's pad)")
    return tuple(int(-b) for _, b in m)


def derive_crop_offsets(net):
    """Set every Crop layer's offset from the graph (explicit offsets are left alone)."""
    for name, layer in net.layers.items():
        if isinstance(layer, L.Crop) and not layer.explicit:
            layer.offset = crop_offset(net, name)


def _fmt(m):
    return ", ".join(f"{ax}: a={a}, b={b}" for ax, (a, b) in zip("hw", m))


# ----------------------------------------------------------------------------- receptive fields
def _layer_extent(layer, lo, hi, stride):
    """The input interval [lo, hi] (and stride) seen by unit 0 of a layer's top, given the
    interval of unit 0 of its bottom. One axis at a time; inputs are per-axis triples."""
    if isinstance(layer, (L.Conv, L.MaxPool)) and not isinstance(layer, L.InnerProduct):
        out = []
        for (lo_, hi_, s_), k, s, p, d in zip(zip(lo, hi, stride), layer.kernel, layer.stride,
                                              layer.pad, layer.dilation):
            ke = d * (k - 1) + 1
            out.append((lo_ - p * s_, hi_ + (ke - 1 - p) * s_, s_ * s))
        return out
    if isinstance(layer, L.Deconv):
        out = []
        for (lo_, hi_, s_), k, s, p in zip(zip(lo, hi, stride), layer.kernel, layer.stride,
                                           layer.pad):
            # top unit o reads bottom units i with 0 <= o + p - i*s < k; over one period of
            # o the widest such set spans ceil(k/s) units
            first = min(math.ceil((o + p - k + 1) / s) for o in range(s))
            last = max((o + p) // s for o in range(s))
            out.append((lo_ + first * s_, hi_ + last * s_, Fraction(s_, s)))
        return out
    if isinstance(layer, L.Crop):
        return [(lo_ + o * s_, hi_ + o * s_, s_) for lo_, hi_, s_, o in
                zip(lo, hi, stride, layer.offset)]
    if isinstance(layer, L.InnerProduct):
        c, h, w = layer.in_shape
        return [(lo[0], hi[0] + (h - 1) * stride[0], stride[0]),
                (lo[1], hi[1] + (w - 1) * stride[1], stride[1])]
    return list(zip(lo, hi, stride))


def receptive_fields(net, input_blob=None):
    """{blob: ((size_h, stride_h, offset_h), (size_w, stride_w, offset_w))} for every blob.

    size: input pixels that can influence one unit; stride: input pixels between neighbouring
    units; offset: input coordinate of the first pixel of unit 0's field (negative when it
    starts in the padding). Multi-input layers (Sum) take the union of their inputs' fields."""
    input_blob = input_blob or net.inputs[0]
    ext = {(input_blob, None): [(0, 0, Fraction(1))] * 2}
    for name, layer in net.layers.items():
        srcs = [s for s in _sources(net, name) if s in ext]
        if not srcs:
            continue
        per = [_layer_extent(layer, *zip(*ext[s])) for s in srcs]
        merged = [(min(p[ax][0] for p in per), max(p[ax][1] for p in per), per[0][ax][2])
                  for ax in range(2)]
        for t in net.tops[name]:
            ext[(t, name)] = merged
    return {blob: tuple((int(hi - lo + 1), s, lo) for lo, hi, s in e)
            for (blob, producer), e in ext.items() if producer == net.producer.get(blob)}


def receptive_field(net, blob, input_blob=None):
    """(size, stride, offset) per axis of `blob`'s units on the input."""
    rfs = receptive_fields(net, input_blob)
    if blob not in rfs:
        raise ValueError(f"{net.name}: blob {blob!r} is not reached from the input")
    return rfs[blob]
