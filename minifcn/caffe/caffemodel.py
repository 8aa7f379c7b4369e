"""A .caffemodel (a binary NetParameter) into a Net, and a Net out to one.

    report = read_weights(net, "fcn8s-heavy-pascal.caffemodel")   # copied, reshaped, ...
    write_weights(net, "out.caffemodel")                            # atomically

Caffe's CopyTrainedLayersFrom, by hand: each layer of the file (the `layer` list, or the V1
`layers` list of older files) is matched to the net's layer of the same name, and its blobs
fill that layer's parameters in order (weight, then bias). A blob gives its shape in a
BlobShape or, in older files, as num / channels / height / width; its values as packed or
unpacked floats (or doubles). A blob whose shape differs but whose size matches (a legacy 4-D
bias (1, 1, 1, n), a classifier's fc6 into a convolution) is reshaped and reported; a size
that differs is refused, naming the layer and both shapes. Two kinds of layer are mapped:
a frozen constant Scale (FCN-8s at-once) checks that its blob holds its constant, and a
per-channel (group = C) Deconvolution's (C, 1, k, k) blob is spread onto the diagonal of
minifcn's (C, C, k, k) weight.

A truncated or malformed file is refused with its name, the byte offset and the field.
"""
from __future__ import annotations

import mmap
import os
from dataclasses import dataclass, field

import numpy as np

from .. import layers as L
from ..files import atomic_write
from . import schema, wire
from .fillers import expand_groups

__all__ = ["read_weights", "read_blobs", "write_weights", "WeightsReport", "CaffeModelError"]


class CaffeModelError(ValueError):
    """A .caffemodel that is malformed, truncated or does not fit the net."""


@dataclass
class WeightsReport:
    """What read_weights did: copied ("layer.param"), reshaped ((key, file shape, net
    shape)), missing (net parameters the file has nothing for), unexpected (file blobs the
    net has no parameter for)."""
    copied: list = field(default_factory=list)
    reshaped: list = field(default_factory=list)
    missing: list = field(default_factory=list)
    unexpected: list = field(default_factory=list)

    def __str__(self):
        lines = [f"copied {len(self.copied)}, reshaped {len(self.reshaped)}, missing "
                 f"{len(self.missing)}, unexpected {len(self.unexpected)}"]
        lines += [f"  reshaped   {k}: {a} -> {b}" for k, a, b in self.reshaped]
        lines += [f"  missing    {k}" for k in self.missing]
        lines += [f"  unexpected {k}" for k in self.unexpected]
        return "\n".join(lines)


_NET = schema.MESSAGES["NetParameter"]
_LAYER, _V1 = schema.MESSAGES["LayerParameter"], schema.MESSAGES["V1LayerParameter"]
_BLOB, _SHAPE = schema.MESSAGES["BlobProto"], schema.MESSAGES["BlobShape"]
_LEGACY = ("num", "channels", "height", "width")
_TAG_F32 = _BLOB["data"][0] << 3 | wire.I32
_TAG_F64 = _BLOB["double_data"][0] << 3 | wire.I64


