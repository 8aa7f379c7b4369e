"""Finite-difference gradient checks, in float64 with centred differences.

    numeric_grad(f, x)       df/dx element by element: (f(x + h e_i) - f(x - h e_i)) / 2h
    check_net(net, inputs)   compares a Net's backward with numeric gradients of its loss

For a net on a GPU (net.to("cuda")) the analytic gradients come from the GPU's backward and
the finite differences from a host copy of the same net (the "cpu" device by default): they
perturb parameters in place, one entry at a time, which a device array does not allow cheaply,
and they take thousands of forward passes.

Centred differences have O(h^2) error, so h = 1e-6 in float64 leaves ~1e-9 relative error
on smooth functions; the inputs must stay away from kinks (ReLU at 0, pooling ties), where
the two one-sided slopes differ and no check can agree.
"""
from __future__ import annotations

import numpy as np

from . import functional as F


def numeric_grad(f, x, h=1e-6, indices=None):
    """Gradient of the scalar f() with respect to array x (perturbed in place, restored).
    indices: flat indices to probe (all if None); the others are left 0."""
    g = np.zeros_like(x)
    flat, gflat = x.reshape(-1), g.reshape(-1)
    for i in range(flat.size) if indices is None else indices:
        old = flat[i]
        flat[i] = old + h
        fp = f()
        flat[i] = old - h
        fm = f()
        flat[i] = old
        gflat[i] = (fp - fm) / (2 * h)
    return g


def rel_error(a, b):
    """max |a - b| / max(|a|, |b|, tiny): a scale-free distance between two gradients."""
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    scale = max(np.abs(a).max(initial=0), np.abs(b).max(initial=0), 1e-12)
    return float(np.abs(a - b).max(initial=0) / scale)


def _loss_of(net, inputs, projections):
    """The net's scalar: its loss if it has one, else <output, projection> summed."""
    out = net.forward(**inputs)
    outs = out if isinstance(out, dict) else {net.outputs[0]: out}
    return sum(float(np.sum(outs[k] * projections[k])) if k in projections else float(outs[k])
               for k in outs)


def check_net(net, inputs, n_probe=20, seed=0, h=1e-6, numeric_device=None):
    """Compare net.backward() with numeric gradients for every parameter and float input.

    Probes up to n_probe random entries of each array. For outputs that are not losses a
    fixed random projection turns them into a scalar. Dropout must be off (net.eval()) or the
    function is random. The numeric gradients are taken on numeric_device (default: the net's
    own device when its parameters are NumPy arrays, else "cpu"); the net is moved there for
    them and back afterwards. Returns {name: relative error}."""
    rng = np.random.default_rng(seed)
    out = net.forward(**inputs)
    outs = out if isinstance(out, dict) else {net.outputs[0]: out}
    projections = {k: rng.standard_normal(tuple(v.shape)) for k, v in outs.items()
                   if np.ndim(v) > 0}
    net.forward(**inputs)
    dinputs = net.backward(grads=dict(projections))
    if not isinstance(dinputs, dict):
        dinputs = {net.inputs[0]: dinputs}
    analytic = dict(net.grads(host=True))
    for k, v in inputs.items():
        if np.issubdtype(np.asarray(v).dtype, np.floating) and dinputs.get(k) is not None:
            analytic[k] = F.to_host(dinputs[k], device=net.device)

    device = net.device
    on_host = all(isinstance(v, np.ndarray) for v in net.params().values())
    if numeric_device is None:
        numeric_device = device if on_host else "cpu"
    move = numeric_device != device or not on_host
    if move:
        net.to(numeric_device)
    try:
        targets = dict(net.params())              # host arrays now: perturbed in place
        for k in inputs:
            if k in analytic:
                targets[k] = inputs[k]
        errors = {}
        for name, arr in targets.items():
            if name in net.params():
                layer, _, p = name.rpartition(".")
                if not net.layers[layer].trainable(p):
                    continue
            idx = rng.choice(arr.size, size=min(n_probe, arr.size), replace=False)
            num = numeric_grad(lambda: _loss_of(net, inputs, projections), arr, h, idx)
            errors[name] = rel_error(analytic[name].reshape(-1)[idx], num.reshape(-1)[idx])
    finally:
        if move:
            net.to(device)
    return errors
