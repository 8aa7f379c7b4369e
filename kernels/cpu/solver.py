"""The solver steps on the CPU: SGD with momentum and Adam, in place, one pass over each
parameter. Twin: kernels/reference.py, section "solver" (which they fall back to for arrays
they cannot view flat).
"""
from __future__ import annotations

import numpy as np
from numba import njit, prange

# In place, one pass over each parameter. The reference's NumPy expressions make two
# temporaries the size of the parameter: for FCN-8s's fc6 (411 MB) that was the peak memory of
# a whole training step at 500x500 (+400 MB) and 30% of the update's time. The arithmetic is
# the reference's, in the same order and the array's precision.
@njit(parallel=True, cache=True)
def _sgd(p, g, buf, lr, momentum, wd):
    t = p.dtype.type
    lr, momentum, wd = t(lr), t(momentum), t(wd)
    for i in prange(p.size):
        b = buf[i] * momentum
        b += lr * (g[i] + wd * p[i])
        buf[i] = b
        p[i] -= b


@njit(parallel=True, cache=True)
def _adam(p, g, m, v, lr, beta1, beta2, eps, wd, c1, c2):
    t = p.dtype.type
    lr, beta1, beta2, eps, wd, c1, c2 = t(lr), t(beta1), t(beta2), t(eps), t(wd), t(c1), t(c2)
    one = t(1)
    for i in prange(p.size):
        gi = g[i] + wd * p[i]
        mi = m[i] * beta1 + (one - beta1) * gi
        vi = v[i] * beta2 + (one - beta2) * gi * gi
        m[i], v[i] = mi, vi
        p[i] -= lr * (mi / c1) / (np.sqrt(vi / c2) + eps)


def _flat_views(*arrays):
    """1-D views of C-contiguous arrays of one dtype (None if any is not: the reference then
    updates it)."""
    if not all(isinstance(a, np.ndarray) and a.flags.c_contiguous and a.dtype == arrays[0].dtype
               for a in arrays):
        return None
    return [a.reshape(-1) for a in arrays]


def sgd_update(param, grad, buf, lr, momentum, weight_decay):
    """Caffe's SGD step, in place: buf = momentum*buf + lr*(grad + weight_decay*param);
    param -= buf."""
    flat = _flat_views(param, grad, buf)
    if flat is None:
        from ..reference import sgd_update as ref
        return ref(param, grad, buf, lr, momentum, weight_decay)
    _sgd(*flat, float(lr), float(momentum), float(weight_decay))


def adam_update(param, grad, m, v, lr, beta1, beta2, eps, weight_decay, t):
    """Adam step t (1-based), in place (as reference.adam_update)."""
    flat = _flat_views(param, grad, m, v)
    if flat is None:
        from ..reference import adam_update as ref
        return ref(param, grad, m, v, lr, beta1, beta2, eps, weight_decay, t)
    _adam(*flat, float(lr), float(beta1), float(beta2), float(eps), float(weight_decay),
          1.0 - beta1 ** t, 1.0 - beta2 ** t)