# ----------------------------------------------------------------------------- decoding
def _blob(buf, span, where):
    """One BlobProto -> an array of its shape."""
    shape, legacy, chunks = None, {}, []
    by_number = {spec[0]: name for name, spec in _BLOB.items()}
    pos = span[0]
    while pos < span[1]:
        number, wt, value, offset, nxt = wire.next_field(buf, pos, span[1])
        name = by_number.get(number)
        here = f"{where}.{name or number}"
        if name in ("data", "double_data"):
            f64 = name == "double_data"
            if wt == wire.LEN:
                chunks.append((name, wire.packed(buf, value, "<f8" if f64 else "<f4", offset)))
            else:                                         # unpacked: one field per value
                wire.expect(number, wt, (wire.I64 if f64 else wire.I32,), here, offset)
                values, nxt = wire.unpacked_run(buf, offset, span[1],
                                                _TAG_F64 if f64 else _TAG_F32,
                                                "<f8" if f64 else "<f4")
                chunks.append((name, values))
        elif name == "shape":
            wire.expect(number, wt, (wire.LEN,), here, offset)
            shape = []
            for n2, wt2, v2, off2 in wire.fields(buf, *value):
                if n2 == _SHAPE["dim"][0]:
                    if wt2 == wire.LEN:
                        shape += [wire.signed64(d) for d in wire.varints(buf, v2, off2)]
                    else:
                        wire.expect(n2, wt2, (wire.VARINT,), here + ".dim", off2)
                        shape.append(wire.signed64(v2))
            if any(d < 0 for d in shape):
                raise wire.WireError(f"{here}: negative dimension in {shape}", offset)
        elif name in _LEGACY:
            wire.expect(number, wt, (wire.VARINT,), here, offset)
            legacy[name] = wire.signed64(value)
        pos = nxt
    if len({k for k, _ in chunks}) > 1:
        raise wire.WireError(f"{where}: holds both float data and double_data", span[0])
    data = np.concatenate([v for _, v in chunks]) if chunks else np.zeros(0, np.float32)
    if shape is None:         # legacy blobs are 4-D (num, channels, height, width)
        shape = [legacy.get(k, 0) for k in _LEGACY] if legacy else [data.size]
    if int(np.prod(shape)) != data.size:
        raise wire.WireError(f"{where}: shape {tuple(shape)} needs {int(np.prod(shape))} "
                             f"values, the blob holds {data.size}", span[0])
    return data.reshape(shape)


def _layer(buf, span, v1, where):
    """(name, type, [arrays]) of one LayerParameter / V1LayerParameter."""
    spec = _V1 if v1 else _LAYER
    n_name, n_type, n_blobs = spec["name"][0], spec["type"][0], spec["blobs"][0]
    name, typ, blobs = None, None, []
    for number, wt, value, offset in wire.fields(buf, *span):
        if number == n_name:
            wire.expect(number, wt, (wire.LEN,), f"{where}.name", offset)
            name = wire.string(buf, value, offset)
        elif number == n_type:
            wire.expect(number, wt, (wire.VARINT,) if v1 else (wire.LEN,), f"{where}.type",
                        offset)
            typ = value if v1 else wire.string(buf, value, offset)
        elif number == n_blobs:
            wire.expect(number, wt, (wire.LEN,), f"{where}.blobs", offset)
            blobs.append(_blob(buf, value, f"{where}({name}).blobs[{len(blobs)}]"))
    if v1 and isinstance(typ, int):
        typ = next((k for k, n in schema.ENUMS["V1LayerType"].items() if n == typ), typ)
    return name, typ, blobs


