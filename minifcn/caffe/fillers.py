"""Caffe's weight fillers (FillerParameter), as the prototxt names them, and the one weight
layout minifcn stores differently from Caffe (a per-channel Deconvolution).

    constant (value), gaussian (mean, std), uniform (min, max), xavier and msra (scaled by
    fan_in, fan_out or their average: variance_norm), bilinear (Caffe's BilinearFiller)

fan_in = count / shape[0] and fan_out = count / shape[1] on Caffe's blob shape, as Caffe's
filler.hpp computes them. A filler the file leaves out is constant 0, Caffe's default.
"""
from __future__ import annotations

import numpy as np

from .text_format import PrototxtError


def _caffe_bilinear(shape):
    """Caffe's BilinearFiller: the same tent in every (c_out, c_in) pair of a square kernel."""
    k = shape[-1]
    f = -(-k // 2)
    c = (2 * f - 1 - f % 2) / (2.0 * f)
    x = np.arange(k)
    tent = 1 - np.abs(x / f - c)
    return np.broadcast_to(np.outer(tent, tent), shape)


def fill(shape, filler, rng, dtype, where, default="constant", value=0.0):
    """An array of `shape` as a Caffe FillerParameter says (fan_in = count / shape[0],
    fan_out = count / shape[1], on Caffe's blob shape)."""
    typ = filler.get("type", "constant") if filler is not None else default
    count = int(np.prod(shape))
    fan_in, fan_out = count / shape[0], count / (shape[1] if len(shape) > 1 else 1)
    if filler is not None:
        norm = filler.get("variance_norm", "FAN_IN")
        n = {"FAN_IN": fan_in, "FAN_OUT": fan_out, "AVERAGE": (fan_in + fan_out) / 2}[norm]
    if typ == "constant":
        v = filler.get("value", 0.0) if filler is not None else value
        return np.zeros(shape, dtype) if v == 0 else np.full(shape, v, dtype)
    if typ == "gaussian":
        if filler.get("sparse", -1) != -1:
            raise PrototxtError(f"{where}: a sparse gaussian filler is not supported")
        out = filler.get("mean", 0.0) + filler.get("std", 1.0) * rng.standard_normal(shape)
    elif typ == "uniform":
        out = rng.uniform(filler.get("min", 0.0), filler.get("max", 1.0), shape)
    elif typ == "xavier":
        out = rng.uniform(-np.sqrt(3 / n), np.sqrt(3 / n), shape)
    elif typ == "msra":
        out = rng.standard_normal(shape) * np.sqrt(2 / n)
    elif typ == "bilinear":
        if len(shape) != 4 or shape[2] != shape[3]:
            raise PrototxtError(f"{where}: the bilinear filler needs a square 2-D kernel")
        out = _caffe_bilinear(shape)
    else:
        raise PrototxtError(f"{where}: filler type {typ!r} is not supported (constant, "
                            f"gaussian, uniform, xavier, msra, bilinear)")
    # fields another filler type would use (a gaussian's std on a constant) are ignored,
    # as Caffe ignores them
    return np.asarray(out, dtype)


def expand_groups(w, group):
    """A per-channel (group = C) deconvolution weight (C, 1, k, k) as minifcn's full
    (C, C, k, k): each channel's kernel on the diagonal, zero across channels."""
    c = w.shape[0]
    full = np.zeros((c, c) + w.shape[2:], w.dtype)
    full[range(c), range(c)] = w[:, 0]
    return full
