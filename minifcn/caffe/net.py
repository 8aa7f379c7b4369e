"""read_net: a Caffe net description (.prototxt) -> a minifcn Net with the same layers.

    net = read_net("voc-fcn8s/deploy.prototxt")              # inputs ["data"], output "score"
    net = read_net("voc-fcn8s/train.prototxt", phase="train")
    net.caffe.data_layers       # the Python data layers, for minifcn.datasets.from_data_layer
    net.caffe.crops             # each Crop: the file's offset and the one minifcn derived

Both spellings of a net are read: `layer { type: "Convolution" }` and the V1 `layers { type:
CONVOLUTION }` (with blobs_lr / weight_decay), and the old `input:` / `input_dim:` inputs.
Layers are kept or dropped by their include / exclude rules against the phase, level and
stages asked for, as Caffe's NetState does. Layer types read (everything the reference FCNs use):

    Input, Python (data layers)   their tops become the net's inputs
    Convolution, Deconvolution    group, dilation, pad / kernel / stride as one value, two, or _h/_w
    InnerProduct, Pooling (MAX, AVE; ceil or floor), ReLU, Dropout, LRN, Concat (channels),
    Eltwise (SUM with coeffs), Scale (a constant, frozen: FCN-8s at-once), Silence
    Crop                          the offset is derived from the coordinate maps and compared
                                  with the file's: see `crops` below
    SoftmaxWithLoss               ignore_label, normalize / normalization (VALID -> "valid",
                                  BATCH_SIZE -> "batch", NONE -> "none"), loss_weight
    Accuracy                      skipped: minifcn scores with minifcn.metrics instead

Any other layer type, and any field of a layer that minifcn does not implement, is refused
with the file, line, layer and field named (never silently ignored); `engine` fields only pick
Caffe's implementation and are ignored. param { lr_mult decay_mult } set each parameter's
multipliers, with Caffe's defaults (1 and 1, biases included) where the file gives none.

Weights start as the file's fillers say (constant 0 when it names none, as in Caffe: the
reference nets get theirs from a .caffemodel); materialize=False leaves every parameter as
lazily zeroed memory (full VGG16 nets cost nothing: for shapes, crops and receptive fields).

crops: "check" (default) refuses a Crop whose file offset differs from the derived one, naming
both; "derive" uses the derived offset and warns; "file" uses the file's offset (warning when
they differ) -- Caffe's own behaviour, for files whose crops are known to be off.
max_channels=N caps the width of every convolution, deconvolution and fully connected layer
at N (classes included), keeping all the geometry: a reference net at a size that runs forward
and backward in moments, for quick looks and tests (its weights do not fit a real .caffemodel).
"""
from __future__ import annotations

import ast
import os
import warnings
from dataclasses import dataclass, field

import numpy as np

from .. import layers as L
from ..coordmap import (CropError, UndefinedMap, blob_shapes, fmt_map, is_integer_shift,
                        map_between)
from ..net import Net
from .fillers import expand_groups, fill
from .text_format import PrototxtError, parse_file

__all__ = ["read_net", "NetInfo", "DataLayer", "PrototxtError", "DATA_LAYERS"]

V1_TYPES = {"CONVOLUTION": "Convolution", "DECONVOLUTION": "Deconvolution",
            "POOLING": "Pooling", "RELU": "ReLU", "DROPOUT": "Dropout",
            "INNER_PRODUCT": "InnerProduct", "ELTWISE": "Eltwise", "LRN": "LRN",
            "CONCAT": "Concat", "SOFTMAX_LOSS": "SoftmaxWithLoss", "SILENCE": "Silence",
            "ACCURACY": "Accuracy"}
IGNORED = {"engine"}          # picks Caffe's implementation (CUDNN or its own): same numbers

