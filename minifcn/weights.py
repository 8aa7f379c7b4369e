"""Pretrained weights: torchvision's ImageNet VGG16 into our nets, and the reference's surgery.

    sd = load_torch_state_dict("vgg16-397923af.pth")     # no torch needed
    report = import_torchvision_vgg16(fcn8s(), sd)         # conv1_1 ... fc7, fc6/fc7 reshaped
    report = transplant(fcn16s(), trained_fcn32s)         # surgery.transplant

A ``.pth`` file written by ``torch.save`` is a zip: ``<name>/data.pkl`` is a pickle of the
state dict whose tensors refer, by persistent id, to raw storages ``<name>/data/<key>``. A
pickle can name any Python callable and call it while it is read, so we never use pickle's
own loader: ``_RestrictedUnpickler.find_class`` hands out only our own functions, for the few
globals a state dict needs (an OrderedDict, the tensor rebuild function, storage types), and
refuses every other global with an error naming it. Nothing the file names is imported or
executed; tensors are rebuilt from the stored bytes with numpy.
"""
from __future__ import annotations

import os
import pickle
import zipfile
import zlib
from collections import OrderedDict
from dataclasses import dataclass, field

import numpy as np

from .files import BadFileError, _head, read_npz

__all__ = ["load_weights", "read_params", "weights_format", "load_torch_state_dict", "UnsafePickleError", "torchvision_vgg16_names",
           "import_torchvision_vgg16", "transplant", "TransplantReport"]


class UnsafePickleError(pickle.UnpicklingError, ValueError):
    """The pickle asked for something a state dict never needs (and we never provide). A
    ValueError too, so the CLI reports it as one line, like any other bad file."""


# ----------------------------------------------------------------------------- torch files
_STORAGE_DTYPES = {
    "FloatStorage": np.float32, "DoubleStorage": np.float64, "HalfStorage": np.float16,
    "BFloat16Storage": "bfloat16", "LongStorage": np.int64, "IntStorage": np.int32,
    "ShortStorage": np.int16, "CharStorage": np.int8, "ByteStorage": np.uint8,
    "BoolStorage": np.bool_,
}


class _Frozen:
    """No attribute of ours may change once made: pickle's BUILD opcode sets attributes on
    whatever object it is given, and these objects are handed to the pickle."""
    __slots__ = ()

    def __setattr__(self, key, value):
        raise UnsafePickleError(f"refused: the pickle tried to set {key!r} on {self!r}")


class _StorageType(_Frozen):
    """Stands in for torch.FloatStorage & co.: only says which dtype the bytes hold."""
    __slots__ = ("name", "dtype")

    def __init__(self, name):
        object.__setattr__(self, "name", name)
        object.__setattr__(self, "dtype", _STORAGE_DTYPES[name])

    def __repr__(self):
        return f"torch.{self.name}"


class _Callable(_Frozen):
    """One of our functions, as handed to the pickle for a global it may call."""
    __slots__ = ("fn", "name")

    def __init__(self, fn, name):
        object.__setattr__(self, "fn", fn)
        object.__setattr__(self, "name", name)

    def __call__(self, *args, **kwargs):
        return self.fn(*args, **kwargs)

    def __repr__(self):
        return self.name


class _Storage:
    """A storage read from the zip: a flat numpy array."""

    def __init__(self, array):
        self.array = array


def _rebuild_tensor(storage, storage_offset, size, stride, requires_grad=False,
                    backward_hooks=None, metadata=None):
    """torch._utils._rebuild_tensor_v2, with numpy: a strided view of the storage, copied."""
    if not isinstance(storage, _Storage):
        raise UnsafePickleError(f"tensor rebuilt from {type(storage).__name__}, not a storage")
    size, stride = tuple(int(v) for v in size), tuple(int(v) for v in stride)
    flat, off = storage.array, int(storage_offset)
    if any(v < 0 for v in size + stride) or off < 0:
        raise UnsafePickleError(f"tensor with negative size/stride/offset {size} {stride} {off}")
    last = off + sum((n - 1) * s for n, s in zip(size, stride)) if all(size) else off - 1
    if last >= flat.size:
        raise UnsafePickleError(f"tensor {size} stride {stride} offset {off} reaches past its "
                                f"storage of {flat.size} elements")
    if not all(size):
        return np.zeros(size, flat.dtype)
    view = np.lib.stride_tricks.as_strided(flat[off:], size,
                                           tuple(s * flat.itemsize for s in stride))
    return np.array(view)          # a copy: contiguous, writable, independent of the file


