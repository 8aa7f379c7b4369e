"""Output sizes and pooling windows, shared by every device.

Conventions follow Caffe, as the reference FCN nets need:
  conv:    out = floor((H + 2p - k_e) / s) + 1,   k_e = d(k - 1) + 1
  deconv:  out = s(H - 1) + k - 2p
  pool:    out = ceil((H + 2p - k) / s) + 1 (ceil_mode; floor otherwise), minus one if the last
           window would start inside the bottom/right padding (so it always covers real input).
           Caffe applies that correction only when p > 0, and with p = 0 and k < s it can emit
           an empty last window; we apply it always, as PyTorch does. The two agree whenever
           Caffe's windows are all non-empty (every net in the paper).
"""
from __future__ import annotations


def pair(v, name="value"):
    """An int or an (h, w) pair -> (h, w) tuple of ints."""
    if isinstance(v, (tuple, list)):
        if len(v) != 2:
            raise ValueError(f"{name} must be an int or an (h, w) pair, got {v!r}")
        h, w = v
    else:
        h = w = v
    try:
        h, w = int(h), int(w)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be an int or an (h, w) pair, got {v!r}") from None
    return h, w


def conv_out(size, kernel, stride, pad, dilation=1):
    return (size + 2 * pad - (dilation * (kernel - 1) + 1)) // stride + 1


def deconv_out(size, kernel, stride, pad):
    return stride * (size - 1) + kernel - 2 * pad


def pool_out(size, kernel, stride, pad, ceil_mode=True):
    span = size + 2 * pad - kernel
    out = (-(-span // stride) if ceil_mode else span // stride) + 1
    if (out - 1) * stride >= size + pad:
        out -= 1          # the last window must start inside the input or its top/left pad
    return out


def row_tiles(N, H, rows):
    """(n0, n1, r0, r1) tiles over N images of H rows each, `rows` rows to a tile (what a
    scratch budget allows): bands of rows of one image when rows < H, else whole images, as
    many to a tile as fit. The im2col and Winograd drivers walk their work this way."""
    rows = max(1, rows)
    if rows >= H:                        # whole images, several per tile
        per = max(1, rows // max(1, H))
        for n0 in range(0, N, per):
            yield n0, min(N, n0 + per), 0, H
    else:                                # one image, a band of rows at a time
        for n in range(N):
            for r0 in range(0, H, rows):
                yield n, n + 1, r0, min(H, r0 + rows)
