"""The GEMM machinery of the CPU convolutions: the tiling budget, the scratch slots, im2col /
col2im, the matrix views BLAS reads in place and the GEMM that writes straight into the output.
Twin: kernels/reference.py, section "conv" (there one small product per kernel tap; here one
product per tile of rows, the taps laid out as the rows of a column matrix).

Convolution is im2col + GEMM: im2col lays every receptive field out as a column, so the whole
layer becomes one matrix product that numpy hands to BLAS. The column matrix is built a tile of
output rows at a time (COL_BUDGET bytes, so that it is still in the cache when the GEMM reads
it); small images go the other way: several whole images share one tile, so a tiny net on a
batch does one GEMM per layer, not one per image. Scratch matrices are reused between calls
rather than allocated (a page fault per 4 KB). conv.py drives these loops; winograd.py shares
the scratch slots.
"""
from __future__ import annotations

import threading

import numba
import numpy as np
from numba import njit, prange, uint64

from ..geometry import row_tiles
from .threads import matmul


# ----------------------------------------------------------------------------- tiling budget
# Tiles of the im2col matrix: COL_BUDGET bytes keeps a tile in the L2/L3 cache between the
# im2col that writes it and the GEMM that reads it (measured on VGG16's conv1_2 at 224, 2
# cores: 4 MB tiles give the GEMM 150-190 GFLOP/s, the whole 115 MB matrix 130-150 plus the
# page faults of allocating it). A wide layer (fc6: K = 25088) would get a GEMM only a few
# columns wide, re-reading its 400 MB weight per tile, so a tile may grow to MIN_COLS columns
# as long as it stays under 16 x COL_BUDGET.
COL_BUDGET = 4 << 20
MIN_COLS = 1024