def _rebuild_parameter(data, requires_grad=False, backward_hooks=None):
    """torch._utils._rebuild_parameter: a Parameter is its data here."""
    if not isinstance(data, np.ndarray):
        raise UnsafePickleError("parameter rebuilt from something that is not a tensor")
    return data


# (module, name) the pickle may name -> what it gets instead (a fresh, frozen object on each
# request). Nothing else exists for it.
_ALLOWED = {
    ("collections", "OrderedDict"): lambda: _Callable(OrderedDict, "collections.OrderedDict"),
    ("torch._utils", "_rebuild_tensor_v2"):
        lambda: _Callable(_rebuild_tensor, "torch._utils._rebuild_tensor_v2"),
    ("torch._utils", "_rebuild_parameter"):
        lambda: _Callable(_rebuild_parameter, "torch._utils._rebuild_parameter"),
    **{("torch", name): (lambda name=name: _StorageType(name)) for name in _STORAGE_DTYPES},
}


class _RestrictedUnpickler(pickle.Unpickler):
    def __init__(self, file, read_storage):
        super().__init__(file)
        self._read_storage = read_storage
        self._storages = {}

    def find_class(self, module, name):
        try:
            return _ALLOWED[(module, name)]()
        except (KeyError, TypeError):
            raise UnsafePickleError(
                f"refused global {module}.{name}: a state dict needs only tensors, storages "
                f"and OrderedDict, and this file asks for something else (nothing was "
                f"executed)") from None

    def persistent_load(self, pid):
        # torch's persistent id: ('storage', storage type, key, location, numel)
        if not (isinstance(pid, tuple) and len(pid) == 5 and pid[0] == "storage"
                and isinstance(pid[1], _StorageType) and isinstance(pid[2], str)
                and isinstance(pid[4], int)):
            raise UnsafePickleError(f"unexpected persistent id {pid!r:.200}")
        _, stype, key, _location, numel = pid
        if key not in self._storages:
            self._storages[key] = _Storage(self._read_storage(key, stype.dtype, numel))
        return self._storages[key]


_LEAVES = (np.ndarray, int, float, bool, str, type(None))


def _check_tree(obj, path="state dict"):
    """Only dicts (and lists / tuples) of tensors and plain values may come out."""
    if isinstance(obj, _LEAVES):
        return
    if isinstance(obj, dict):
        for k, v in obj.items():
            if not isinstance(k, (str, int)):
                raise UnsafePickleError(f"{path}: key {k!r:.80} is not a string")
            _check_tree(v, f"{path}[{k!r}]")
        return
    if isinstance(obj, (list, tuple)):
        for i, v in enumerate(obj):
            _check_tree(v, f"{path}[{i}]")
        return
    raise UnsafePickleError(f"{path} holds a {type(obj).__name__}")


def load_torch_state_dict(path):
    """An OrderedDict name -> numpy array from a ``torch.save``d state dict (zip format, the
    default since torch 1.6, or the legacy one), without torch and without running anything
    the file names. Every way the file can fail (a refused global, a damaged zip, a malformed
    pickle, non-finite values) is a ValueError naming it (UnsafePickleError or BadFileError)."""
    path = os.fspath(path)
    _head(path, "torch file")
    try:
        sd = _read_torch(path)
    except UnsafePickleError as e:
        raise UnsafePickleError(str(e) if path in str(e) else f"{path}: {e}") from None
    except ValueError as e:                  # TorchFileError & co.: they name the file
        raise BadFileError(str(e) if path in str(e) else f"{path}: {e}") from None
    except (pickle.UnpicklingError, zipfile.BadZipFile, zlib.error, EOFError, KeyError,
            TypeError, AttributeError, IndexError, OSError) as e:
        raise BadFileError(f"{path}: not a readable torch state dict "
                           f"({type(e).__name__}: {e})") from None
    return check_finite(path, sd)


