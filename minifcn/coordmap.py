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

Shapes for a given input size (``blob_shapes``) follow the engine's own output-size rules
(kernels/geometry.py), so the table ``rf_table`` prints, and every check built on it (such as
"does every crop fit at every input size?"), needs no forward pass.
"""
from __future__ import annotations

import math
from fractions import Fraction

from . import layers as L
from .kernels.geometry import conv_out, deconv_out, pair, pool_out

IDENTITY = ((Fraction(1), Fraction(0)),) * 2


class UndefinedMap(ValueError):
    """A layer without a coordinate map (e.g. a fully connected one)."""


class CropError(ValueError):
    """A Crop whose coordinate map is not an integer shift with b <= 0 (it cannot align)."""


class ShapeError(ValueError):
    """An input size at which some layer cannot run (too small) or a crop does not fit."""


def layer_map(layer):
    """((a_h, b_h), (a_w, b_w)): the layer's map from bottom to top coordinates."""
    if isinstance(layer, L.InnerProduct):
        raise UndefinedMap("a fully connected layer has no coordinate map")
    if isinstance(layer, (L.Conv, L.MaxPool)):            # AvgPool is a MaxPool subclass
        return tuple((Fraction(1, s), Fraction(2 * p - (d * (k - 1) + 1) + 1, 2 * s))
                     for k, s, p, d in zip(layer.kernel, layer.stride, layer.pad,
                                           layer.dilation))
    if isinstance(layer, L.Deconv):
        return tuple((Fraction(s), Fraction(d * (k - 1), 2) - p)
                     for k, s, p, d in zip(layer.kernel, layer.stride, layer.pad,
                                           layer.dilation))
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


def apply(m, coords):
    """The image of a point (y, x) of the map's domain: (a_h y + b_h, a_w x + b_w)."""
    return tuple(a * Fraction(c) + b for (a, b), c in zip(m, pair_like(coords)))


def pair_like(v):
    return tuple(v) if isinstance(v, (tuple, list)) else (v, v)


