"""The softmax cross-entropy loss on CUDA: the loss reduced on the device, one number back.
Twin: kernels/reference.py, section "loss"; the CPU's version: cpu/loss.py.
"""
from __future__ import annotations

import math

import numpy as np

from .util import cuda, empty, flat, launch, on_device, sum_planes, to_device, to_host, typed


_NORM_MODES = {"valid": 0, "batch": 1, "none": 2}


@typed
def _softmax_pixel_kernel(T):
    @cuda.jit
    def kernel(scores, labels, ignore, cw, weighted, lse, stats):
        """One thread per pixel: lse = log sum_c exp(scores) (max-shifted, so exp never
        overflows), stats[0] = weight * (lse - scores[label]) (its loss), stats[1] = weight,
        stats[2] = 1 for a label outside [0, C) that is not ignore_label (reported, not
        read out of bounds)."""
        N, C, H, W = scores.shape
        HW = H * W
        for t in range(cuda.grid(1), N * HW, cuda.gridsize(1)):
            n = t // HW
            h = (t % HW) // W
            w = t % W
            m = scores[n, 0, h, w]
            for c in range(1, C):
                m = max(m, scores[n, c, h, w])
            se = T(0)
            for c in range(C):
                se += math.exp(scores[n, c, h, w] - m)
            lz = m + math.log(se)
            lse[t] = lz
            lab = labels[t]
            bad = lab != ignore and (lab < 0 or lab >= C)
            wt = T(0)
            loss = T(0)
            if lab != ignore and not bad:
                wt = cw[lab] if weighted else T(1)
                loss = wt * (lz - scores[n, lab, h, w])
            stats[0, 0, t] = loss
            stats[0, 1, t] = wt
            stats[0, 2, t] = T(1) if bad else T(0)
    return kernel


@typed
def _softmax_grad_kernel(T):
    @cuda.jit
    def kernel(scores, labels, lse, stats, sums, mode, d):
        """One thread per score: d = (softmax - [c == label]) * weight / norm, the normaliser
        read from the device-side sums, so nothing waits for the host in between."""
        N, C, H, W = scores.shape
        HW = H * W
        if mode == 0:
            norm = sums[1] if sums[1] > 0 else 1.0
        elif mode == 1:
            norm = float(N)
        else:
            norm = 1.0
        inv = T(1.0 / norm)
        for t in range(cuda.grid(1), scores.size, cuda.gridsize(1)):
            w = t % W
            h = (t // W) % H
            c = (t // HW) % C
            n = t // (C * HW)
            px = n * HW + h * W + w
            wt = stats[0, 1, px]
            g = T(0)
            if wt != 0:
                g = math.exp(scores[n, c, h, w] - lse[px])
                if c == labels[px]:
                    g -= T(1)
                g *= wt * inv
            d[n, c, h, w] = g
    return kernel


def softmax_cross_entropy(scores, labels, ignore_label, normalize, class_weights):
    """-> (loss: float, dscores (N, C, H, W)), as the reference: pixels labelled ignore_label
    count for nothing; normalize "valid" (by summed weight), "batch" (by N) or "none". The
    per-pixel terms are summed on the device (float64); a device-side label outside [0, C)
    that is not ignore_label raises ValueError after the pass."""
    scores, labels = on_device(scores, labels)
    N, C, H, W = scores.shape
    weighted = class_weights is not None
    if weighted:
        cw = to_device(to_host(class_weights).astype(scores.dtype))
    else:
        cw = empty((1,), scores.dtype)
    P = N * H * W
    lse = empty((P,), scores.dtype)
    stats = empty((1, 3, P), scores.dtype)
    _softmax_pixel_kernel(scores.dtype)[launch(P)](scores, flat(labels), int(ignore_label), cw,
                                                   weighted, lse, stats)
    sums = sum_planes(stats, empty((3,), np.float64))
    d = empty(scores.shape, scores.dtype)
    _softmax_grad_kernel(scores.dtype)[launch(scores.size)](scores, flat(labels), lse, stats, sums,
                                              _NORM_MODES[normalize], d)
    total, weight, bad = sums.copy_to_host()
    if bad:
        raise ValueError(f"softmax_cross_entropy: {int(bad)} labels lie outside [0, {C}) and "
                         f"are not ignore_label={ignore_label}")
    norm = {"valid": weight, "batch": N, "none": 1.0}[normalize]
    norm = float(norm) if norm > 0 else 1.0
    return float(total) / norm, d
