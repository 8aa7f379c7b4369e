"""A Caffe solver.prototxt, and the reference's solve.py recipe on top of it.

    spec = read_solver("voc-fcn32s/solver.prototxt")       # a SolverSpec
    solver = make_solver(net, spec)                          # a minifcn.train SGD / Adam
    surgery(net, base=[("vgg16fc.caffemodel", "")])          # what solve.py does before step()

Read: base_lr, lr_policy (fixed, step, multistep, poly, inv, exp) with gamma, power,
stepsize / stepvalue, momentum (momentum2, delta for Adam), weight_decay (L2), iter_size,
max_iter, test_iter / test_interval, display, average_loss, snapshot / snapshot_prefix, the
solver type (SGD or Adam; the old solver_type enum too), train_net / test_net / net and
random_seed. Fields that only steer Caffe's own process (solver_mode, device_id,
snapshot_format, debug_info, test_initialization, ...) are read and have no effect here; any
setting minifcn cannot honour (another solver type, L1 regularization, gradient clipping,
nets given inline) is refused by name and line.

The reference trains every FCN with solve.py: build the solver's train net, copy weights from
a base net (``copy_from`` by layer name, or ``surgery.transplant``, which also fills a
convolutionalized fc6 from a classifier's, and a suffix for the two trunks of NYUD's late
fusion), set every layer whose name contains "up" to bilinear interpolation
(``surgery.interp``), and for NYUD's colour+depth net fill the 4-channel conv1_1_bgrd from the
colour conv1_1 (depth gets the mean over colours). ``surgery`` does those steps.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field

import numpy as np

from .. import layers as L
from .text_format import PrototxtError, parse_file

__all__ = ["SolverSpec", "read_solver", "make_solver", "surgery", "interp"]

POLICIES = ("fixed", "step", "multistep", "poly", "inv", "exp")
_NO_EFFECT = ("solver_mode", "device_id", "snapshot_format", "snapshot_diff", "debug_info",
              "test_initialization", "test_compute_loss", "snapshot_after_train",
              "layer_wise_reduce", "average_loss", "rms_decay", "train_state", "test_state")


@dataclass
class SolverSpec:
    path: str
    base_lr: float
    lr_policy: str = "fixed"
    gamma: float | None = None
    power: float | None = None
    stepsize: int | None = None
    stepvalue: list = field(default_factory=list)
    momentum: float = 0.0
    momentum2: float = 0.999
    delta: float = 1e-8
    weight_decay: float = 0.0
    iter_size: int = 1
    max_iter: int | None = None
    test_iter: list = field(default_factory=list)
    test_interval: int = 0
    display: int = 0
    average_loss: int = 1
    snapshot: int = 0
    snapshot_prefix: str | None = None
    type: str = "SGD"
    train_net: str | None = None          # resolved against the solver's folder
    test_nets: list = field(default_factory=list)
    random_seed: int = -1

    def lr(self, it):
        """The learning rate at iteration `it`, Caffe's SGDSolver::GetLearningRate."""
        p, base = self.lr_policy, self.base_lr
        if p == "fixed":
            return base
        if p == "step":
            return base * self.gamma ** (it // self.stepsize)
        if p == "multistep":
            return base * self.gamma ** sum(1 for v in self.stepvalue if it >= v)
        if p == "exp":
            return base * self.gamma ** it
        if p == "inv":
            return base * (1 + self.gamma * it) ** (-self.power)
        return base * (1 - it / self.max_iter) ** self.power          # poly


def read_solver(path):
    """A SolverSpec from a solver.prototxt; PrototxtError naming the line of any problem."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"solver {path} does not exist")
    msg = parse_file(path, "SolverParameter")
    where = msg.where
    for name in ("net_param", "train_net_param", "test_net_param"):
        if msg.has(name):
            raise PrototxtError(f"{where(name)}: {name} (a net inline in the solver) is not "
                                f"supported: give train_net / net as a file")
    if msg.get("regularization_type", "L2") != "L2":
        raise PrototxtError(f"{where('regularization_type')}: only L2 weight decay is supported")
    if msg.get("clip_gradients", -1) >= 0:
        raise PrototxtError(f"{where('clip_gradients')}: gradient clipping is not supported")
    typ = msg.get("type")
    legacy = msg.get("solver_type")
    if typ is None:
        typ = {"SGD": "SGD", "ADAM": "Adam"}.get(legacy or "SGD", legacy)
    if typ not in ("SGD", "Adam"):
        raise PrototxtError(f"{where('type' if msg.has('type') else 'solver_type')}: solver "
                            f"type {typ} is not supported (SGD, Adam)")
    if not msg.has("base_lr"):
        raise PrototxtError(f"{path}: base_lr is required")
    policy = msg.get("lr_policy", "fixed")
    if policy not in POLICIES:
        raise PrototxtError(f"{where('lr_policy')}: lr_policy {policy!r} is not supported "
                            f"({', '.join(POLICIES)})")
    folder = os.path.dirname(os.path.abspath(path))
    rel = lambda p: p if p is None or os.path.isabs(p) else os.path.join(folder, p)  # noqa: E731
    train = msg.get("train_net") or msg.get("net")
    tests = msg.all("test_net") or ([msg.get("net")] if msg.has("net") else [])
    spec = SolverSpec(
        path=str(path), base_lr=float(msg.get("base_lr")), lr_policy=policy,
        gamma=msg.get("gamma"), power=msg.get("power"), stepsize=msg.get("stepsize"),
        stepvalue=list(msg.all("stepvalue")), momentum=float(msg.get("momentum", 0.0)),
        momentum2=float(msg.get("momentum2", 0.999)), delta=float(msg.get("delta", 1e-8)),
        weight_decay=float(msg.get("weight_decay", 0.0)), iter_size=int(msg.get("iter_size", 1)),
        max_iter=msg.get("max_iter"), test_iter=list(msg.all("test_iter")),
        test_interval=int(msg.get("test_interval", 0)), display=int(msg.get("display", 0)),
        average_loss=int(msg.get("average_loss", 1)), snapshot=int(msg.get("snapshot", 0)),
        snapshot_prefix=msg.get("snapshot_prefix"), type=typ, train_net=rel(train),
        test_nets=[rel(t) for t in tests], random_seed=int(msg.get("random_seed", -1)))
    need = {"step": ("gamma", "stepsize"), "multistep": ("gamma", "stepvalue"),
            "exp": ("gamma",), "inv": ("gamma", "power"), "poly": ("power", "max_iter")}
    for name in need.get(policy, ()):
        if getattr(spec, name) in (None, []):
            raise PrototxtError(f"{where('lr_policy')}: lr_policy {policy!r} needs {name}")
    if spec.iter_size < 1:
        raise PrototxtError(f"{where('iter_size')}: iter_size must be >= 1")
    for name in _NO_EFFECT + ("weights",):
        msg.all(name) if name in ("test_state", "weights") else msg.get(name)
    extra = msg.unread()
    if extra:
        raise PrototxtError(f"{where(extra[0])}: solver field {extra[0]!r} is not supported")
    return spec


def make_solver(net, spec):
    """minifcn.train's SGD or Adam for `net`, with the spec's rate, policy and decay."""
    from .. import train
    policy = dict(policy="fixed")
    solver = (train.SGD(net, spec.base_lr, momentum=spec.momentum,
                        weight_decay=spec.weight_decay, **policy) if spec.type == "SGD" else
              train.Adam(net, spec.base_lr, beta1=spec.momentum or 0.9, beta2=spec.momentum2,
                         eps=spec.delta, weight_decay=spec.weight_decay, **policy))
    solver.lr = lambda it=None: spec.lr(solver.iter if it is None else it)
    return solver


# ----------------------------------------------------------------------------- surgery
def interp(net, names=None):
    """surgery.interp: bilinear kernels on the diagonal of every Deconv whose name contains
    'up' (or of `names`); the other channel pairs are left as they are. Returns the names."""
    names = [n for n, lyr in net.layers.items() if "up" in n and isinstance(lyr, L.Deconv)] \
        if names is None else list(names)
    for n in names:
        w = np.array(net.params()[f"{n}.weight"], copy=True)
        m, k, h, wd = w.shape
        if (m != k and k != 1) or h != wd:
            raise ValueError(f"interp {n!r}: needs square kernels and as many inputs as outputs "
                             f"(or one output); weight {w.shape}")
        w[range(m), range(k)] = L.upsample_filt(h)
        net.set_param(f"{n}.weight", w)
    return names


def _color_depth(net, source):
    """nyud-fcn32s-color-d/solve.py: conv1_1_bgrd's colour channels from conv1_1, its depth
    channel the mean of conv1_1 over the colours, its bias conv1_1's."""
    w, b = source.get("conv1_1.weight"), source.get("conv1_1.bias")
    if w is None or "conv1_1_bgrd" not in net.layers:
        return False
    cur = net.params()["conv1_1_bgrd.weight"]
    if w.shape[1] != 3 or cur.shape[1] != 4 or w.shape[0] != cur.shape[0]:
        return False
    new = np.concatenate([w, w.mean(axis=1, keepdims=True)], axis=1)
    net.set_param("conv1_1_bgrd.weight", new)
    if b is not None and "conv1_1_bgrd.bias" in net.params():
        net.set_param("conv1_1_bgrd.bias", b)
    return True


def surgery(net, base=(), log=print):
    """solve.py before training: transplant each (weights file, suffix) of `base` into `net`
    (a .caffemodel, .npz or .pth: minifcn.weights.read_params), interpolate the upsamplers,
    and fill NYUD's conv1_1_bgrd. Returns the TransplantReports."""
    from ..weights import read_params, transplant
    reports = []
    for path, suffix in base:
        src = read_params(path)
        rename = {k: f"{k.rpartition('.')[0]}{suffix}.{k.rpartition('.')[2]}" for k in src}
        report = transplant(net, src, rename=rename if suffix else None)
        if _color_depth(net, src):
            report.copied.append("conv1_1_bgrd.weight (conv1_1 + the mean of its colours)")
        reports.append(report)
        log(f"transplanted {path}{f' (suffix {suffix!r})' if suffix else ''}: {report}")
    names = interp(net)
    if names:
        log(f"bilinear interpolation in {', '.join(names)}")
    return reports
