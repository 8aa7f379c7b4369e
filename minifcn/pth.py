"""Old torch files (torch.save before torch 1.6: pytorch-fcn's fcn8s_from_caffe.pth and
vgg16_from_caffe.pth), read without torch and without running anything the file names; and
pytorch-fcn's key names mapped onto minifcn's.

    sd = load_legacy_state_dict("fcn8s_from_caffe.pth")     # OrderedDict name -> array
    ours = fcn_state_dict(sd)                                # -> "conv1_1.weight", ...

The legacy format is five things back to back in one file: a pickled magic number, the pickled
protocol version (1001), a pickled dict of system facts (byte order, C type sizes), the pickle
of the state dict itself -- whose tensors point, by persistent id ('storage', type, key,
location, numel, view), at storages that are not in the pickle -- then the pickled list of
storage keys, and for each key in that order an int64 element count followed by the raw bytes.
Every pickle goes through minifcn.weights' restricted unpickler (only OrderedDict, the tensor
rebuild functions and storage types exist for it; every other global is refused, nothing is
imported or called). Tensors are rebuilt once the storages' bytes have been read.
"""
from __future__ import annotations

import os
import pickle
from collections import OrderedDict

import numpy as np

from .weights import (UnsafePickleError, _Callable, _check_tree, _RestrictedUnpickler,
                      _StorageType, torchvision_vgg16_names)

__all__ = ["load_legacy_state_dict", "is_legacy", "fcn_state_dict", "TorchFileError"]

MAGIC, PROTOCOL = 0x1950A86A20F9469CFC6C, 1001


class TorchFileError(ValueError):
    """A torch file that is truncated, malformed or holds something other than a state dict."""


class _LazyTensor:
    """A tensor whose storage's bytes come after the pickle: rebuilt when they are read."""

    def __init__(self, storage, offset, size, stride):
        self.storage, self.offset = storage, int(offset)
        self.size, self.stride = tuple(int(v) for v in size), tuple(int(v) for v in stride)


class _LegacyStorage:
    def __init__(self, key, dtype, numel):
        self.key, self.dtype, self.numel, self.array = key, dtype, int(numel), None


def _lazy_tensor(storage, offset, size, stride, *rest):
    if not isinstance(storage, _LegacyStorage):
        raise UnsafePickleError(f"tensor rebuilt from {type(storage).__name__}, not a storage")
    return _LazyTensor(storage, offset, size, stride)


def _lazy_parameter(data, *rest):
    if not isinstance(data, _LazyTensor):
        raise UnsafePickleError("parameter rebuilt from something that is not a tensor")
    return data


class _LegacyUnpickler(_RestrictedUnpickler):
    _REBUILD = {("torch._utils", "_rebuild_tensor_v2"): _lazy_tensor,
                ("torch._utils", "_rebuild_tensor"): _lazy_tensor,          # torch < 0.4
                ("torch._utils", "_rebuild_parameter"): _lazy_parameter}

    def __init__(self, file):
        super().__init__(file, None)
        self.storages = {}

    def find_class(self, module, name):
        fn = self._REBUILD.get((module, name))
        if fn is not None:
            return _Callable(fn, f"{module}.{name}")
        return super().find_class(module, name)

    def persistent_load(self, pid):
        # ('storage', storage type, key, location, numel, view metadata or None)
        if not (isinstance(pid, tuple) and len(pid) == 6 and pid[0] in ("storage", b"storage")
                and isinstance(pid[1], _StorageType) and isinstance(pid[2], (str, bytes))
                and isinstance(pid[4], int) and pid[4] >= 0):
            raise UnsafePickleError(f"unexpected persistent id {pid!r:.200}")
        _, stype, key, _location, numel, view = pid
        key = key.decode("ascii", "replace") if isinstance(key, bytes) else key
        if isinstance(stype.dtype, str):
            raise UnsafePickleError(f"storage type {stype} is not read from legacy files")
        if key not in self.storages:
            self.storages[key] = _LegacyStorage(key, np.dtype(stype.dtype), numel)
        if view is not None:
            raise UnsafePickleError("storage views (torch < 0.4 shared storages) are not read")
        return self.storages[key]


class _PlainUnpickler(_RestrictedUnpickler):
    """For the small pickles around the state dict: no globals, no persistent ids at all."""

    def __init__(self, file):
        super().__init__(file, None)

    def find_class(self, module, name):
        raise UnsafePickleError(f"refused global {module}.{name} in a torch file's header")

    def persistent_load(self, pid):
        raise UnsafePickleError("unexpected persistent id in a torch file's header")


