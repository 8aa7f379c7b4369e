"""Where FCN-8s's activations go (VGG16, 500x500, batch 1, the cpu device), three views:
  live:    the arrays a training forward leaves (net.blobs and what layers saved, each array
           counted once), keep-all (Net.forward's default) against keep=False (the Trainer's);
  peak:    resident memory over the imports after each layer of a training step (train_step:
           keep=False, gradients applied during backward), its largest five, and before it;
  predict: Model.predict's resident memory held between two images and its peak.
    python benchmarks/activations.py            # Linux (/proc/self/status), about 1 minute
Each view runs in a fresh process (what one leaves in the allocator would move the next's
figures). Figures: benchmarks/RESULTS.md, "Issue 13, the activations"."""
import subprocess
import sys

import numpy as np

from minifcn import functional as F
from minifcn.bench.memory import _reset_peak, _step_data, _vm
from minifcn.bench.nets import build_fcn, train_step
from minifcn.inference import Model
from minifcn.train import SGD

MB = 2 ** 20
F.relu(np.ones(4, np.float32), device="cpu")            # libraries and threads up
BASE = _vm("VmRSS")
CFG = dict(backbone="vgg16", size=500, classes=21)


def over_base(field):
    return (_vm(field) - BASE) / MB


def live_mb(net):
    """MB of distinct arrays that net.blobs and the layers' saved state hold."""
    seen = {}
    held = list(net.blobs.values()) + [getattr(layer, k, None) for layer in net.layers.values()
                                       for k in layer.saved]
    for a in held:
        while isinstance(a, np.ndarray) and isinstance(a.base, np.ndarray):
            a = a.base                                # a view holds its base
        if isinstance(a, np.ndarray):
            seen[id(a)] = a.nbytes
    return sum(seen.values()) / MB


def live():
    net = build_fcn(dict(CFG, sizes=[500])).to("cpu")
    x, lab = _step_data(CFG)
    net.train()
    for keep in (True, False):
        net.forward(data=x, label=lab, keep=keep)
        print(f"live after a training forward, keep={keep}: {live_mb(net):.0f} MB")


def peak():
    net = build_fcn(dict(CFG, sizes=[500])).to("cpu")
    x, lab = _step_data(CFG)
    solver = SGD(net, lr=1e-10, momentum=0.99)
    train_step(net, solver, x, lab)                          # the solver's buffers made
    marks = []
    for name, layer in net.layers.items():
        for kind in ("forward", "backward"):
            def wrapped(*a, _run=getattr(layer, kind), _where=f"{name} {kind}", **k):
                _reset_peak()
                out = _run(*a, **k)
                marks.append((over_base("VmHWM"), _where))
                return out
            setattr(layer, kind, wrapped)
    print(f"resident over imports before a step: {over_base('VmRSS'):.0f} MB; the step's peaks:")
    train_step(net, solver, x, lab)
    for mb, where in sorted(marks, reverse=True)[:5]:
        print(f"  {mb:6.0f} MB  {where}")


def predict():
    net = build_fcn(dict(CFG, sizes=[500]), loss=False)
    model = Model(net, CFG["classes"])
    img = (np.random.default_rng(0).random((500, 500, 3)) * 255).astype(np.uint8)
    model.predict(img)
    held = over_base("VmRSS")
    _reset_peak()
    model.predict(img)
    print(f"predict, over imports: held between images {held:.0f} MB, "
          f"peak {over_base('VmHWM'):.0f} MB")


VIEWS = {"live": live, "peak": peak, "predict": predict}

if __name__ == "__main__":
    if len(sys.argv) > 2 or len(sys.argv) == 2 and sys.argv[1] not in VIEWS:
        sys.exit(f"usage: python benchmarks/activations.py [{'|'.join(VIEWS)}]")
    if len(sys.argv) == 2:
        VIEWS[sys.argv[1]]()
    else:
        for view in VIEWS:
            subprocess.run([sys.executable, __file__, view], check=True)
