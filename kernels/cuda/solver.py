"""The solver steps on CUDA: SGD with momentum and Adam, in place, so a CUDA net's parameters
and their buffers never leave the device (a host array still works, through a round trip:
util.in_place). Twin: kernels/reference.py, section "solver"; the CPU's version:
cpu/solver.py.
"""
from __future__ import annotations

import math

import numpy as np

from .util import cuda, flat, in_place, launch, on_device


@cuda.jit
def _sgd_kernel(param, grad, v, lr, momentum, wd):
    for t in range(cuda.grid(1), param.size, cuda.gridsize(1)):
        vt = momentum * v[t] + lr * (grad[t] + wd * param[t])
        v[t] = vt
        param[t] -= vt


def sgd_update(param, grad, buf, lr, momentum, weight_decay):
    """Caffe's SGD step, in place (param, buf: arrays of one shape and dtype):
    buf = momentum * buf + lr * (grad + weight_decay * param);  param -= buf."""
    (grad,) = on_device(grad)
    T = np.dtype(param.dtype).type

    def step(p, b):
        _sgd_kernel[launch(p.size)](p, flat(grad), b, T(lr), T(momentum), T(weight_decay))
    in_place("sgd_update", (param, buf), step)


@cuda.jit
def _adam_kernel(param, grad, m, v, lr, beta1, beta2, eps, wd, c1, c2):
    """c1, c2: the bias corrections 1/(1 - beta^t). Every scalar arrives in param's dtype
    (1 - beta1 written here would be float64 arithmetic, hence beta1 = (beta1, 1 - beta1))."""
    for t in range(cuda.grid(1), param.size, cuda.gridsize(1)):
        g = grad[t] + wd * param[t]
        mt = beta1[0] * m[t] + beta1[1] * g
        vt = beta2[0] * v[t] + beta2[1] * g * g
        m[t] = mt
        v[t] = vt
        param[t] -= lr * (mt * c1) / (math.sqrt(vt * c2) + eps)


def adam_update(param, grad, m, v, lr, beta1, beta2, eps, weight_decay, t):
    """Adam step t (1-based), in place, L2 weight decay added to the gradient:
    m, v = running means of g and g^2; param -= lr * m_hat / (sqrt(v_hat) + eps). The bias
    corrections 1/(1 - beta^t) are computed once on the host."""
    (grad,) = on_device(grad)
    T = np.dtype(param.dtype).type
    c1, c2 = 1 / (1 - beta1 ** t), 1 / (1 - beta2 ** t)

    def step(p, mm, vv):
        _adam_kernel[launch(p.size)](p, flat(grad), mm, vv, T(lr), (T(beta1), T(1 - beta1)),
                                     (T(beta2), T(1 - beta2)), T(eps), T(weight_decay), T(c1),
                                     T(c2))
    in_place("adam_update", (param, m, v), step)