# The reference's Python data layers: module.layer -> the channels of each top but the labels
# (None: a label); NYUD's tops come from its param_str.
DATA_LAYERS = {
    ("voc_layers", "VOCSegDataLayer"): (3, None),
    ("voc_layers", "SBDDSegDataLayer"): (3, None),
    ("layers", "VOCSegDataLayer"): (3, None),          # voc-fcn-alexnet's name for the module
    ("layers", "SBDDSegDataLayer"): (3, None),
    ("siftflow_layers", "SIFTFlowSegDataLayer"): (3, None, None),
    ("pascalcontext_layers", "PASCALContextSegDataLayer"): (3, None),
    ("nyud_layers", "NYUDSegDataLayer"): None,
}
NYUD_CHANNELS = {"color": 3, "depth": 1, "hha": 3, "label": None}


@dataclass
class DataLayer:
    """A Python data layer of the file: module, layer, its param_str as a dict, its tops."""
    name: str
    module: str
    layer: str
    params: dict
    tops: list
    where: str


@dataclass
class NetInfo:
    """What read_net learnt from the file beyond the Net itself."""
    path: str
    phase: str
    types: dict = field(default_factory=dict)         # layer -> Caffe type
    data_layers: list = field(default_factory=list)   # [DataLayer]
    input_shapes: dict = field(default_factory=dict)  # input blob -> (N, C, H, W) if given
    crops: list = field(default_factory=list)         # [{layer, file, derived, used}]
    losses: list = field(default_factory=list)        # [(layer, score blob, label blob)]
    skipped: list = field(default_factory=list)       # [(layer, type)] (Accuracy)


# ----------------------------------------------------------------------------- rules
def _rule_met(rule, phase, level, stages):
    if rule.has("phase") and rule.get("phase") != phase:
        return False
    if rule.has("min_level") and level < rule.get("min_level"):
        return False
    if rule.has("max_level") and level > rule.get("max_level"):
        return False
    return (all(s in stages for s in rule.all("stage"))
            and not any(s in stages for s in rule.all("not_stage")))


def _included(msg, phase, level, stages):
    """Caffe's StateMeetsRule: included if any include rule (or none given) is met and no
    exclude rule is."""
    inc, exc = msg.all("include"), msg.all("exclude")
    if inc and exc:
        raise PrototxtError(f"{msg.where('include')}: a layer may give include or exclude "
                            f"rules, not both")
    if inc:
        return any(_rule_met(r, phase, level, stages) for r in inc)
    return not any(_rule_met(r, phase, level, stages) for r in exc)


def _refuse_unread(msg, where, what):
    extra = [f for f in msg.unread() if f not in IGNORED]
    if extra:
        raise PrototxtError(f"{msg.where(extra[0])}: {what}: field {extra[0]!r} is not "
                            f"supported by minifcn")


# ----------------------------------------------------------------------------- geometry
def _hw(p, name, prefix, default, where, repeated=True):
    """(h, w) from field `name` (one value, or two for h and w when repeated) or from
    `prefix`_h and `prefix`_w."""
    values = p.all(name) if repeated else ([p.get(name)] if p.has(name) else [])
    h, w = (p.get(f"{prefix}_h"), p.get(f"{prefix}_w")) if prefix else (None, None)
    if values and (h is not None or w is not None):
        raise PrototxtError(f"{where}: give {name} or {prefix}_h/{prefix}_w, not both")
    if h is not None or w is not None:
        if h is None or w is None:
            raise PrototxtError(f"{where}: {prefix}_h and {prefix}_w go together")
        return (int(h), int(w))
    if not values:
        if default is None:
            raise PrototxtError(f"{where}: {name} is required")
        return (default, default)
    if len(values) > 2:
        raise PrototxtError(f"{where}: {len(values)} values of {name}: a 2-D layer takes 1 or 2")
    return (int(values[0]),) * 2 if len(values) == 1 else (int(values[0]), int(values[1]))


