"""The softmax cross-entropy loss on the CPU, with its gradient in the same pass.
Twin: kernels/reference.py, section "loss".
"""
from __future__ import annotations

import numpy as np
from numba import njit, prange

@njit(parallel=True, cache=True)
def _softmax_ce(scores, labels, ignore_label, weights, d, row_loss, row_weight):
    """Per pixel: stable log-softmax, the weighted loss of its label, d = w * (p - onehot).
    One (n, h) row of pixels at a time, channel by channel along contiguous rows (a pixel's
    channels are a plane apart, so a pixel-at-a-time loop touches C cache lines per pixel);
    exp is taken once per score and kept in d. Each row sums its own loss and weight; the
    caller adds the rows."""
    N, C, H, W = scores.shape
    for t in prange(N * H):
        n, h = t // H, t % H
        m = np.empty(W, dtype=scores.dtype)
        z = np.zeros(W, dtype=np.float64)
        scale = np.empty(W, dtype=scores.dtype)
        m[:] = scores[n, 0, h, :]
        for c in range(1, C):
            sr = scores[n, c, h]
            for w in range(W):
                m[w] = max(m[w], sr[w])
        for c in range(C):
            sr, dr = scores[n, c, h], d[n, c, h]
            for w in range(W):
                e = np.exp(sr[w] - m[w])
                dr[w] = e
                z[w] += e
        loss, wsum = 0.0, 0.0
        for w in range(W):
            lab = labels[n, h, w]
            if lab == ignore_label:
                scale[w] = 0
                continue
            wt = weights[lab]
            loss += wt * (np.log(z[w]) - (scores[n, lab, h, w] - m[w]))
            wsum += wt
            scale[w] = wt / z[w]
        for c in range(C):
            dr = d[n, c, h]
            for w in range(W):
                dr[w] *= scale[w]
        for w in range(W):
            lab = labels[n, h, w]
            if lab != ignore_label:
                d[n, lab, h, w] -= weights[lab]
        row_loss[t], row_weight[t] = loss, wsum


def softmax_cross_entropy(scores, labels, ignore_label, normalize, class_weights):
    N, C, H, W = scores.shape
    weights = (np.ones(C) if class_weights is None
               else np.asarray(class_weights, dtype=np.float64))
    d = np.empty_like(scores)
    row_loss, row_weight = np.empty(N * H), np.empty(N * H)
    _softmax_ce(np.ascontiguousarray(scores), labels, ignore_label, weights, d, row_loss,
                row_weight)
    norm = {"valid": row_weight.sum(), "batch": N, "none": 1.0}[normalize]
    norm = float(norm) if norm > 0 else 1.0
    d *= d.dtype.type(1.0 / norm)
    return float(row_loss.sum() / norm), d