def _read_torch(path):
    try:
        zf = zipfile.ZipFile(path)
    except zipfile.BadZipFile:
        from .pth import is_legacy, load_legacy_state_dict
        if is_legacy(path):                  # torch < 1.6: pickles back to back (minifcn.pth)
            return load_legacy_state_dict(path)
        raise ValueError(f"{path}: neither torch's zip format (torch >= 1.6) nor its legacy "
                         f"one") from None
    with zf:
        pkls = [n for n in zf.namelist() if n.endswith("/data.pkl") and n.count("/") == 1]
        if len(pkls) != 1:
            raise ValueError(f"{path}: expected one <name>/data.pkl in the archive, found "
                             f"{pkls or 'none'}")
        prefix = pkls[0][: -len("data.pkl")]
        order = "little"
        if prefix + "byteorder" in zf.namelist():
            order = zf.read(prefix + "byteorder").decode("ascii", "replace").strip()
            if order not in ("little", "big"):
                raise ValueError(f"{path}: unknown byte order {order!r}")
        names = set(zf.namelist())

        def read_storage(key, dtype, numel):
            entry = f"{prefix}data/{key}"
            if entry not in names:
                raise UnsafePickleError(f"{path}: storage {key!r} is not in the archive")
            info = zf.getinfo(entry)
            bf16 = isinstance(dtype, str)
            dt = np.dtype(np.uint16 if bf16 else dtype).newbyteorder(
                "<" if order == "little" else ">")
            if numel < 0 or numel * dt.itemsize > info.file_size:
                raise UnsafePickleError(f"{path}: storage {key!r} claims {numel} elements, "
                                        f"the archive holds {info.file_size} bytes")
            raw = np.frombuffer(zf.read(entry), dt, count=numel)
            if bf16:                        # bfloat16: the high half of a float32
                return (raw.astype(np.uint32) << 16).view(np.float32)
            return raw.astype(dt.newbyteorder("="), copy=False)

        with zf.open(pkls[0]) as f:
            try:
                obj = _RestrictedUnpickler(f, read_storage).load()
            except UnsafePickleError as e:
                raise UnsafePickleError(f"{path}: {e}") from None
    _check_tree(obj)
    if not isinstance(obj, dict):
        raise ValueError(f"{path}: holds a {type(obj).__name__}, not a state dict")
    return OrderedDict(obj)


# ----------------------------------------------------------------------------- surgery
@dataclass
class TransplantReport:
    """What transplant() did: copied (same shape), reshaped (same size, other shape: fc ->
    conv), unmatched (destination parameters left as they were: no source, or a source of a
    different size, with both shapes) and unused (source parameters nobody took)."""
    copied: list = field(default_factory=list)
    reshaped: list = field(default_factory=list)
    unmatched: list = field(default_factory=list)
    unused: list = field(default_factory=list)

    def __str__(self):
        lines = [f"copied {len(self.copied)}, reshaped {len(self.reshaped)}, "
                 f"unmatched {len(self.unmatched)}, unused {len(self.unused)}"]
        lines += [f"  reshaped  {k}: {a} -> {b}" for k, a, b in self.reshaped]
        lines += [f"  unmatched {k}: {why}" for k, why in self.unmatched]
        lines += [f"  unused    {k}" for k in self.unused]
        return "\n".join(lines)


def _params_of(src):
    if hasattr(src, "params") and callable(src.params):
        return src.params()
    return src


def transplant(dst, src, rename=None):
    """Copy parameters from `src` (a Net, or a dict "<layer>.<param>" -> array) into the Net
    `dst`, by name, as the reference's surgery.transplant: same shape -> copied; same number
    of elements -> reshaped (a classifier's fc6 (4096, 25088) into an FCN's (4096, 512, 7, 7));
    anything else is left alone and reported. rename: an optional {src name: dst name}.
    Returns a TransplantReport."""
    params = OrderedDict(_params_of(src))
    if rename:
        params = OrderedDict((rename.get(k, k), v) for k, v in params.items())
    own = dst.params()
    report = TransplantReport()
    for key, cur in own.items():
        if key not in params:
            report.unmatched.append((key, "no source"))
            continue
        value = np.asarray(params[key])
        if value.shape == cur.shape:
            dst.set_param(key, value)
            report.copied.append(key)
        elif value.size == cur.size:
            dst.set_param(key, value.reshape(cur.shape))
            report.reshaped.append((key, tuple(value.shape), tuple(cur.shape)))
        else:
            report.unmatched.append((key, f"source {tuple(value.shape)} vs net "
                                          f"{tuple(cur.shape)}"))
    report.unused = [k for k in params if k not in own]
    return report