def _tiles(N, Ho, Wo, K, itemsize):
    """(n0, n1, r0, r1) tiles whose column matrix (K x (n1-n0)(r1-r0)Wo) fits the budget:
    a band of output rows of one image, or several whole images (small images: a tiny net's
    batch makes one GEMM per layer, not one per image)."""
    row_bytes = max(1, K * itemsize)
    cols = max(COL_BUDGET // row_bytes, min(MIN_COLS, 16 * COL_BUDGET // row_bytes), 1)
    return row_tiles(N, Ho, cols // max(1, Wo))


# ----------------------------------------------------------------------------- scratch slots
# Scratch matrices (im2col tiles, GEMM results) are kept between calls and reused: allocating
# a fresh 4-100 MB array per call costs a page fault per 4 KB page, which on VGG16's first
# layers took as long as the copy itself. One set per thread; nothing returned ever points
# into them. Three slots, shared by whatever runs one after the other (their memory counts in
# every later step's peak): "a" an input-side matrix (im2col columns, Winograd's V), "b" an
# output-side one (a GEMM result, Winograd's M or D), "c" a partial weight gradient.
_scratch = threading.local()


def _scratch_matrix(slot, rows, cols, dtype):
    bufs = _scratch.__dict__.setdefault("bufs", {})
    key = (slot, np.dtype(dtype).str)
    buf = bufs.get(key)
    if buf is None or buf.size < rows * cols:
        buf = bufs[key] = np.empty(rows * cols, dtype=dtype)
    return buf[:rows * cols].reshape(rows, cols)


# ----------------------------------------------------------------------------- im2col / col2im
# In the loops below indices are uint64 where they cannot be negative: Numba then skips its
# negative-index wraparound test, and the copy loops vectorise (2x faster im2col on 14x14).
def _im2col(x, n0, n1, c0, C, kh, kw, sh, sw, ph, pw, dh, dw, r0, r1, Wo, col):
    """col[(c*kh + i)*kw + j, ((n - n0)*R + oh - r0)*Wo + ow] = xpad[n, c0 + c, oh*sh + i*dh,
    ow*sw + j*dw] for images n0..n1 and output rows r0..r1 (R = r1 - r0); zero in the padding.
    A "same" convolution of stride 1 on a contiguous x takes _im2col_flat, when it has image
    channels enough to share among the threads (its tasks; conv1_1's 3 are not: 2x slower)."""
    N, Cx, H, W = x.shape
    if sh == sw == 1 and Wo == W and x.flags.c_contiguous and \
            (n1 - n0) * C >= 4 * numba.get_num_threads():
        _im2col_flat(x.reshape(N, Cx, H * W), W, n0, n1, c0, C, kh, kw, ph, pw, dh, dw, r0, r1,
                     col)
    else:
        _im2col_rows(x, n0, n1, c0, C, kh, kw, sh, sw, ph, pw, dh, dw, r0, r1, Wo, col)


@njit(parallel=True, cache=True)
def _im2col_rows(x, n0, n1, c0, C, kh, kw, sh, sw, ph, pw, dh, dw, r0, r1, Wo, col):
    """_im2col one output row at a time. With stride 1 each row of a column is a contiguous
    run of an input row."""
    H, W = x.shape[2], x.shape[3]
    K = C * kh * kw
    R = r1 - r0
    for t in prange(K * (n1 - n0)):
        k, nn = t % K, t // K
        c, i, j = k // (kh * kw), (k // kw) % kh, k % kw
        # output columns whose input column lies inside the image: ow in [lo, hi)
        off = j * dw - pw
        lo = min(max(0, (-off + sw - 1) // sw), Wo)
        hi = max(min(Wo, (W - 1 - off) // sw + 1), lo)
        crow = col[k]
        for oh in range(r0, r1):
            ih = oh * sh - ph + i * dh
            base = uint64((nn * R + oh - r0) * Wo)
            if ih < 0 or ih >= H:
                for ow in range(uint64(Wo)):
                    crow[base + ow] = 0
                continue
            xrow = x[n0 + nn, c0 + c, ih]
            for ow in range(uint64(lo)):
                crow[base + ow] = 0
            start = uint64(lo * sw + off)          # >= 0: the first column inside the image
            dst = base + uint64(lo)
            if sw == 1:
                for ow in range(uint64(hi - lo)):
                    crow[dst + ow] = xrow[start + ow]
            else:
                for ow in range(uint64(hi - lo)):
                    crow[dst + ow] = xrow[start + ow * uint64(sw)]
            for ow in range(uint64(hi), uint64(Wo)):
                crow[base + ow] = 0


@njit(parallel=True, cache=True)
def _im2col_flat(x, W, n0, n1, c0, C, kh, kw, ph, pw, dh, dw, r0, r1, col):
    """_im2col when the stride is 1 and Wo == W, on x as (N, C, H*W): output rows then step
    through the image as its rows do, so all the rows one tap reads inside the image are a
    single run of the flattened plane, shifted by the tap's offset. One long copy, then the
    columns that wrapped round to the neighbouring row are zeroed. One task per image
    channel; plain uint64 indices, no slices (slicing per tap made it 1.5-2x slower). Median
    ms against _im2col_rows, 3x3 pad 1 (2-core dev machine): 8x128x4x4 0.22 -> 0.13,
    8x128x8x8 0.31 -> 0.11, 8x64x16x16 0.25 -> 0.11, VGG16's conv5 at 224 (1x512x14x14)
    0.21 -> 0.07; level on wide rows (1x256x56x56)."""
    HW = x.shape[2]
    H = HW // W
    L = (r1 - r0) * W                                # one image's share of a column row
    for t in prange((n1 - n0) * C):
        nn, c = t // C, t % C
        n, cc, base = n0 + nn, c0 + c, uint64(nn * L)
        for i in range(kh):
            oa = min(max(r0, ph - i * dh), r1)       # output rows whose input row is inside
            ob = max(min(r1, H + ph - i * dh), oa)
            q0, q1 = (oa - r0) * W, (ob - r0) * W    # ... as a run of the column row
            for j in range(kw):
                k = (c * kh + i) * kw + j
                off = j * dw - pw
                lo, hi = min(max(0, -off), W), max(min(W, W - off), 0)   # ow inside: [lo, hi)
                s = (oa - ph + i * dh) * W + off - q0    # x index = column index + s
                a, b = max(q0, -s), min(q1, HW - s)      # clipped to the plane (edge columns)
                for q in range(uint64(q0)):
                    col[k, base + q] = 0
                dst, src = base + uint64(a), uint64(a + s)   # (both >= 0)
                for q in range(uint64(max(0, b - a))):
                    col[k, dst + q] = x[n, cc, src + q]
                for q in range(uint64(q1), uint64(L)):
                    col[k, base + q] = 0
                for r in range(q0, q1, W):              # the wrapped columns of each row
                    rb = base + uint64(r)
                    for q in range(uint64(lo)):
                        col[k, rb + q] = 0
                    for q in range(uint64(hi), uint64(W)):
                        col[k, rb + q] = 0


@njit(parallel=True, cache=True)
def _col2im(col, n0, n1, c0, C, kh, kw, sh, sw, ph, pw, dh, dw, r0, r1, Wo, dx):
    """The adjoint of _im2col: dx[n, c0 + c, ...] += every column entry that read it. One
    thread owns one (image, channel) plane, so no two threads ever add to the same pixel."""
    H, W = dx.shape[2], dx.shape[3]
    R = r1 - r0
    for t in prange((n1 - n0) * C):
        nn, c = t // C, t % C
        for i in range(kh):
            for j in range(kw):
                k = (c * kh + i) * kw + j
                crow = col[k]
                off = j * dw - pw
                lo = min(max(0, (-off + sw - 1) // sw), Wo)
                hi = max(min(Wo, (W - 1 - off) // sw + 1), lo)
                start = uint64(lo * sw + off)
                for oh in range(r0, r1):
                    ih = oh * sh - ph + i * dh
                    if ih < 0 or ih >= H:
                        continue
                    src = uint64((nn * R + oh - r0) * Wo + lo)
                    xrow = dx[n0 + nn, c0 + c, ih]
                    for ow in range(uint64(hi - lo)):
                        xrow[start + ow * uint64(sw)] += crow[src + ow]


# ----------------------------------------------------------------------------- GEMM into the output
# BLAS reads and writes these views in place: an image's rows of channels are already a
# matrix.
def _rows_view(a, n, c0, C, r0, r1):
    """Channels c0..c0+C, rows r0..r1 of image n of a C-contiguous array, as a (C, cols)
    matrix view (row stride H*W): BLAS reads and writes it in place, no copy."""
    H, W = a.shape[2], a.shape[3]
    return a[n, c0:c0 + C].reshape(C, H * W)[:, r0 * W:r1 * W]


def _as_cols(a, n0, n1, c0, C, r0, r1):
    """Channels c0..c0+C of images n0..n1, rows r0..r1, as a (C, cols) matrix: a view when it
    is one image, a transposed copy when several."""
    if n1 - n0 == 1:
        return _rows_view(a, n0, c0, C, r0, r1)
    return np.ascontiguousarray(a[n0:n1, c0:c0 + C].transpose(1, 0, 2, 3)).reshape(C, -1)


def _gemm_into(a, b, out, n0, n1, c0, C, r0, r1, bias=None):
    """out[n0:n1, c0:c0+C, r0:r1] = a @ b (+ bias): straight into `out` when the tile is one
    image; via a scratch matrix and a transposed copy when it holds several."""
    if n1 - n0 == 1:
        dst = _rows_view(out, n0, c0, C, r0, r1)
        matmul(a, b, out=dst)
        if bias is not None:
            dst += bias[:, None]
        return
    res = matmul(a, b, out=_scratch_matrix("b", a.shape[0], b.shape[1], out.dtype))
    if bias is not None:
        res += bias[:, None]
    out[n0:n1, c0:c0 + C] = res.reshape(C, n1 - n0, out.shape[2], out.shape[3]).transpose(
        1, 0, 2, 3)


# ----------------------------------------------------------------------------- the turned weight
# dx of a stride-1 convolution is itself a convolution of dout (conv.py's _dx_as_conv,
# winograd.py's dx), with this weight.
def _flipped_weight(w, groups):
    """w (F, C/g, kh, kw) -> w' (C, F/g, kh, kw) with w'[c, f] = w[f, c] rotated 180 degrees,
    group by group: the weight of the convolution that computes dx."""
    F, Cg, kh, kw = w.shape
    wg = w.reshape(groups, F // groups, Cg, kh, kw).transpose(0, 2, 1, 3, 4)[..., ::-1, ::-1]
    return np.ascontiguousarray(wg).reshape(groups * Cg, F // groups, kh, kw)