def read_blobs(path):
    """[(layer name, layer type, [arrays])] of a .caffemodel, in file order."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"caffemodel {path} does not exist")
    with open(path, "rb") as f:
        if os.fstat(f.fileno()).st_size == 0:
            raise CaffeModelError(f"{path}: the file is empty")
        with mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as buf:
            try:
                return _net(buf, path)
            except wire.WireError as e:
                raise CaffeModelError(f"{path}: byte {e.offset}: {e}") from None


def _net(buf, path):
    out, n = [], len(buf)
    for number, wt, value, offset in wire.fields(buf, 0, n):
        if number in (_NET["layer"][0], _NET["layers"][0]):
            v1 = number == _NET["layers"][0]
            where = f"{'layers' if v1 else 'layer'}[{len(out)}]"
            wire.expect(number, wt, (wire.LEN,), where, offset)
            name, typ, blobs = _layer(buf, value, v1, where)
            if name is None:
                raise wire.WireError(f"{where}: a layer without a name", offset)
            out.append((name, typ, [np.array(b) for b in blobs]))    # copies off the mmap
    if not out and n:
        raise CaffeModelError(f"{path}: holds no layers: not a .caffemodel (a NetParameter)")
    return out


# ----------------------------------------------------------------------------- into a net
def read_weights(net, path, strict=False):
    """Fill `net`'s parameters from a .caffemodel by layer name; returns a WeightsReport.
    strict=True refuses a file that leaves any parameter of the net missing."""
    layers = read_blobs(path)
    report = WeightsReport()
    seen = set()
    for name, typ, blobs in layers:
        layer = net.layers.get(name)
        if layer is None:
            report.unexpected += [f"{name}.{i}" for i in range(len(blobs))]
            continue
        seen.add(name)
        if isinstance(layer, L.Scale) and blobs:
            if not np.allclose(blobs[0], layer.c, rtol=1e-6, atol=0):
                raise CaffeModelError(f"{path}: layer {name!r}: minifcn's Scale is the constant "
                                      f"{layer.c}; the file's scale blob holds other values "
                                      f"(e.g. {float(blobs[0].ravel()[0])})")
            report.copied.append(f"{name}.scale")
            report.unexpected += [f"{name}.{i}" for i in range(1, len(blobs))]
            continue
        keys = list(layer.params)
        for i, blob in enumerate(blobs):
            if i >= len(keys):
                report.unexpected.append(f"{name}.{i}")
                continue
            key, cur = f"{name}.{keys[i]}", layer.params[keys[i]]
            group = getattr(layer, "caffe_group", 1)
            if keys[i] == "weight" and group > 1 and blob.ndim == 4 and blob.shape[1] == 1:
                blob = expand_groups(blob, group)
            if tuple(blob.shape) == tuple(cur.shape):
                report.copied.append(key)
            elif blob.size == int(np.prod(cur.shape)):
                report.reshaped.append((key, tuple(blob.shape), tuple(cur.shape)))
                blob = blob.reshape(cur.shape)
            else:
                raise CaffeModelError(f"{path}: layer {name!r} blob {i} ({keys[i]}) has shape "
                                      f"{tuple(blob.shape)}; the net's is {tuple(cur.shape)}")
            net.set_param(key, blob)
    for name, layer in net.layers.items():
        n_file = next((len(b) for n, _, b in layers if n == name), 0)
        report.missing += [f"{name}.{p}" for p in list(layer.params)[n_file:]]
    if strict and report.missing:
        raise CaffeModelError(f"{path}: has nothing for {len(report.missing)} parameter(s) of "
                              f"the net: {', '.join(report.missing[:6])}"
                              f"{' ...' if len(report.missing) > 6 else ''}")
    return report


# ----------------------------------------------------------------------------- out of a net
def _caffe_type(layer):
    if isinstance(layer, L.InnerProduct):
        return "InnerProduct"
    if isinstance(layer, L.Conv):
        return "Convolution"
    if isinstance(layer, L.Deconv):
        return "Deconvolution"
    return type(layer).__name__


def _blob_chunks(array):
    """The chunks of one BlobProto (BlobShape, then packed float32 data)."""
    dims = wire.packed_varints(_SHAPE["dim"][0], array.shape)
    data = np.ascontiguousarray(array, dtype="<f4")
    return [wire.len_prefix(_BLOB["shape"][0], len(dims)), dims,
            wire.len_prefix(_BLOB["data"][0], data.nbytes), memoryview(data).cast("B")]


def write_weights(net, path):
    """Write every parameter of `net` as a .caffemodel (new-style `layer` list, BlobShape,
    packed float32 data), atomically: a crash leaves no half-written file."""
    from ..functional import to_host

    def save(f):
        f.write(wire.string_field(_NET["name"][0], net.name))
        for name, layer in net.layers.items():
            if not layer.params:
                continue
            chunks = [wire.string_field(_LAYER["name"][0], name),
                      wire.string_field(_LAYER["type"][0], _caffe_type(layer))]
            for p, value in layer.params.items():
                a = to_host(value, device=layer.device)
                group = getattr(layer, "caffe_group", 1)
                if p == "weight" and group > 1:
                    a = a[range(a.shape[0]), range(a.shape[0])][:, None]
                blob = _blob_chunks(a)
                chunks += [wire.len_prefix(_LAYER["blobs"][0], sum(len(c) for c in blob))]
                chunks += blob
            f.write(wire.len_prefix(_NET["layer"][0], sum(len(c) for c in chunks)))
            for c in chunks:
                f.write(c)
    atomic_write(path, save)
