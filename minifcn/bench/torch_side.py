"""PyTorch beside us: the same nets in PyTorch ops, with our weights.

TorchNet walks a minifcn Net and runs each layer's PyTorch twin (the layer's own
torch_twin(), in minifcn/layers.py): the reference a PyTorch user would write. mirror_check
says how far its scores are from ours, so that the timings are known to compare the same
computation. PyTorch is imported only here and only in PyTorch's own process (workers.py)."""
from __future__ import annotations

import importlib.util
import os
import time

import numpy as np


def torch_available():
    return importlib.util.find_spec("torch") is not None


def import_torch():
    import torch
    return torch


def torch_info():
    """PyTorch's version, threads, the BLAS it was built with and the OpenMP settings its
    process runs with (for the report's machine)."""
    torch = import_torch()
    cfg = torch.__config__.show()
    blas = "MKL" if "MKL" in cfg else ("OpenBLAS" if "OpenBLAS" in cfg else "?")
    if "oneDNN" in cfg or "MKLDNN" in cfg:
        blas += " + oneDNN"
    env = {k: os.environ[k] for k in ("OMP_NUM_THREADS", "OMP_WAIT_POLICY", "GOMP_SPINCOUNT")
           if k in os.environ}
    return {"version": torch.__version__, "threads": torch.get_num_threads(), "blas": blas,
            "env": env}


class TorchNet:
    """The same DAG as a minifcn Net, run with PyTorch ops and the Net's own weights (copied).
    In-place ReLU where our net works in place, frozen parameters (lr_mult 0) without
    gradients, Caffe's ceil-mode pooling: each layer's torch_twin says how."""

    def __init__(self, torch, net):
        self.torch, self.net = torch, net
        self.params = {}               # {"layer.param": tensor}: what an optimizer updates
        self.layer_params = {}         # {layer: {param: tensor}}: the same tensors, per layer
        self.twins = {}
        for name, layer in net.layers.items():
            mine = self.layer_params[name] = {}
            for p, v in layer.params.items():
                t = torch.from_numpy(np.ascontiguousarray(v, dtype=np.float32))
                mine[p] = self.params[f"{name}.{p}"] = t.requires_grad_(bool(layer.trainable(p)))
            try:
                self.twins[name] = layer.torch_twin(torch)
            except NotImplementedError as e:
                raise NotImplementedError(f"layer {name!r}: {e}") from None
        self.timings = {}

    def forward(self, inputs, train=True, until=None, time_layers=False):
        """The net's outputs (or blob `until`) for inputs {blob: tensor}; with time_layers,
        each layer's seconds go to self.timings."""
        net = self.net
        blobs = dict(inputs)
        for name in net.layers:
            t0 = time.perf_counter() if time_layers else 0.0
            bottoms = net.bottoms[name]
            top = net.tops[name][0]
            y = self.twins[name]([blobs[b] for b in bottoms], self.layer_params[name], train,
                                 top in bottoms)
            blobs[top] = y
            if time_layers:
                self.timings[name] = time.perf_counter() - t0
            if until is not None and top == until:
                return y
        outs = list(net.outputs)
        return blobs[outs[0]] if len(outs) == 1 else {o: blobs[o] for o in outs}


def mirror_check(torch):
    """How far the PyTorch mirror's scores are from our net's (numpy reference device) on a
    small FCN-8s with random weights everywhere: the relative max difference. The timings
    compare the same computation only if this is tiny."""
    from .. import models
    net = models.fcn8s(5, loss=False, backbone="micro", score_init=0.1, seed=3).to("numpy")
    x = np.random.default_rng(1).standard_normal((2, 3, 40, 40)).astype(np.float32)
    ours = net.eval().forward(data=x)
    with torch.no_grad():
        theirs = TorchNet(torch, net).forward({"data": torch.from_numpy(x)}, train=False)
    return float(np.abs(theirs.numpy() - ours).max() / max(1e-12, np.abs(ours).max()))