def is_legacy(path):
    """Does the file start like a legacy torch file (a pickle, not a zip)?"""
    with open(path, "rb") as f:
        head = f.read(2)
    return len(head) == 2 and head[0] == 0x80 and 2 <= head[1] <= 5


def _resolve(obj):
    if isinstance(obj, _LazyTensor):
        flat, size, stride = obj.storage.array, obj.size, obj.stride
        last = obj.offset + sum((n - 1) * s for n, s in zip(size, stride)) if all(size) else -1
        if min(size + stride, default=0) < 0 or obj.offset < 0 or last >= flat.size:
            raise UnsafePickleError(f"tensor {size} stride {stride} offset {obj.offset} reaches "
                                    f"past its storage of {flat.size} elements")
        if not all(size):
            return np.zeros(size, flat.dtype)
        view = np.lib.stride_tricks.as_strided(flat[obj.offset:], size,
                                               tuple(s * flat.itemsize for s in stride))
        return np.array(view)
    if isinstance(obj, dict):
        out = type(obj)() if isinstance(obj, OrderedDict) else {}
        for k, v in obj.items():
            out[k] = _resolve(v)
        return out
    if isinstance(obj, (list, tuple)):
        return type(obj)(_resolve(v) for v in obj)
    return obj


def load_legacy_state_dict(path):
    """An OrderedDict name -> numpy array from a legacy (pre-1.6, non-zip) torch.save file."""
    path = os.fspath(path)
    with open(path, "rb") as f:
        try:
            magic = _PlainUnpickler(f).load()
            if magic != MAGIC:
                raise TorchFileError(f"{path}: not a torch file (wrong magic number)")
            protocol = _PlainUnpickler(f).load()
            if protocol != PROTOCOL:
                raise TorchFileError(f"{path}: torch legacy protocol {protocol!r}, expected "
                                     f"{PROTOCOL}")
            info = _PlainUnpickler(f).load()
            if not isinstance(info, dict):
                raise TorchFileError(f"{path}: malformed header (system info)")
            order = "<" if info.get("little_endian", True) else ">"
            unpickler = _LegacyUnpickler(f)
            obj = unpickler.load()
            keys = _PlainUnpickler(f).load()
        except (UnsafePickleError, TorchFileError):
            raise
        except (pickle.UnpicklingError, EOFError, ValueError, TypeError, IndexError,
                KeyError, AttributeError) as e:
            raise TorchFileError(f"{path}: malformed or truncated torch file "
                                 f"({type(e).__name__}: {e})") from None
        if not isinstance(keys, list) or set(keys) != set(unpickler.storages):
            raise TorchFileError(f"{path}: the storage list does not match the tensors' "
                                 f"storages")
        for key in keys:
            st = unpickler.storages[key]
            head = f.read(8)
            if len(head) < 8:
                raise TorchFileError(f"{path}: truncated: storage {key!r} is missing")
            numel = int(np.frombuffer(head, order + "i8")[0])
            if numel != st.numel:
                raise TorchFileError(f"{path}: storage {key!r} says {numel} elements, the "
                                     f"pickle {st.numel}")
            dt = st.dtype.newbyteorder(order)
            raw = f.read(numel * dt.itemsize)
            if len(raw) < numel * dt.itemsize:
                raise TorchFileError(f"{path}: truncated inside storage {key!r} (byte "
                                     f"{f.tell()})")
            st.array = np.frombuffer(raw, dt).astype(dt.newbyteorder("="))
    try:
        obj = _resolve(obj)
    except UnsafePickleError as e:
        raise UnsafePickleError(f"{path}: {e}") from None
    _check_tree(obj)
    if not isinstance(obj, dict):
        raise TorchFileError(f"{path}: holds a {type(obj).__name__}, not a state dict")
    return OrderedDict(obj)


def fcn_state_dict(state_dict):
    """pytorch-fcn's names -> minifcn's: its FCN32s/16s/8s modules are named as the
    reference's Caffe layers (conv1_1, ..., score_fr, score_pool4, upscore2, upscore8), so their
    keys are ours; a VGG16 (vgg16_from_caffe.pth, torchvision's module layout but Caffe's
    weights: BGR 0-255 inputs, no folding needed) maps features.N / classifier.N onto
    conv{b}_{i} / fc6 / fc7 / fc8; a DataParallel "module." prefix is dropped."""
    sd = OrderedDict((k[7:] if k.startswith("module.") else k, v) for k, v in state_dict.items())
    if any(k.startswith("features.") for k in sd):
        names = torchvision_vgg16_names()
        return OrderedDict((names.get(k, k), v) for k, v in sd.items())
    return sd
