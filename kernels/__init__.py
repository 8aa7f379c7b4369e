"""The dispatch point: one table maps (op, device) to the function that runs it.

Devices:
  "numpy"  naive, readable NumPy references (kernels/reference.py): the version to read first.
  "cpu"    Numba kernels (the package kernels/cpu/): @njit(parallel=True) loops, GEMM
           through BLAS. Any op it does not define falls back to the reference (as Caffe's
           GPU path defaults to its CPU one) -- e.g. crop and eltwise sums are plain slicing
           either way.
  "cuda"   Numba CUDA kernels (the package kernels/cuda/), loaded only when asked for.

Each fast package holds one concept a file (conv.py, pool.py, pointwise.py, loss.py, ...), and
each file names its twin section of reference.py, so the three can be read side by side.

Besides the ops of the paper's layers, the table holds the few array chores that let a Net keep
its arrays where its kernels run: "asarray" (an array as this device holds it: a host array on
numpy/cpu, a device array on cuda; no copy when it already lives there), "to_host" (a NumPy
array, copied back from the device if need be), "zeros_like", "add" (a + b, a new array),
"accumulate" (dst += src in place), "argmax" over the class axis and "confusion_update". On the
host devices they are the one-line NumPy expressions they replace, so a CPU net pays nothing.

Layers and functional ops never test the device themselves: they call ``get(op, device)``.
The default device is held in a context variable, so ``with minifcn.device("numpy"):`` is
local to the current thread / task.
"""
from __future__ import annotations

import contextlib
import contextvars
import importlib

DEVICES = ("numpy", "cpu", "cuda")

OPS = (
    "conv2d", "conv2d_backward", "conv_transpose2d", "conv_transpose2d_backward",
    "max_pool2d", "max_pool2d_backward", "avg_pool2d", "avg_pool2d_backward",
    "relu", "relu_backward", "relu_bits", "relu_backward_bits", "dropout", "dropout_backward",
    "crop", "crop_backward", "eltwise_sum", "scale", "concat", "concat_backward",
    "lrn", "lrn_backward", "softmax_cross_entropy", "sgd_update", "adam_update",
    # where arrays live, and the little array arithmetic a Net and a solver do between ops
    "asarray", "to_host", "zeros_like", "add", "accumulate",
    # scoring: class maps and the confusion matrix, on the device that made the scores
    "argmax", "confusion_update",
)

# Which module (a package for cpu and cuda) implements each device, and which device it
# falls back to for missing ops.
_BACKENDS = {"numpy": ("reference", None), "cpu": ("cpu", "numpy"), "cuda": ("cuda", None)}

TABLE: dict[tuple[str, str], object] = {}   # (op, device) -> callable, filled on first use
_current = contextvars.ContextVar("minifcn_device", default="cpu")


class DeviceUnavailable(RuntimeError):
    """The requested device cannot run here (e.g. cuda without a GPU or the simulator)."""


def check_device(device: str) -> str:
    if device not in DEVICES:
        raise ValueError(f"unknown device {device!r}; choose one of {', '.join(DEVICES)}")
    return device


def _load(device: str) -> None:
    module_name, fallback = _BACKENDS[device]
    try:
        module = importlib.import_module(f"{__name__}.{module_name}")
    except ImportError as e:
        raise DeviceUnavailable(f"device {device!r} is not available: {e}") from None
    for op in OPS:
        fn = getattr(module, op, None)
        if fn is None and fallback is not None:
            fn = get(op, fallback)
        if fn is not None:
            TABLE[(op, device)] = fn


def get(op: str, device: str | None = None):
    """The function that runs `op` on `device` (None: the current default device)."""
    device = device or _current.get()
    key = (op, device)
    fn = TABLE.get(key)
    if fn is None:
        if op not in OPS:
            raise KeyError(f"unknown op {op!r}")
        check_device(device)
        _load(device)
        fn = TABLE.get(key)
        if fn is None:
            raise DeviceUnavailable(f"op {op!r} has no kernel on device {device!r}")
    return fn


def get_device() -> str:
    """The current default device."""
    return _current.get()


def set_device(device: str) -> None:
    """Make `device` the default for every op and layer that is not told otherwise."""
    _current.set(check_device(device))


@contextlib.contextmanager
def device(name: str):
    """``with device("numpy"): ...`` runs the block on that device, then restores the old one."""
    token = _current.set(check_device(name))
    try:
        yield name
    finally:
        _current.reset(token)
