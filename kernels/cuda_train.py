"""Training and scoring on CUDA: the solver steps (SGD, Adam), gradient accumulation, the class
map (argmax) and the confusion histogram, so a CUDA net's parameters, gradients and
predictions never leave the device. Part of the
CUDA device: the dispatcher finds these through cuda.py.
"""
from __future__ import annotations

import math

import numpy as np

from .cuda_util import cuda, empty, flat, is_device_array, launch, to_device


def _dev(*arrays):
    return [to_device(a) for a in arrays]


# Solver steps update parameters and their buffers in place. On this device they are meant to
# be device arrays (nothing crosses the bus); a host array still works, through a round trip.
def _in_place(op, arrays, step):
    """Run step(*device_arrays), then write results back into any host arrays given."""
    devs = [to_device(a) for a in arrays]
    for a, d in zip(arrays, devs):
        if d is not a and is_device_array(a):
            raise ValueError(f"{op}: a strided device array cannot be updated in place")
    step(*[flat(d) for d in devs])
    for a, d in zip(arrays, devs):
        if d is not a:
            np.copyto(a, d.copy_to_host())


@cuda.jit
def _accumulate_kernel(dst, src):
    for t in range(cuda.grid(1), dst.size, cuda.gridsize(1)):
        dst[t] += src[t]


def accumulate(dst, src):
    """dst += src in place (gradients summed over iter_size passes); returns dst."""
    (src,) = _dev(src)
    if tuple(dst.shape) != tuple(src.shape):
        raise ValueError(f"accumulate: shapes {tuple(dst.shape)} and {tuple(src.shape)} differ")

    def step(d):
        _accumulate_kernel[launch(d.size)](d, flat(src))
    _in_place("accumulate", (dst,), step)
    return dst


@cuda.jit
def _sgd_kernel(param, grad, v, lr, momentum, wd):
    for t in range(cuda.grid(1), param.size, cuda.gridsize(1)):
        vt = momentum * v[t] + lr * (grad[t] + wd * param[t])
        v[t] = vt
        param[t] -= vt


def sgd_update(param, grad, buf, lr, momentum, weight_decay):
    """Caffe's SGD step, in place (param, buf: arrays of one shape and dtype):
    buf = momentum * buf + lr * (grad + weight_decay * param);  param -= buf."""
    (grad,) = _dev(grad)
    T = np.dtype(param.dtype).type

    def step(p, b):
        _sgd_kernel[launch(p.size)](p, flat(grad), b, T(lr), T(momentum), T(weight_decay))
    _in_place("sgd_update", (param, buf), step)


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
    (grad,) = _dev(grad)
    T = np.dtype(param.dtype).type
    c1, c2 = 1 / (1 - beta1 ** t), 1 / (1 - beta2 ** t)

    def step(p, mm, vv):
        _adam_kernel[launch(p.size)](p, flat(grad), mm, vv, T(lr), (T(beta1), T(1 - beta1)),
                                     (T(beta2), T(1 - beta2)), T(eps), T(weight_decay), T(c1),
                                     T(c2))
    _in_place("adam_update", (param, m, v), step)


@cuda.jit
def _argmax_kernel(scores, out):
    """One thread per pixel: the first class with the highest score (NumPy's tie rule)."""
    N, C, H, W = scores.shape
    HW = H * W
    for t in range(cuda.grid(1), N * HW, cuda.gridsize(1)):
        n = t // HW
        h = (t % HW) // W
        w = t % W
        best = scores[n, 0, h, w]
        k = 0
        for c in range(1, C):
            v = scores[n, c, h, w]
            if v > best:
                best = v
                k = c
        out[t] = k


def argmax(scores):
    """The class map (N, H, W) int64 of scores (N, C, H, W), on the device. (A NaN score is
    never the winner here, where NumPy would pick the first NaN.)"""
    (scores,) = _dev(scores)
    N, C, H, W = scores.shape
    out = empty((N, H, W), np.int64)
    if out.size:
        _argmax_kernel[launch(out.size)](scores, flat(out))
    return out


@cuda.jit
def _confusion_kernel(hist, gt, pred, n):
    """hist[gt, pred] += 1 with atomics (pixels of one class collide on one bin; fine for a
    once-per-batch score; a per-block shared-memory histogram would be the next step)."""
    for t in range(cuda.grid(1), gt.size, cuda.gridsize(1)):
        g, p = int(gt[t]), int(pred[t])
        if 0 <= g < n and 0 <= p < n:
            cuda.atomic.add(hist, (g, p), 1)


def confusion_update(hist, gt, pred, num_classes):
    """hist (n, n) int64 += the confusion counts of gt vs pred (any shapes of one size);
    pixels whose gt lies outside [0, n) (e.g. 255, void) are skipped. A device hist is updated
    in place; a host hist is updated through a round trip. Returns hist."""
    gt, pred = _dev(gt, pred)
    if gt.size != pred.size:
        raise ValueError(f"confusion_update: gt {tuple(gt.shape)} and pred {tuple(pred.shape)} "
                         "differ in size")
    n = int(num_classes)
    host = not is_device_array(hist)
    h = to_device(np.asarray(hist, dtype=np.int64)) if host else hist
    if tuple(h.shape) != (n, n) or h.dtype != np.int64:
        raise ValueError(f"confusion_update: hist must be ({n}, {n}) int64, got "
                         f"{tuple(h.shape)} {h.dtype}")
    _confusion_kernel[launch(gt.size)](h, flat(gt), flat(pred), n)
    if host:
        hist[...] = h.copy_to_host()
    return hist
