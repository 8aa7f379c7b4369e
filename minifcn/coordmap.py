"""Coordinate maps: where a unit of one blob sits in another, derived from the layers.

Caffe's coord_map.py rules, per spatial axis, as exact fractions. A layer maps a coordinate x
of its bottom to the coordinate y = a*x + b of its top; each layer class states its own rule
(``layer.coord_map()``, see minifcn.layers):
    conv / pool    a = 1/s,  b = (p - (k_e - 1)/2) / s        k_e = d(k - 1) + 1
    deconv         a = s,    b = (k_e - 1)/2 - p
    crop           a = 1,    b = -offset
    pointwise      a = 1,    b = 0          (ReLU, Dropout, Sum, Scale, LRN)
    anything else  no map (UndefinedMap): a fully connected layer, or a type that defines none
This module knows no layer types: it composes what the layers say. Maps compose,
(a1, b1) o (a2, b2) = (a1 a2, a1 b2 + b1), and invert, (1/a, -b/a). The map between two blobs
walks back from both to a common ancestor. A Crop's offset is then -b of the map from the blob
it cuts to its reference blob, which must be a pure integer shift (a = 1, b <= 0): that is how
FCN aligns its upsampled scores with the input for any input size.

Receptive fields are derived the same way, by walking forward from the input with the
composition rule of the paper, f_ks o g_k's' = (f o g)_{k' + (k-1)s', ss'} (``layer.extent``).

Shapes for a given input size (``blob_shapes``) follow the engine's own output-size rules
(``layer.out_shape``, kernels/geometry.py), so the table ``rf_table`` prints, and every check
built on it (such as "does every crop fit at every input size?"), needs no forward pass.
"""
from __future__ import annotations

import math
from fractions import Fraction

from .kernels.geometry import pair

IDENTITY = ((Fraction(1), Fraction(0)),) * 2


class UndefinedMap(ValueError):
    """A layer without a coordinate map (e.g. a fully connected one)."""


class CropError(ValueError):
    """A Crop whose coordinate map is not an integer shift with b <= 0 (it cannot align)."""


class ShapeError(ValueError):
    """An input size at which some layer cannot run (too small) or a crop does not fit."""


def layer_map(layer):
    """((a_h, b_h), (a_w, b_w)): the layer's map from bottom to top coordinates."""
    return layer.coord_map()


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
    """The nodes whose coordinates reach a layer's top: all its bottoms, or the first
    ``layer.spatial_bottoms`` of them (a Crop's reference only lends its shape; Caffe walks
    the first bottom only)."""
    n = net.layers[layer_name].spatial_bottoms
    return list(zip(net.bottoms[layer_name], net.bottom_sources[layer_name]))[:n]


def _maps_to(net, node, blocked=None):
    """{ancestor node: map from the ancestor's coordinates to node's} by walking back. A layer
    without a map is not crossed; its name is added to `blocked` (for the error message)."""
    maps, frontier = {node: IDENTITY}, [node]
    while frontier:
        blob, producer = frontier.pop()
        if producer is None:
            continue
        try:
            m = compose(maps[(blob, producer)], net.layers[producer].coord_map())
        except UndefinedMap as e:
            if blocked is not None:
                blocked.append(f"{producer!r} ({e})")
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
    blocked = []
    from_maps, to_maps = _maps_to(net, from_node, blocked), _maps_to(net, to_node, blocked)
    common = [n for n in to_maps if n in from_maps]
    if not common:
        why = f" (the walk stopped at layer {', '.join(blocked)})" if blocked else ""
        raise UndefinedMap(f"{net.name}: blobs {from_node[0]!r} and {to_node[0]!r} share no "
                           f"ancestor through spatial layers; no coordinate map between "
                           f"them{why}")
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
        if getattr(layer, "derives_offset", False):
            layer.offset = crop_offset(net, name)


def fmt_map(m):
    return ", ".join(f"{ax}: a={a}, b={b}" for ax, (a, b) in zip("hw", m))


# ----------------------------------------------------------------------------- receptive fields
def _extents(net, input_blob=None):
    """{node: [(lo, hi, stride) per axis]} for every node reached from the input."""
    input_blob = input_blob or net.inputs[0]
    ext = {(input_blob, None): [(0, 0, Fraction(1))] * 2}
    for name, layer in net.layers.items():
        srcs = [s for s in _sources(net, name) if s in ext]
        if not srcs or layer.is_loss:
            continue
        try:
            per = [layer.extent(ext[s]) for s in srcs]
        except UndefinedMap:
            continue                      # not reached through a layer without a map
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
        c = getattr(net.layers[name], "in_ch", None)
        if c is not None:
            return c
    return None


def _fmt_shape(shape):
    return "x".join("?" if v is None else str(v) for v in shape)


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
        srcs = list(zip(net.bottoms[name], net.bottom_sources[name]))
        if layer.is_loss:
            if srcs[0] in shapes:
                shapes[(net.tops[name][0], name)] = ()
            continue
        if any(s not in shapes for s in srcs):
            continue                         # reads something not derived from the input
        if any(shapes[s] is None for s in srcs):
            out = None
        else:
            try:
                out = tuple(layer.out_shape(*(shapes[s] for s in srcs)))
            except ShapeError as e:
                on = ", ".join(f"{b} {_fmt_shape(shapes[(b, p)])}" for b, p in srcs)
                e = ShapeError(f"{net.name}: layer {name!r} ({type(layer).__name__}) on {on}: "
                               f"{e}")
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
        rows.append((name, type(layer).__name__, top, out) + rf_s + (layer.note(),))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = [f"{net.name}: input {H}x{W}; rf = receptive field size on the input (after an "
             f"upsampling: the span of one period of units), stride = input pixels between "
             f"units, offset = where unit 0's field starts (negative: in the padding)"]
    for r in rows:
        lines.append("  ".join(v.ljust(w) for v, w in zip(r, widths)).rstrip())
    if error is not None:
        lines.append(f"note: {error}")
    return "\n".join(lines)