# ----------------------------------------------------------------------------- the reader
class _Reader:
    def __init__(self, path, phase, level, stages, crops, materialize, max_channels, dtype,
                 seed):
        if phase not in ("train", "test"):
            raise ValueError(f"phase must be 'train' or 'test', got {phase!r}")
        if crops not in ("check", "derive", "file"):
            raise ValueError(f"crops must be 'check', 'derive' or 'file', got {crops!r}")
        self.path, self.phase = str(path), phase.upper()
        self.level, self.stages, self.crops = level, set(stages), crops
        self.materialize, self.max_channels = materialize, max_channels
        self.dtype, self.rng, self.seed = np.dtype(dtype), np.random.default_rng(seed), seed
        self.info = NetInfo(str(path), phase)
        self.channels = {}           # blob -> channels (None: unknown or a label)
        self.skipped_tops = {}       # top of a skipped layer -> that layer

    # -- the file
    def read(self):
        msg = parse_file(self.path, "NetParameter")
        if msg.has("layer") and msg.has("layers"):
            raise PrototxtError(f"{msg.where('layers')}: the file mixes layer {{}} and V1 "
                                f"layers {{}}; use one")
        state = msg.get("state")
        if state is not None:
            self.level = state.get("level", self.level)
            self.stages |= set(state.all("stage"))
            state.get("phase")
        msg.get("force_backward")
        msg.get("debug_info")
        layers = [(m, False) for m in msg.all("layer")] + [(m, True) for m in msg.all("layers")]
        kept = []
        for m, v1 in layers:
            if _included(m, self.phase, self.level, self.stages):
                kept.append((m, v1))
        inputs = self._legacy_inputs(msg) + [t for m, v1 in kept
                                             if self._type(m, v1) in ("Input", "Python")
                                             for t in m.all("top")]
        if len(set(inputs)) != len(inputs):
            raise PrototxtError(f"{self.path}: net inputs {inputs} name a blob twice")
        name = msg.get("name") or os.path.splitext(os.path.basename(self.path))[0]
        self.net = Net(inputs or ["data"], name=name)
        _refuse_unread(msg, self.path, "the net")
        for m, v1 in kept:
            self._layer(m, v1)
        self.net.caffe = self.info
        return self.net

    def _legacy_inputs(self, msg):
        names, shapes, dims = msg.all("input"), msg.all("input_shape"), msg.all("input_dim")
        if dims and len(dims) != 4 * len(names):
            raise PrototxtError(f"{msg.where('input_dim')}: input_dim needs 4 values per "
                                f"input ({len(names)} inputs, {len(dims)} values)")
        if shapes and len(shapes) != len(names):
            raise PrototxtError(f"{msg.where('input_shape')}: one input_shape per input")
        for i, n in enumerate(names):
            shape = tuple(shapes[i].all("dim")) if shapes else tuple(dims[4 * i:4 * i + 4])
            self._set_input(n, shape, msg.where("input"))
        return list(names)

    def _set_input(self, name, shape, where):
        if shape:
            if len(shape) != 4:
                raise PrototxtError(f"{where}: input {name!r} has shape {shape}; minifcn reads "
                                    f"4-D (N, C, H, W) inputs")
            self.info.input_shapes[name] = tuple(int(d) for d in shape)
        self.channels[name] = int(shape[1]) if shape else None

    def _type(self, m, v1):
        if not v1:
            return m.get("type")
        t = m.get("type")
        return V1_TYPES.get(t, t)

    # -- one layer
    def _layer(self, m, v1):
        typ, name = self._type(m, v1), m.get("name")
        where = f"{m.where('name') if name else m.where()}"
        if not name:
            raise PrototxtError(f"{where}: a layer without a name")
        if not typ:
            raise PrototxtError(f"{where}: layer {name!r} has no type")
        self.where, self.lname, self.ltype = where, name, typ
        bottoms, tops = m.all("bottom"), m.all("top")
        for b in bottoms:
            if b in self.skipped_tops:
                raise PrototxtError(f"{where}: layer {name!r} reads {b!r}, the top of the "
                                    f"{self.skipped_tops[b]} layer that minifcn skips")
        build = getattr(self, "_" + typ, None) if typ.isidentifier() else None
        if build is None:
            raise PrototxtError(f"{where}: layer {name!r}: type {typ!r} is not supported by "
                                f"minifcn (it reads {', '.join(sorted(self.supported()))})")
        self.info.types[name] = typ
        self.specs = self._param_specs(m, v1)
        layer = build(m, bottoms, tops)
        if not v1:
            m.get("phase")
        _refuse_unread(m, where, f"layer {name!r} ({typ})")
        if layer is None:
            return
        specs = self.specs + [(1.0, 1.0)] * (len(layer.params) - len(self.specs))
        for p, (lr, decay) in zip(layer.params, specs):
            layer.lr_mult[p], layer.decay_mult[p] = lr, decay
        if len(self.specs) > len(layer.params):
            raise PrototxtError(f"{where}: layer {name!r} gives {len(self.specs)} param specs "
                                f"for {len(layer.params)} parameter blobs")
        self._add(name, layer, bottoms, tops)

    @classmethod
    def supported(cls):
        return {n[1:] for n in dir(cls) if n[1:2].isupper() and n.startswith("_")}

    def _add(self, name, layer, bottoms, tops):
        try:
            self.net.add(name, layer, bottoms, tops)
        except (CropError, UndefinedMap) as e:
            raise PrototxtError(f"{self.where}: layer {name!r}: {e}") from None
        except ValueError as e:
            raise PrototxtError(f"{self.where}: {e}") from None

    def _param_specs(self, m, v1):
        """[(lr_mult, decay_mult)] per parameter blob, Caffe's defaults 1 and 1."""
        if v1:
            lrs, decays = m.all("blobs_lr"), m.all("weight_decay")
            if m.all("param") or m.all("blob_share_mode"):
                raise PrototxtError(f"{m.where('param')}: shared parameters are not supported")
            n = max(len(lrs), len(decays))
            return [(float(lrs[i]) if i < len(lrs) else 1.0,
                     float(decays[i]) if i < len(decays) else 1.0) for i in range(n)]
        specs = []
        for p in m.all("param"):
            if p.get("name") or p.has("share_mode"):
                raise PrototxtError(f"{p.where('name')}: shared parameters (param {{ name }}) "
                                    f"are not supported")
            specs.append((float(p.get("lr_mult", 1.0)), float(p.get("decay_mult", 1.0))))
            _refuse_unread(p, self.where, "param")
        return specs

    def _params(self, m, field_name):
        p = m.get(field_name)
        return p if p is not None else _Empty(field_name)

    def _done(self, p):
        if not isinstance(p, _Empty):
            _refuse_unread(p, self.where, f"layer {self.lname!r} ({self.ltype})")

    def _bottom_channels(self, b):
        c = self.channels.get(b)
        if c is None:
            raise PrototxtError(f"{self.where}: layer {self.lname!r}: cannot tell how many "
                                f"channels blob {b!r} has (give its Input layer a shape)")
        return c

    def _n(self, bottoms, n):
        if len(bottoms) != n:
            raise PrototxtError(f"{self.where}: layer {self.lname!r} ({self.ltype}) takes "
                                f"{n} bottom(s), got {bottoms}")

    def _same_channels(self, bottoms, tops):
        for t in tops:
            self.channels[t] = self.channels.get(bottoms[0])

    def _width(self, n):
        return min(n, self.max_channels) if self.max_channels else n

    def _init(self, shape, filler, default="constant", value=0.0):
        if not self.materialize:
            return np.zeros(shape, self.dtype)
        return fill(shape, filler, self.rng, self.dtype, self.where, default, value)

    # -- the types (method _<Type> builds one; returning None adds nothing)
    def _Input(self, m, bottoms, tops):
        p = self._params(m, "input_param")
        shapes = [tuple(s.all("dim")) for s in (p.all("shape") if p else [])]
        if shapes and len(shapes) not in (1, len(tops)):
            raise PrototxtError(f"{self.where}: {len(shapes)} shapes for {len(tops)} tops")
        for i, t in enumerate(tops):
            self._set_input(t, shapes[min(i, len(shapes) - 1)] if shapes else (), self.where)
        self._done(p)

    def _Python(self, m, bottoms, tops):
        p = self._params(m, "python_param")
        module, kind, text = p.get("module"), p.get("layer"), p.get("param_str", "")
        p.get("share_in_parallel")
        self._done(p)
        if bottoms or (module, kind) not in DATA_LAYERS:
            raise PrototxtError(f"{self.where}: Python layer {module}.{kind} is not one of the "
                                f"reference's data layers minifcn reads "
                                f"({', '.join(f'{a}.{b}' for a, b in DATA_LAYERS)})")
        try:
            params = ast.literal_eval(text) if text.strip() else {}
        except (ValueError, SyntaxError) as e:
            raise PrototxtError(f"{self.where}: param_str of {self.lname!r} is not a Python "
                                f"literal ({e}); minifcn never evaluates code from a file") \
                from None
        if not isinstance(params, dict):
            raise PrototxtError(f"{self.where}: param_str of {self.lname!r} must be a dict")
        chans = DATA_LAYERS[(module, kind)]
        if chans is None:                                   # NYUD: its tops say
            names = params.get("tops", [])
            if not isinstance(names, (list, tuple)) or any(n not in NYUD_CHANNELS for n in names):
                raise PrototxtError(f"{self.where}: NYUD's param_str 'tops' must list some of "
                                    f"{', '.join(NYUD_CHANNELS)}; got {names!r}")
            chans = tuple(NYUD_CHANNELS[n] for n in names)
        if len(chans) != len(tops):
            raise PrototxtError(f"{self.where}: {module}.{kind} makes {len(chans)} tops, the "
                                f"layer names {len(tops)}: {tops}")
        for t, c in zip(tops, chans):
            self.channels[t] = c
        self.info.data_layers.append(DataLayer(self.lname, module, kind, params, list(tops),
                                               self.where))

    def _conv_geometry(self, p, deconv):
        kernel = _hw(p, "kernel_size", "kernel", None, self.where)
        pad, stride = _hw(p, "pad", "pad", 0, self.where), _hw(p, "stride", "stride", 1, self.where)
        dilation = _hw(p, "dilation", None, 1, self.where)
        if p.get("axis", 1) != 1:
            raise PrototxtError(f"{self.where}: convolution axis {p.get('axis')} is not "
                                f"supported (only channels, axis 1)")
        if p.get("force_nd_im2col", False):
            raise PrototxtError(f"{self.where}: force_nd_im2col is not supported")
        if deconv and dilation != (1, 1):
            raise PrototxtError(f"{self.where}: a dilated Deconvolution is not supported")
        return kernel, pad, stride, dilation

    def _Convolution(self, m, bottoms, tops):
        self._n(bottoms, 1)
        p = self._params(m, "convolution_param")
        kernel, pad, stride, dilation = self._conv_geometry(p, False)
        c_in, out = self._bottom_channels(bottoms[0]), self._width(int(p.get("num_output", 0)))
        groups, bias = int(p.get("group", 1)), p.get("bias_term", True)
        if out < 1:
            raise PrototxtError(f"{self.where}: num_output must be >= 1")
        if self.max_channels and groups > 1 and (c_in % groups or out % groups):
            groups = 1                        # capped widths no longer split into the groups
        try:
            layer = L.Conv(c_in, out, kernel, stride, pad, dilation, groups, bias=bias,
                           init="zeros", dtype=self.dtype)
        except ValueError as e:
            raise PrototxtError(f"{self.where}: layer {self.lname!r}: {e}") from None
        layer.params["weight"] = self._init(layer.params["weight"].shape, p.get("weight_filler"))
        if bias:
            layer.params["bias"] = self._init((out,), p.get("bias_filler"))
        self._done(p)
        self.channels[tops[0]] = out
        return layer

    def _Deconvolution(self, m, bottoms, tops):
        self._n(bottoms, 1)
        p = self._params(m, "convolution_param")
        kernel, pad, stride, _ = self._conv_geometry(p, True)
        c_in, n_out = self._bottom_channels(bottoms[0]), int(p.get("num_output", 0))
        out, group, bias = self._width(n_out), int(p.get("group", 1)), p.get("bias_term", True)
        frozen = bool(self.specs) and self.specs[0][0] == 0
        if group == n_out and self.max_channels:
            group = out
        if group != 1 and not (group == c_in == out and frozen and not bias):
            raise PrototxtError(f"{self.where}: a grouped Deconvolution is supported only as a "
                                f"frozen per-channel upsampling (group = num_output = input "
                                f"channels, lr_mult 0, no bias); got group {group}")
        layer = L.Deconv(c_in, out, kernel, stride, pad, bias=bias, init="zeros",
                         dtype=self.dtype)
        shape = (c_in, out // group) + kernel                     # Caffe's blob
        w = self._init(shape, p.get("weight_filler"))
        layer.caffe_group = group
        layer.params["weight"] = expand_groups(w, group) if group > 1 else w
        if bias:
            layer.params["bias"] = self._init((out,), p.get("bias_filler"))
        self._done(p)
        self.channels[tops[0]] = out
        return layer

    def _InnerProduct(self, m, bottoms, tops):
        self._n(bottoms, 1)
        p = self._params(m, "inner_product_param")
        if p.get("axis", 1) != 1 or p.get("transpose", False):
            raise PrototxtError(f"{self.where}: InnerProduct with axis != 1 or transpose is not "
                                f"supported")
        shape = self._shape_of(bottoms[0])
        out, bias = self._width(int(p.get("num_output", 0))), p.get("bias_term", True)
        layer = L.InnerProduct(shape, out, bias=bias, init="zeros", dtype=self.dtype)
        layer.params["weight"] = self._init(layer.params["weight"].shape, p.get("weight_filler"))
        if bias:
            layer.params["bias"] = self._init((out,), p.get("bias_filler"))
        self._done(p)
        self.channels[tops[0]] = out
        return layer

    def _shape_of(self, blob):
        for inp, shape in self.info.input_shapes.items():
            try:
                shapes = blob_shapes(self.net, shape[2:], input_blob=inp, channels=shape[1])
            except (ValueError, KeyError):
                continue
            if blob in shapes and None not in shapes[blob]:
                return shapes[blob]
        raise PrototxtError(f"{self.where}: InnerProduct {self.lname!r} needs the size of "
                            f"{blob!r}: give the net's input a fixed shape")

    def _Pooling(self, m, bottoms, tops):
        self._n(bottoms, 1)
        p = self._params(m, "pooling_param")
        if p.get("global_pooling", False):
            raise PrototxtError(f"{self.where}: global_pooling is not supported (its window "
                                f"depends on the input size: no coordinate map)")
        method = p.get("pool", "MAX")
        if method not in ("MAX", "AVE"):
            raise PrototxtError(f"{self.where}: {method} pooling is not supported (MAX, AVE)")
        kernel = _hw(p, "kernel_size", "kernel", None, self.where, repeated=False)
        pad = _hw(p, "pad", "pad", 0, self.where, repeated=False)
        stride = _hw(p, "stride", "stride", 1, self.where, repeated=False)
        ceil = p.get("round_mode", "CEIL") == "CEIL"
        self._done(p)
        self._same_channels(bottoms, tops)
        return (L.MaxPool if method == "MAX" else L.AvgPool)(kernel, stride, pad, ceil)

    def _ReLU(self, m, bottoms, tops):
        self._n(bottoms, 1)
        p = self._params(m, "relu_param")
        slope = p.get("negative_slope", 0.0)
        self._done(p)
        self._same_channels(bottoms, tops)
        return L.ReLU(slope)

    def _Dropout(self, m, bottoms, tops):
        self._n(bottoms, 1)
        p = self._params(m, "dropout_param")
        ratio = p.get("dropout_ratio", 0.5)
        self._done(p)
        self._same_channels(bottoms, tops)
        seed = None if self.seed is None else [self.seed, len(self.net.layers)]
        return L.Dropout(ratio, seed=seed)

    def _LRN(self, m, bottoms, tops):
        self._n(bottoms, 1)
        p = self._params(m, "lrn_param")
        if p.get("norm_region", "ACROSS_CHANNELS") != "ACROSS_CHANNELS":
            raise PrototxtError(f"{self.where}: LRN within channels is not supported")
        layer = L.LRN(p.get("local_size", 5), p.get("alpha", 1.0), p.get("beta", 0.75),
                      p.get("k", 1.0))
        self._done(p)
        self._same_channels(bottoms, tops)
        return layer

    def _Eltwise(self, m, bottoms, tops):
        p = self._params(m, "eltwise_param")
        op, coeffs = p.get("operation", "SUM"), p.all("coeff")
        p.get("stable_prod_grad")
        if op != "SUM":
            raise PrototxtError(f"{self.where}: Eltwise {op} is not supported (SUM)")
        if coeffs and len(coeffs) != len(bottoms):
            raise PrototxtError(f"{self.where}: {len(coeffs)} coeffs for {len(bottoms)} bottoms")
        self._done(p)
        self._same_channels(bottoms, tops)
        return L.Sum(coeffs or None)

    def _Scale(self, m, bottoms, tops):
        self._n(bottoms, 1)
        p = self._params(m, "scale_param")
        filler = p.get("filler")
        value = 1.0 if filler is None else filler.get("value", 0.0)
        kind = "constant" if filler is None else filler.get("type", "constant")
        frozen = bool(self.specs) and self.specs[0][0] == 0
        if kind != "constant" or not frozen or p.get("bias_term", False) or \
                p.get("axis", 1) != 1 or p.get("num_axes", 1) not in (0, 1):
            raise PrototxtError(f"{self.where}: a Scale layer is supported as a frozen constant "
                                f"(constant filler, param {{ lr_mult: 0 }}, no bias), as "
                                f"FCN-8s at-once uses it")
        self._done(p)
        self._same_channels(bottoms, tops)
        self.specs = []                         # minifcn's Scale holds no parameter
        return L.Scale(value)

    def _Concat(self, m, bottoms, tops):
        p = self._params(m, "concat_param")
        if p.get("axis", p.get("concat_dim", 1)) != 1:
            raise PrototxtError(f"{self.where}: Concat is supported on the channel axis (1)")
        self._done(p)
        self.channels[tops[0]] = sum(self._bottom_channels(b) for b in bottoms)
        return L.Concat()

    def _Silence(self, m, bottoms, tops):
        self.net.add(self.lname, L.Silence(), bottoms, tops=[])

    def _Crop(self, m, bottoms, tops):
        self._n(bottoms, 2)
        p = self._params(m, "crop_param")
        if p.get("axis", 2) != 2:
            raise PrototxtError(f"{self.where}: Crop axis {p.get('axis')} is not supported "
                                f"(minifcn crops height and width: axis 2)")
        offs = [int(v) for v in p.all("offset")]
        if len(offs) > 2:
            raise PrototxtError(f"{self.where}: {len(offs)} crop offsets for 2 axes")
        file_off = (offs + [0])[:1] * 2 if len(offs) < 2 else tuple(offs)
        file_off = tuple(file_off)
        self._done(p)
        self._same_channels(bottoms, tops)
        derived, why = None, ""
        for b in bottoms:
            if b not in self.net.producer:
                raise PrototxtError(f"{self.where}: layer {self.lname!r} reads blob {b!r}, which "
                                    f"no earlier layer makes")
        cut, ref = ((b, self.net.producer[b]) for b in bottoms)
        try:
            m = map_between(self.net, cut, ref)
            if is_integer_shift(m):
                derived = tuple(int(-b) for _, b in m)
            else:
                why = f"the map between the two is {fmt_map(m)}, not an integer shift"
        except UndefinedMap as e:
            why = str(e)
        if derived is not None and (derived == file_off or self.crops == "derive"):
            used, layer = derived, L.Crop()
        elif self.crops == "file":
            used, layer = file_off, L.Crop(offset=file_off)
        else:
            what = (f"the offset derived from the coordinate maps is {derived}" if derived
                    is not None else f"no offset can be derived ({why})")
            raise PrototxtError(f"{self.where}: crop {self.lname!r}: the file's offset is "
                                f"{file_off}{'' if offs else ' (none given: Caffe uses 0)'}, "
                                f"{what}. read_net(..., crops='file') keeps the file's, "
                                f"crops='derive' takes minifcn's")
        if derived != file_off:
            warnings.warn(f"{self.where}: crop {self.lname!r}: file offset {file_off}, derived "
                          f"{derived}; using {used}", stacklevel=5)
        self.info.crops.append({"layer": self.lname, "file": file_off, "derived": derived,
                                "used": used})
        return layer

    def _SoftmaxWithLoss(self, m, bottoms, tops):
        if len(bottoms) != 2 or len(tops) > 1:
            raise PrototxtError(f"{self.where}: SoftmaxWithLoss is supported with bottoms "
                                f"(scores, labels) and one top")
        lp, sp = self._params(m, "loss_param"), self._params(m, "softmax_param")
        if sp.get("axis", 1) != 1:
            raise PrototxtError(f"{self.where}: softmax over axis {sp.get('axis')} is not "
                                f"supported (the class axis, 1)")
        ignore = lp.get("ignore_label")
        if lp.has("normalization"):
            mode = lp.get("normalization")
            lp.get("normalize")
        else:
            mode = "VALID" if lp.get("normalize", True) else "BATCH_SIZE"
        if mode == "FULL":
            if ignore is not None:
                raise PrototxtError(f"{self.where}: normalization FULL with an ignore_label "
                                    f"(divide by every pixel, ignored ones included) is not "
                                    f"supported; use VALID")
            mode = "VALID"                         # no pixel is ignored: the same divisor
        weights = m.all("loss_weight")
        if len(weights) > 1:
            raise PrototxtError(f"{self.where}: one loss_weight per top")
        self._done(lp)
        self._done(sp)
        self.info.losses.append((self.lname, bottoms[0], bottoms[1]))
        norm = {"VALID": "valid", "BATCH_SIZE": "batch", "NONE": "none"}[mode]
        # no ignore_label: every label must be a class (-1 never matches one)
        return L.SoftmaxLoss(-1 if ignore is None else ignore, norm,
                             loss_weight=weights[0] if weights else 1.0)

    def _Accuracy(self, m, bottoms, tops):
        p = self._params(m, "accuracy_param")
        for f in ("top_k", "axis", "ignore_label"):
            p.get(f)
        m.all("loss_weight")
        self.info.skipped.append((self.lname, "Accuracy"))
        for t in tops:
            self.skipped_tops[t] = f"Accuracy {self.lname!r}"


class _Empty:
    """Stands in for a parameter message the file leaves out: every field at its default."""

    def __init__(self, name):
        self.name = name

    def get(self, name, default=None):
        return default

    def all(self, name):
        return []

    def has(self, name):
        return False

    def __bool__(self):
        return False


def read_net(path, phase="test", *, level=0, stages=(), crops="check", materialize=True,
             max_channels=None, dtype=np.float32, seed=0):
    """The Net a Caffe .prototxt describes (see the module docstring). phase "train" or
    "test" (and level / stages) choose layers by their include / exclude rules. The Net's
    `caffe` attribute (a NetInfo) holds the data layers, input shapes, crop comparisons and
    loss heads. Raises PrototxtError (a ValueError) naming the file and line of any problem."""
    if max_channels is not None and int(max_channels) < 1:
        raise ValueError(f"max_channels must be >= 1, got {max_channels}")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"prototxt {path} does not exist")
    return _Reader(path, phase, level, stages, crops, materialize, max_channels, dtype,
                   seed).read()