# ----------------------------------------------------------------------------- torchvision VGG
# torchvision's ImageNet preprocessing: RGB in [0, 1], minus mean, over std
TORCHVISION_MEAN = (0.485, 0.456, 0.406)
TORCHVISION_STD = (0.229, 0.224, 0.225)


def torchvision_vgg16_names(backbone="vgg16"):
    """{torchvision name: our name}: features.N (N counts conv, ReLU and pool modules in
    order) -> conv{block}_{i}, classifier.0/3/6 -> fc6/fc7/fc8. Derived from the backbone's
    configuration, as torchvision builds its `features` from the same list."""
    from .models import get_backbone
    cfg = get_backbone(backbone)
    names, n = {}, 0
    for blk, depth in enumerate(cfg.depths, 1):
        for i in range(1, depth + 1):
            names[f"features.{n}"] = f"conv{blk}_{i}"
            n += 2                                  # Conv2d, ReLU
        n += 1                                      # MaxPool2d
    names.update({"classifier.0": "fc6", "classifier.3": "fc7", "classifier.6": "fc8"})
    return {f"{tv}.{p}": f"{ours}.{p}" for tv, ours in names.items() for p in ("weight", "bias")}


def _fold_input(w, b, mean_bgr):
    """conv1_1 for Caffe-style input (BGR, 0-255, minus mean_bgr) from weights that expect
    torchvision's (RGB, [0, 1], minus mean, over std). x_tv[c] = (x_rgb[c]/255 - m[c])/s[c]
    with x_rgb[c] = x_caffe[2 - c] + mean_bgr[2 - c]: linear, so it folds into w and b.
    (Exact wherever the window holds no padding; in the padding the two differ by the small
    gap between the two datasets' mean colours.)"""
    m, s = np.asarray(TORCHVISION_MEAN), np.asarray(TORCHVISION_STD)
    mean_rgb = np.asarray(mean_bgr, dtype=np.float64)[::-1]
    w64 = w.astype(np.float64)
    w_new = (w64 / (255.0 * s)[None, :, None, None])[:, ::-1]          # RGB -> BGR inputs
    shift = (mean_rgb / 255.0 - m) / s                                 # x_tv at x_caffe = 0
    b_new = b.astype(np.float64) + np.einsum("fcij,c->f", w64, shift)
    return np.ascontiguousarray(w_new).astype(w.dtype), b_new.astype(b.dtype)


def import_torchvision_vgg16(net, state_dict, input="caffe", mean_bgr=None):
    """Load torchvision's ImageNet VGG16 weights (a state dict, or the path of its .pth) into
    `net`: minifcn.models.vgg16() or any VGG16 FCN (fc6/fc7 reshaped into convolutions; fc8
    is reported unused when the net has score layers instead, as the reference drops it).

    input="caffe" (the default) folds torchvision's preprocessing into conv1_1 so the net
    takes what minifcn.data.preprocess gives (BGR, 0-255, minus mean_bgr, default the VOC
    mean of the reference); input="torchvision" leaves the weights as they are. Returns the
    TransplantReport."""
    if not isinstance(state_dict, dict):
        state_dict = load_torch_state_dict(state_dict)
    names = torchvision_vgg16_names()
    missing = [k for k in names if k not in state_dict]
    if missing:
        raise ValueError(f"not a torchvision VGG16 state dict: missing {missing[:4]}"
                         f"{' ...' if len(missing) > 4 else ''}")
    src = OrderedDict((names[k], np.asarray(v)) for k, v in state_dict.items() if k in names)
    if input == "caffe":
        if mean_bgr is None:
            from .data import VOC_MEAN_BGR as mean_bgr
        src["conv1_1.weight"], src["conv1_1.bias"] = _fold_input(
            src["conv1_1.weight"], src["conv1_1.bias"], mean_bgr)
    elif input != "torchvision":
        raise ValueError(f"input={input!r}: 'caffe' (BGR 0-255 minus mean) or 'torchvision'")
    report = transplant(net, src)
    report.unused += [k for k in state_dict if k not in names]
    return report