def is_integer_shift(m):
    """Can a Crop realise this map: a = 1 and b a non-positive integer on both axes?"""
    return all(a == 1 and b <= 0 and b.denominator == 1 for a, b in m)


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
        raise UndefinedMap(f"{net.name}: blobs {from_node[0]!r} and {to_node[0]!r} share no "
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
    if not is_integer_shift(m):
        raise CropError(
            f"{net.name}: crop {layer_name!r} cannot align blob {cut[0]!r} to {ref[0]!r}: "
            f"the map between them is {fmt_map(m)}, not an integer shift with b <= 0 "
            f"(check strides, kernel sizes and the first layer's pad)")
    return tuple(int(-b) for _, b in m)


def derive_crop_offsets(net):
    """Set every Crop layer's offset from the graph (explicit offsets are left alone)."""
    for name, layer in net.layers.items():
        if isinstance(layer, L.Crop) and not layer.explicit:
            layer.offset = crop_offset(net, name)


def fmt_map(m):
    return ", ".join(f"{ax}: a={a}, b={b}" for ax, (a, b) in zip("hw", m))


_fmt = fmt_map          # the old private name


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
            # top unit o reads bottom units i with 0 <= o + p - i*s < k. Units of one period
            # (o = 0..s-1) read different sets; the interval is their union, which starts
            # where unit 0's does (an upper bound on any one unit's field)
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


def _extents(net, input_blob=None):
    """{node: [(lo, hi, stride) per axis]} for every node reached from the input."""
    input_blob = input_blob or net.inputs[0]
    ext = {(input_blob, None): [(0, 0, Fraction(1))] * 2}
    for name, layer in net.layers.items():
        srcs = [s for s in _sources(net, name) if s in ext]
        if not srcs or layer.is_loss:
            continue
        per = [_layer_extent(layer, *zip(*ext[s])) for s in srcs]
        merged = [(min(p[ax][0] for p in per), max(p[ax][1] for p in per), per[0][ax][2])
                  for ax in range(2)]
        for t in net.tops[name]:
            ext[(t, name)] = merged
    return ext


def _simplest(v):
    """An int where the value is whole (strides and offsets usually are), else a Fraction."""
    v = Fraction(v)
    return v.numerator if v.denominator == 1 else v


def _as_rf(e):
    return tuple((int(hi - lo + 1), _simplest(s), _simplest(lo)) for lo, hi, s in e)


def receptive_fields(net, input_blob=None):
    """{blob: ((size_h, stride_h, offset_h), (size_w, stride_w, offset_w))} for every blob.

    size: input pixels that can influence one unit; stride: input pixels between neighbouring
    units; offset: input coordinate of the first pixel of unit 0's field (negative when it
    starts in the padding). Multi-input layers (Sum) take the union of their inputs' fields.
    After an upsampling layer units of one period see different intervals: size is then
    the span of their union (an upper bound)."""
    return {blob: _as_rf(e) for (blob, producer), e in _extents(net, input_blob).items()
            if producer == net.producer.get(blob)}


def receptive_field(net, blob, input_blob=None):
    """(size, stride, offset) per axis of `blob`'s units on the input."""
    rfs = receptive_fields(net, input_blob)
    if blob not in rfs:
        raise ValueError(f"{net.name}: blob {blob!r} is not reached from the input")
    return rfs[blob]


def unit_field(net, blob, unit, input_blob=None):
    """((y0, y1), (x0, x1)): the input pixels (inclusive) that unit (i, j) of `blob` sees,
    padding included (the interval may start below 0 or end past the input)."""
    (sh, th, oh), (sw, tw, ow) = receptive_field(net, blob, input_blob)
    i, j = pair_like(unit)
    return ((oh + th * i, oh + th * i + sh - 1), (ow + tw * j, ow + tw * j + sw - 1))


# ----------------------------------------------------------------------------- shapes
def _first_conv_channels(net, input_blob):
    for name in net._consumers.get(input_blob, []):
        layer = net.layers[name]
        if isinstance(layer, (L.Conv, L.Deconv)):
            return layer.in_ch
    return None


def _layer_shape(net, name, layer, shapes):
    """(C, H, W) of a layer's top from its bottoms' shapes, by the engine's size rules."""
    ins = [shapes[s] for s in _sources(net, name)]
    c, h, w = ins[0]
    where = f"{net.name}: layer {name!r} ({type(layer).__name__}) on {c}x{h}x{w}"
    if isinstance(layer, L.InnerProduct):
        if c is not None and (c, h, w) != layer.in_shape or (h, w) != layer.in_shape[1:]:
            raise ShapeError(f"{where}: a fully connected layer needs exactly "
                             f"{'x'.join(map(str, layer.in_shape))}")
        return (layer.out_ch, 1, 1)
    if isinstance(layer, L.Conv):
        out = tuple(conv_out(n, k, s, p, d) for n, k, s, p, d in
                    zip((h, w), layer.kernel, layer.stride, layer.pad, layer.dilation))
        if min(out) < 1:
            raise ShapeError(f"{where}: input too small for kernel {layer.kernel}, pad "
                             f"{layer.pad}, dilation {layer.dilation}")
        return (layer.out_ch,) + out
    if isinstance(layer, L.Deconv):
        out = tuple(deconv_out(n, k, s, p) for n, k, s, p in
                    zip((h, w), layer.kernel, layer.stride, layer.pad))
        if min(out) < 1:
            raise ShapeError(f"{where}: empty output for kernel {layer.kernel}, pad {layer.pad}")
        return (layer.out_ch,) + out
    if isinstance(layer, L.MaxPool):
        # as minifcn.functional: ceil mode may hang a window over the edge, but the output
        # must not be empty
        out = tuple(pool_out(n, k, s, p, layer.ceil_mode) for n, k, s, p in
                    zip((h, w), layer.kernel, layer.stride, layer.pad))
        if min(out) < 1:
            raise ShapeError(f"{where}: input too small for pooling kernel {layer.kernel}, "
                             f"stride {layer.stride}")
        return (c,) + out
    if isinstance(layer, L.Crop):
        (_, hr, wr) = shapes[list(zip(net.bottoms[name], net.bottom_sources[name]))[1]]
        oh, ow = layer.offset
        if oh + hr > h or ow + wr > w:
            raise ShapeError(f"{where}: crop {name!r} cannot take {hr}x{wr} at offset "
                             f"{layer.offset} from {net.bottoms[name][0]!r} ({h}x{w})")
        return (c, hr, wr)
    if isinstance(layer, L.Sum):
        if any(s[1:] != (h, w) for s in ins):
            listed = ", ".join(f"{b} {s[1]}x{s[2]}" for b, s in zip(net.bottoms[name], ins))
            raise ShapeError(f"{net.name}: layer {name!r} (Sum) adds blobs of different sizes: "
                             f"{listed}")
        return (c, h, w)
    return (c, h, w)


def _shapes(net, size, input_blob=None, channels=None, strict=True):
    """{node: (C, H, W)}; loss tops get (). With strict=False a layer that cannot run gets
    None (and so does everything after it) and the first error is returned as well."""
    input_blob = input_blob or net.inputs[0]
    H, W = pair(size, "size")
    if channels is None:
        channels = _first_conv_channels(net, input_blob)
    shapes = {(input_blob, None): (channels, H, W)}
    error = None
    for name, layer in net.layers.items():
        srcs = _sources(net, name)
        if layer.is_loss:
            if srcs[0] in shapes:
                shapes[(net.tops[name][0], name)] = ()
            continue
        if any(s not in shapes for s in srcs) or isinstance(layer, L.Crop) and \
                list(zip(net.bottoms[name], net.bottom_sources[name]))[1] not in shapes:
            continue                         # reads something not derived from the input
        if any(shapes[s] is None for s in srcs):
            out = None
        else:
            try:
                out = _layer_shape(net, name, layer, shapes)
            except ShapeError as e:
                if strict:
                    raise ShapeError(f"{e} (input {H}x{W})") from None
                error, out = error or e, None
        for t in net.tops[name]:
            shapes[(t, name)] = out
    return shapes if strict else (shapes, error)


def blob_shapes(net, size, input_blob=None, channels=None):
    """{blob: (C, H, W)} for an input of size (H, W), by shape arithmetic alone (no forward
    pass). C is None where it cannot be known (the input's channels, if no conv reads it).
    Raises ShapeError naming the layer if the input is too small for some layer or a crop
    does not fit."""
    return {blob: s for (blob, producer), s in _shapes(net, size, input_blob, channels).items()
            if producer == net.producer.get(blob)}


def fits(net, size, input_blob=None):
    """Does the net run at this input size, every crop included?"""
    try:
        _shapes(net, size, input_blob)
        return True
    except ShapeError:
        return False


def total_stride(net, input_blob=None):
    """The smallest S such that every blob's stride divides S: growing the input by S grows
    every blob by a whole number of units (the period of all size arithmetic)."""
    S = 1
    for e in _extents(net, input_blob).values():
        for _, _, s in e:
            S = math.lcm(S, Fraction(s).numerator)
    return S


# ----------------------------------------------------------------------------- the table
def _num(v):
    v = Fraction(v)
    return str(v.numerator) if v.denominator == 1 else f"{float(v):g}"


def _pair_str(vals):
    a, b = (_num(v) for v in vals)
    return a if a == b else f"{a}x{b}"


def rf_table(net, size=(500, 500), input_blob=None):
    """A per-layer table for an input of `size` (H, W): the layer's top, its shape C x H x W,
    the receptive field of its units on the input (size, stride and the input coordinate
    where unit 0's field starts), and for crops the derived offset. All by derivation from
    the coordinate maps and the size rules; no forward pass."""
    input_blob = input_blob or net.inputs[0]
    H, W = pair(size, "size")
    ext = _extents(net, input_blob)
    shapes, error = _shapes(net, (H, W), input_blob, strict=False)
    rows = [("layer", "type", "top", "output", "rf", "stride", "offset", "crop")]
    c0 = shapes[(input_blob, None)][0]
    rows.append(("(input)", "", input_blob, f"{c0 if c0 is not None else '?'} x {H} x {W}",
                 "1", "1", "0", ""))
    for name, layer in net.layers.items():
        top = net.tops[name][0]
        node = (top, name)
        shape = shapes.get(node)
        if shape is None:
            out = "-" if node not in shapes else "too small"
        elif shape == ():
            out = "scalar"
        else:
            out = " x ".join("?" if v is None else str(v) for v in shape)
        if node in ext:
            rf = _as_rf(ext[node])
            rf_s = (_pair_str([r[0] for r in rf]), _pair_str([r[1] for r in rf]),
                    _pair_str([r[2] for r in rf]))
        else:
            rf_s = ("-", "-", "-")
        crop = ""
        if isinstance(layer, L.Crop):
            crop = "offset " + _pair_str(layer.offset) + (" (explicit)" if layer.explicit else "")
        rows.append((name, type(layer).__name__, top, out) + rf_s + (crop,))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = [f"{net.name}: input {H}x{W}; rf = receptive field size on the input (after an "
             f"upsampling: the span of one period of units), stride = input pixels between "
             f"units, offset = where unit 0's field starts (negative: in the padding)"]
    for r in rows:
        lines.append("  ".join(v.ljust(w) for v, w in zip(r, widths)).rstrip())
    if error is not None:
        lines.append(f"note: {error}")
    return "\n".join(lines)
