"""Scoring on CUDA: the class map (argmax over the class axis) and the confusion histogram, on
the device that made the scores. Twin: kernels/reference.py, section "score" (the CPU uses the
reference's).
"""
from __future__ import annotations

import numpy as np

from .util import cuda, empty, flat, is_device_array, launch, on_device, to_device


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
    (scores,) = on_device(scores)
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
    gt, pred = on_device(gt, pred)
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