# ----------------------------------------------------------------------------- any weights file
def weights_format(path):
    """'npz', 'pth' or 'caffemodel', from the file's first bytes (and name). An empty file is
    refused here; a damaged zip, a .npy or text named *.npz are left to read_npz to name."""
    head = _head(path, "weights file")
    if head.startswith(b"PK"):
        try:
            with zipfile.ZipFile(path) as zf:
                return "pth" if any(n.endswith("data.pkl") for n in zf.namelist()) else "npz"
        except (zipfile.BadZipFile, OSError, EOFError):
            return "npz"                              # read_npz says what is wrong with it
    if head[0] == 0x80:
        return "pth"                                  # a legacy torch file: pickles
    if os.fspath(path).endswith(".npz") or head.startswith(b"\x93NUMPY"):
        return "npz"
    return "caffemodel"                               # protobuf has no magic number


def _torch_params(path):
    """pytorch-fcn's (or torchvision's) state dict, checked, under minifcn's names."""
    from .pth import fcn_state_dict
    return fcn_state_dict(load_torch_state_dict(path))


def check_finite(path, params):
    """params, once every float array in it is finite (else BadFileError naming the array)."""
    for key, v in params.items():
        v = np.asarray(v)
        if v.dtype.kind == "f" and not np.isfinite(v).all():
            bad = v.size - int(np.count_nonzero(np.isfinite(v)))
            raise BadFileError(f"{path}: array {key!r} has {bad} non-finite value(s) (NaN or "
                               f"inf) of {v.size}: a diverged or damaged model")
    return params


def is_checkpoint(path):
    """Is this .npz a training checkpoint (it has an 'info' entry)? Only the archive's list of
    names is read; a file that cannot even be listed is read in full, so read_npz says why."""
    try:
        with np.load(path, allow_pickle=False) as f:
            return "info" in f.files
    except Exception:                   # noqa: BLE001 -- read_npz names what is wrong
        return "info" in read_npz(path)


def read_params(path):
    """{"layer.param": array} from any weights file: an .npz (plain weights or a training
    checkpoint), a .caffemodel (blob 0 -> weight, 1 -> bias) or a torch .pth (pytorch-fcn's or
    torchvision's names mapped onto minifcn's)."""
    kind = weights_format(path)
    if kind == "caffemodel":
        from .caffe.caffemodel import read_blobs
        return check_finite(path, OrderedDict(
            (f"{name}.{p}", b) for name, _, blobs in read_blobs(path)
            for p, b in zip(("weight", "bias"), blobs)))
    if kind == "pth":
        return _torch_params(path)
    arrays = read_npz(path)
    if "info" in arrays:
        return OrderedDict((k[6:], v) for k, v in arrays.items() if k.startswith("param/"))
    return OrderedDict(arrays)


def load_weights(net, path, strict=True):
    """The one door for --weights: fill `net` from an .npz (Net.save, or a training
    checkpoint), a .caffemodel (minifcn.caffe.read_weights) or a .pth (pytorch-fcn's
    fcn8s_from_caffe.pth & co., legacy or zip; torchvision's VGG16 names mapped), told apart
    by their content. strict=True refuses a file that leaves a parameter of the net without a
    value (or, for .npz and .pth, one of another size); strict=False fills what matches, as
    the reference's transplant. A damaged, empty, hostile or non-finite file is refused with
    a BadFileError naming it (and the array). Returns the report."""
    kind = weights_format(path)
    if kind == "caffemodel":
        from .caffe.caffemodel import read_weights
        report = read_weights(net, path, strict=strict)
        check_finite(path, net.params(host=True))
        return report
    if kind == "pth":
        report = transplant(net, _torch_params(path))
        if strict and report.unmatched:
            raise ValueError(f"{path} does not fit this net: "
                             + ", ".join(f"{k} ({why})" for k, why in report.unmatched[:6]))
        return report
    from .train import load_checkpoint
    if is_checkpoint(path):
        return load_checkpoint(path, net)
    if strict:
        return net.load(path)
    return transplant(net, read_params(path))
