"""Numba CPU kernels: the loops of the engine, parallel over independent planes with prange.

Convolution is im2col + GEMM: im2col lays every receptive field out as a column, so the whole
layer becomes one matrix product that numpy hands to BLAS. The column matrix is built a tile of
output rows at a time (COL_BUDGET bytes, so that it is still in the cache when the GEMM reads
it); small images go the other way: several whole images share one tile, so a tiny net on a
batch does one GEMM per layer, not one per image.

Three faster routes where they apply, each measured (figures in the comments beside them):
  * 3x3 stride-1 convolutions with enough channels use Winograd's F(2x2, 3x3): 2.25x fewer
    multiply-adds, for the forward pass, dx and dw alike;
  * with stride 1, dx is itself a convolution of dout (no thin GEMM and scatter-add col2im);
  * a transposed convolution whose weight is diagonal across channels (FCN's frozen bilinear
    upsampling) runs depthwise, C_out times less work than the dense product with its zeros.
Scratch matrices are reused between calls rather than allocated (a page fault per 4 KB).

Transposed convolution reuses the im2col loops backwards: its forward is col2im(W^T x), its
backward im2col. Everything not defined here (crop, eltwise sums) falls back to reference.py.
"""
from __future__ import annotations

import os
import sys
import threading

# Numba's OpenMP threads spin after each parallel loop, and so do OpenBLAS's after each GEMM;
# with 2 cores the two pools then fight for them and every kernel waits for a time slice.
# Measured on the 2-core dev machine, a tiny FCN-8s training step (batch 8, 64x64): 444 ms
# with spinning, 125 ms with passive waiting. Only set if the user has not chosen; read by
# libgomp when Numba first starts its threads.
_USER_WAIT_POLICY = "OMP_WAIT_POLICY" in os.environ
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


def _openmp_already_loaded():
    """Was an OpenMP runtime loaded before us (PyTorch imported first brings its libgomp)?"""
    try:
        with open("/proc/self/maps") as f:
            return any("libgomp" in line or "libiomp" in line for line in f)
    except OSError:
        return "torch" in sys.modules


# ... but an OpenMP runtime loaded before this module (import torch; import minifcn) has read
# the environment already, and Numba's OpenMP layer ends up on its spinning threads: VGG16's 13
# convolutions, forward+backward, took 2.5 s instead of 0.5 s that way. Numba's workqueue layer
# has its own sleeping threads (0.52 s), so it is taken then, unless the user chose a layer.
if (not _USER_WAIT_POLICY and "NUMBA_THREADING_LAYER" not in os.environ
        and _openmp_already_loaded()):
    import numba  # noqa: E402
    numba.config.THREADING_LAYER = "workqueue"

import numpy as np  # noqa: E402
from numba import njit, prange, uint64  # noqa: E402

from .geometry import conv_out, deconv_out, pool_out, row_tiles

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


# In the loops below indices are uint64 where they cannot be negative: Numba then skips its
# negative-index wraparound test, and the copy loops vectorise (2x faster im2col on 14x14).
@njit(parallel=True, cache=True)
def _im2col(x, n0, n1, c0, C, kh, kw, sh, sw, ph, pw, dh, dw, r0, r1, Wo, col):
    """col[(c*kh + i)*kw + j, ((n - n0)*R + oh - r0)*Wo + ow] = xpad[n, c0 + c, oh*sh + i*dh,
    ow*sw + j*dw] for images n0..n1 and output rows r0..r1 (R = r1 - r0); zero in the padding.
    With stride 1 each row of a column is a contiguous run of an input row."""
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


@njit(parallel=True, cache=True, fastmath={"reassoc"})
def _channel_sums(a, out):
    """out[c] = sum of a[:, c] (the bias gradient), accumulated in float64; reassociation
    lets the sum vectorise (4x faster on FCN's 21x544x544 upsampled scores)."""
    N, C, H, W = a.shape
    for c in prange(C):
        s = 0.0
        for n in range(N):
            for h in range(H):
                row = a[n, c, h]
                for w in range(W):
                    s += row[w]
        out[c] = s


def _bias_grad(dout):
    out = np.empty(dout.shape[1], dtype=np.float64)
    _channel_sums(dout, out)
    return out.astype(dout.dtype)


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
        np.matmul(a, b, out=dst)
        if bias is not None:
            dst += bias[:, None]
        return
    res = np.matmul(a, b, out=_scratch_matrix("b", a.shape[0], b.shape[1], out.dtype))
    if bias is not None:
        res += bias[:, None]
    out[n0:n1, c0:c0 + C] = res.reshape(C, n1 - n0, out.shape[2], out.shape[3]).transpose(
        1, 0, 2, 3)


def _is_pointwise(kh, kw, stride, pad):
    """A 1x1 conv with stride 1 and no pad needs no im2col: the input already is the matrix."""
    return kh == kw == 1 and stride == (1, 1) and pad == (0, 0)


# ----------------------------------------------------------------------------- Winograd
# A 3x3 convolution of stride 1 computed as F(2x2, 3x3) (Lavin & Gray 2016): each 2x2 block of
# outputs is A^T [(G g G^T) * (B^T d B)] A for the 4x4 input patch d under it, so the 36
# multiply-adds per block and channel pair become 16, done as 16 GEMMs (one per position xi of
# the 4x4 transformed tile): M[xi] (F x T) = U[xi] (F x C) @ V[xi] (C x T), T = 2x2 blocks.
# 2.25x fewer flops than im2col + GEMM, and V holds 4 copies of the input where im2col holds 9.
# The same transforms give dx (a convolution of dout with the turned weight) and dw (the
# chain rule through the linear maps: dU[xi] = sum over blocks of (A dY A^T)[xi] V[xi]^T,
# dw = G^T dU G).
#   B^T = [1 0 -1 0; 0 1 1 0; 0 -1 1 0; 0 1 0 -1]   G = [1 0 0; .5 .5 .5; .5 -.5 .5; 0 0 1]
#   A^T = [1 1 1 0; 0 1 -1 -1]
# Each transform runs in two passes over a row of blocks: one down the columns (whole rows at
# once: contiguous, vectorised), one along the row (stride 2), with the padding laid into a
# small row buffer first, so no pixel load needs a bounds test.
@njit(parallel=True, cache=True)
def _wino_in(x, n0, n1, c0, C, ph, pw, ty0, ty1, TW, V):
    """V[xi, c, t] = (B^T d B)[xi], d the 4x4 patch of the padded input under block t =
    ((n - n0)*(ty1 - ty0) + ty - ty0)*TW + tx (input rows 2ty - ph .., columns 2tx - pw ..).
    Rows and planes are taken as 1-D views indexed from 0, so that Numba needs no test for
    negative indices in the inner loops and LLVM vectorises them (3x faster than indexing
    V[xi, c, base + tx] directly)."""
    H, W = x.shape[2], x.shape[3]
    TR = ty1 - ty0
    Wp = 2 * TW + 2                              # padded columns the row of blocks reads
    lo = min(pw, Wp)
    hi = max(min(Wp, W + pw), lo)
    for q in prange(C * (n1 - n0)):
        c, nn = q % C, q // C
        n, cc = n0 + nn, c0 + c
        X = np.zeros((4, Wp), dtype=x.dtype)     # four padded input rows
        R = np.empty((4, Wp), dtype=x.dtype)     # B^T applied down the columns
        for ty in range(ty0, ty1):
            for i in range(4):
                h = 2 * ty - ph + i
                if 0 <= h < H:
                    X[i, lo:hi] = x[n, cc, h, lo - pw:hi - pw]
                else:
                    X[i, lo:hi] = 0
            x0, x1, x2, x3 = X[0], X[1], X[2], X[3]
            r0, r1, r2, r3 = R[0], R[1], R[2], R[3]
            for u in range(Wp):
                r0[u] = x0[u] - x2[u]
                r1[u] = x1[u] + x2[u]
                r2[u] = x2[u] - x1[u]
                r3[u] = x1[u] - x3[u]
            base = (nn * TR + ty - ty0) * TW
            for i in range(4):
                ri = R[i]
                v0 = V[4 * i, c, base:base + TW]
                v1 = V[4 * i + 1, c, base:base + TW]
                v2 = V[4 * i + 2, c, base:base + TW]
                v3 = V[4 * i + 3, c, base:base + TW]
                for tx in range(TW):
                    a, b, e, f = ri[2 * tx], ri[2 * tx + 1], ri[2 * tx + 2], ri[2 * tx + 3]
                    v0[tx] = a - e
                    v1[tx] = b + e
                    v2[tx] = e - b
                    v3[tx] = b - f


@njit(parallel=True, cache=True)
def _wino_out(M, bias, n0, n1, f0, F, ty0, ty1, TW, y):
    """y[n, f0 + f, 2ty + a, 2tx + b] = (A^T m A)[a, b] (+ bias[f]) for the 4x4 tile m =
    M[:, f, t]; blocks hanging over the edge write only their pixels inside y. A^T goes down
    the columns first, on contiguous runs of M, then along the rows (0-based views, as in
    _wino_in)."""
    Ho, Wo = y.shape[2], y.shape[3]
    TR = ty1 - ty0
    full = Wo // 2                               # blocks whose two columns are both inside
    for q in prange(F * (n1 - n0)):
        f, nn = q % F, q // F
        n = n0 + nn
        bf = bias[f] if bias.size > 0 else y.dtype.type(0)
        S = np.empty((8, TW), dtype=y.dtype)
        for ty in range(ty0, ty1):
            base = (nn * TR + ty - ty0) * TW
            for j in range(4):
                m0, m1 = M[j, f, base:base + TW], M[4 + j, f, base:base + TW]
                m2, m3 = M[8 + j, f, base:base + TW], M[12 + j, f, base:base + TW]
                sa, sb = S[j], S[4 + j]
                for tx in range(TW):
                    sa[tx] = m0[tx] + m1[tx] + m2[tx]
                    sb[tx] = m1[tx] - m2[tx] - m3[tx]
            for a in range(2):
                oh = 2 * ty + a
                if oh >= Ho:
                    continue
                s0, s1, s2, s3 = S[4 * a], S[4 * a + 1], S[4 * a + 2], S[4 * a + 3]
                yr = y[n, f0 + f, oh]
                for tx in range(full):
                    yr[2 * tx] = s0[tx] + s1[tx] + s2[tx] + bf
                    yr[2 * tx + 1] = s1[tx] - s2[tx] - s3[tx] + bf
                if full < TW:                    # an odd width: the last block's left column
                    yr[2 * full] = s0[full] + s1[full] + s2[full] + bf


@njit(parallel=True, cache=True)
def _wino_dout(dout, n0, n1, f0, F, ty0, ty1, TW, D):
    """D[xi, f, t] = (A g A^T)[xi] for the 2x2 block g of dout (zero past its edge): the
    adjoint of _wino_out. A = [1 0; 1 1; 1 -1; 0 -1]."""
    Ho, Wo = dout.shape[2], dout.shape[3]
    TR = ty1 - ty0
    for q in prange(F * (n1 - n0)):
        f, nn = q % F, q // F
        n, ff = n0 + nn, f0 + f
        Q = np.zeros((4, 2 * TW), dtype=dout.dtype)   # A applied down the columns
        G = np.zeros((2, 2 * TW), dtype=dout.dtype)   # the two dout rows, zero past the edge
        for ty in range(ty0, ty1):
            oh = 2 * ty
            G[0, :Wo] = dout[n, ff, oh, :]
            if oh + 1 < Ho:
                G[1, :Wo] = dout[n, ff, oh + 1, :]
            else:
                G[1, :] = 0
            g0, g1 = G[0], G[1]
            q0, q1, q2, q3 = Q[0], Q[1], Q[2], Q[3]
            for u in range(2 * TW):
                q0[u] = g0[u]
                q1[u] = g0[u] + g1[u]
                q2[u] = g0[u] - g1[u]
                q3[u] = -g1[u]
            base = (nn * TR + ty - ty0) * TW
            for i in range(4):
                qi = Q[i]
                d0 = D[4 * i, f, base:base + TW]
                d1 = D[4 * i + 1, f, base:base + TW]
                d2 = D[4 * i + 2, f, base:base + TW]
                d3 = D[4 * i + 3, f, base:base + TW]
                for tx in range(TW):
                    p, r = qi[2 * tx], qi[2 * tx + 1]
                    d0[tx] = p
                    d1[tx] = p + r
                    d2[tx] = p - r
                    d3[tx] = -r


@njit(parallel=True, cache=True)
def _wino_weight_kernel(w, U):
    """U[xi, f, c] = (G w[f, c] G^T)[xi]."""
    F, C = w.shape[0], w.shape[1]
    h = w.dtype.type(0.5)
    T = np.empty((4, 3), dtype=w.dtype)
    for f in prange(F):
        T = np.empty((4, 3), dtype=w.dtype)
        for c in range(C):
            for j in range(3):                      # G applied down each column
                g0, g1, g2 = w[f, c, 0, j], w[f, c, 1, j], w[f, c, 2, j]
                T[0, j] = g0
                T[1, j] = h * (g0 + g1 + g2)
                T[2, j] = h * (g0 - g1 + g2)
                T[3, j] = g2
            for i in range(4):                      # ... and along each row
                g0, g1, g2 = T[i, 0], T[i, 1], T[i, 2]
                U[4 * i, f, c] = g0
                U[4 * i + 1, f, c] = h * (g0 + g1 + g2)
                U[4 * i + 2, f, c] = h * (g0 - g1 + g2)
                U[4 * i + 3, f, c] = g2


@njit(parallel=True, cache=True)
def _wino_weight_grad_kernel(dU, dw):
    """dw[f, c] = G^T dU[:, f, c] G: the adjoint of _wino_weight_kernel."""
    F, C = dw.shape[0], dw.shape[1]
    h = dw.dtype.type(0.5)
    for f in prange(F):
        T = np.empty((4, 3), dtype=dw.dtype)
        for c in range(C):
            for i in range(4):                      # G^T applied along each row
                u0, u1, u2, u3 = dU[4 * i, f, c], dU[4 * i + 1, f, c], dU[4 * i + 2, f, c], \
                    dU[4 * i + 3, f, c]
                T[i, 0] = u0 + h * (u1 + u2)
                T[i, 1] = h * (u1 - u2)
                T[i, 2] = h * (u1 + u2) + u3
            for j in range(3):                      # ... and down each column
                u0, u1, u2, u3 = T[0, j], T[1, j], T[2, j], T[3, j]
                dw[f, c, 0, j] = u0 + h * (u1 + u2)
                dw[f, c, 1, j] = h * (u1 - u2)
                dw[f, c, 2, j] = h * (u1 + u2) + u3


# F(4x4, 3x3): each 4x4 block of outputs from the 6x6 input patch under it, 36 GEMMs, 4x fewer
# multiply-adds than im2col (F(2x2, 3x3): 2.25x). Points 0, 1, -1, 2, -2 and infinity:
#   B^T = [4 0 -5 0 1 0; 0 -4 -4 1 1 0; 0 4 -4 -1 1 0; 0 -2 -1 2 1 0; 0 2 -1 -2 1 0;
#          0 4 0 -5 0 1]
#   G = [1/4 0 0; -1/6 -1/6 -1/6; -1/6 1/6 -1/6; 1/24 1/12 1/6; 1/24 -1/12 1/6; 0 0 1]
#   A^T = [1 1 1 1 1 0; 0 1 -1 2 -2 0; 0 1 1 4 4 0; 0 1 -1 8 -8 1]
# Larger entries than F(2x2, 3x3)'s, so float32 results carry about 1e-5 relative error (the
# published analyses agree; cuDNN uses the same tiles); the same two-pass layout as above.
@njit(parallel=True, cache=True)
def _wino4_in(x, n0, n1, c0, C, ph, pw, ty0, ty1, TW, V):
    """V[6i + j, c, t] = (B^T d B)[i, j], d the 6x6 patch of the padded input under block t
    (input rows 4ty - ph .., columns 4tx - pw ..)."""
    H, W = x.shape[2], x.shape[3]
    TR = ty1 - ty0
    Wp = 4 * TW + 2
    lo = min(pw, Wp)
    hi = max(min(Wp, W + pw), lo)
    f4, f5, f2 = x.dtype.type(4), x.dtype.type(5), x.dtype.type(2)
    for q in prange(C * (n1 - n0)):
        c, nn = q % C, q // C
        n, cc = n0 + nn, c0 + c
        X = np.zeros((6, Wp), dtype=x.dtype)
        R = np.empty((6, Wp), dtype=x.dtype)
        P = np.empty((4, TW + 1), dtype=x.dtype)
        P0, P1, P2, P3 = P[0], P[1], P[2], P[3]
        for ty in range(ty0, ty1):
            for i in range(6):
                h = 4 * ty - ph + i
                if 0 <= h < H:
                    X[i, lo:hi] = x[n, cc, h, lo - pw:hi - pw]
                else:
                    X[i, lo:hi] = 0
            x0, x1, x2, x3, x4, x5 = X[0], X[1], X[2], X[3], X[4], X[5]
            r0, r1, r2, r3, r4, r5 = R[0], R[1], R[2], R[3], R[4], R[5]
            for u in range(Wp):
                d0, d1, d2, d3, d4, d5 = x0[u], x1[u], x2[u], x3[u], x4[u], x5[u]
                r0[u] = f4 * d0 - f5 * d2 + d4
                r1[u] = d3 + d4 - f4 * (d1 + d2)
                r2[u] = d4 - d3 + f4 * (d1 - d2)
                r3[u] = d4 - d2 + f2 * (d3 - d1)
                r4[u] = d4 - d2 + f2 * (d1 - d3)
                r5[u] = f4 * d1 - f5 * d3 + d5
            base = (nn * TR + ty - ty0) * TW
            for i in range(6):
                ri = R[i]
                # the row's four phases (ri[4tx + k], k < 4), so that the next loop reads
                # contiguous runs: block tx needs phases 0..3 at tx and 0, 1 at tx + 1
                for tx in range(TW):
                    P0[tx], P1[tx] = ri[4 * tx], ri[4 * tx + 1]
                    P2[tx], P3[tx] = ri[4 * tx + 2], ri[4 * tx + 3]
                P0[TW], P1[TW] = ri[4 * TW], ri[4 * TW + 1]
                v0 = V[6 * i, c, base:base + TW]
                v1 = V[6 * i + 1, c, base:base + TW]
                v2 = V[6 * i + 2, c, base:base + TW]
                v3 = V[6 * i + 3, c, base:base + TW]
                v4 = V[6 * i + 4, c, base:base + TW]
                v5 = V[6 * i + 5, c, base:base + TW]
                for tx in range(TW):
                    d0, d1, d2, d3, d4, d5 = P0[tx], P1[tx], P2[tx], P3[tx], P0[tx + 1], \
                        P1[tx + 1]
                    v0[tx] = f4 * d0 - f5 * d2 + d4
                    v1[tx] = d3 + d4 - f4 * (d1 + d2)
                    v2[tx] = d4 - d3 + f4 * (d1 - d2)
                    v3[tx] = d4 - d2 + f2 * (d3 - d1)
                    v4[tx] = d4 - d2 + f2 * (d1 - d3)
                    v5[tx] = f4 * d1 - f5 * d3 + d5


@njit(parallel=True, cache=True)
def _wino4_out(M, bias, n0, n1, f0, F, ty0, ty1, TW, y):
    """y[n, f0 + f, 4ty + p, 4tx + q] = (A^T m A)[p, q] (+ bias[f]), m = M[:, f, t] as 6x6."""
    Ho, Wo = y.shape[2], y.shape[3]
    TR = ty1 - ty0
    full = Wo // 4
    f2, f4, f8 = y.dtype.type(2), y.dtype.type(4), y.dtype.type(8)
    for q in prange(F * (n1 - n0)):
        f, nn = q % F, q // F
        n = n0 + nn
        bf = bias[f] if bias.size > 0 else y.dtype.type(0)
        S = np.empty((24, TW), dtype=y.dtype)          # A^T down the columns: S[6p + j]
        Y = np.empty((4, TW), dtype=y.dtype)
        Y0, Y1, Y2, Y3 = Y[0], Y[1], Y[2], Y[3]
        for ty in range(ty0, ty1):
            base = (nn * TR + ty - ty0) * TW
            for j in range(6):
                m0, m1 = M[j, f, base:base + TW], M[6 + j, f, base:base + TW]
                m2, m3 = M[12 + j, f, base:base + TW], M[18 + j, f, base:base + TW]
                m4, m5 = M[24 + j, f, base:base + TW], M[30 + j, f, base:base + TW]
                s0, s1, s2, s3 = S[j], S[6 + j], S[12 + j], S[18 + j]
                for tx in range(TW):
                    a1, a2, a3, a4 = m1[tx], m2[tx], m3[tx], m4[tx]
                    p12, m12, p34, m34 = a1 + a2, a1 - a2, a3 + a4, a3 - a4
                    s0[tx] = m0[tx] + p12 + p34
                    s1[tx] = m12 + f2 * m34
                    s2[tx] = p12 + f4 * p34
                    s3[tx] = m12 + f8 * m34 + m5[tx]
            for p in range(4):
                oh = 4 * ty + p
                if oh >= Ho:
                    break
                e0, e1, e2 = S[6 * p], S[6 * p + 1], S[6 * p + 2]
                e3, e4, e5 = S[6 * p + 3], S[6 * p + 4], S[6 * p + 5]
                for tx in range(TW):            # the four output phases, contiguous ...
                    a1, a2, a3, a4 = e1[tx], e2[tx], e3[tx], e4[tx]
                    p12, m12, p34, m34 = a1 + a2, a1 - a2, a3 + a4, a3 - a4
                    Y0[tx] = e0[tx] + p12 + p34 + bf
                    Y1[tx] = m12 + f2 * m34 + bf
                    Y2[tx] = p12 + f4 * p34 + bf
                    Y3[tx] = m12 + f8 * m34 + e5[tx] + bf
                yr = y[n, f0 + f, oh]
                for tx in range(full):          # ... then interleaved into the output row
                    yr[4 * tx], yr[4 * tx + 1] = Y0[tx], Y1[tx]
                    yr[4 * tx + 2], yr[4 * tx + 3] = Y2[tx], Y3[tx]
                for k in range(Wo - 4 * full):  # the last block, cut by the right edge
                    yr[4 * full + k] = Y[k, full]


@njit(parallel=True, cache=True)
def _wino4_dout(dout, n0, n1, f0, F, ty0, ty1, TW, D):
    """D[6i + j, f, t] = (A g A^T)[i, j] for the 4x4 block g of dout (zero past its edge):
    the adjoint of _wino4_out. Rows of A: g0, g0+g1+g2+g3, g0-g1+g2-g3, g0+2g1+4g2+8g3,
    g0-2g1+4g2-8g3, g3."""
    Ho, Wo = dout.shape[2], dout.shape[3]
    TR = ty1 - ty0
    f2, f4, f8 = dout.dtype.type(2), dout.dtype.type(4), dout.dtype.type(8)
    for q in prange(F * (n1 - n0)):
        f, nn = q % F, q // F
        n, ff = n0 + nn, f0 + f
        G = np.zeros((4, 4 * TW), dtype=dout.dtype)
        Q = np.empty((6, 4 * TW), dtype=dout.dtype)
        P = np.empty((4, TW), dtype=dout.dtype)
        P0, P1, P2, P3 = P[0], P[1], P[2], P[3]
        for ty in range(ty0, ty1):
            for k in range(4):
                oh = 4 * ty + k
                if oh < Ho:
                    G[k, :Wo] = dout[n, ff, oh, :]
                else:
                    G[k, :] = 0
            g0, g1, g2, g3 = G[0], G[1], G[2], G[3]
            q0, q1, q2, q3, q4, q5 = Q[0], Q[1], Q[2], Q[3], Q[4], Q[5]
            for u in range(4 * TW):
                a0, a1, a2, a3 = g0[u], g1[u], g2[u], g3[u]
                e02, e13 = a0 + a2, a1 + a3
                q0[u] = a0
                q1[u] = e02 + e13
                q2[u] = e02 - e13
                b02, b13 = a0 + f4 * a2, f2 * a1 + f8 * a3
                q3[u] = b02 + b13
                q4[u] = b02 - b13
                q5[u] = a3
            base = (nn * TR + ty - ty0) * TW
            for i in range(6):
                qi = Q[i]
                for tx in range(TW):            # the row's four phases, as in _wino4_in
                    P0[tx], P1[tx] = qi[4 * tx], qi[4 * tx + 1]
                    P2[tx], P3[tx] = qi[4 * tx + 2], qi[4 * tx + 3]
                d0 = D[6 * i, f, base:base + TW]
                d1 = D[6 * i + 1, f, base:base + TW]
                d2 = D[6 * i + 2, f, base:base + TW]
                d3 = D[6 * i + 3, f, base:base + TW]
                d4 = D[6 * i + 4, f, base:base + TW]
                d5 = D[6 * i + 5, f, base:base + TW]
                for tx in range(TW):
                    a0, a1, a2, a3 = P0[tx], P1[tx], P2[tx], P3[tx]
                    e02, e13 = a0 + a2, a1 + a3
                    b02, b13 = a0 + f4 * a2, f2 * a1 + f8 * a3
                    d0[tx] = a0
                    d1[tx] = e02 + e13
                    d2[tx] = e02 - e13
                    d3[tx] = b02 + b13
                    d4[tx] = b02 - b13
                    d5[tx] = a3


@njit(parallel=True, cache=True)
def _wino4_weight_kernel(wt, U):
    """U[6i + j, f, c] = (G w[f, c] G^T)[i, j] from wt = w laid out (F, 3, 3, C): every step a
    contiguous run over c."""
    F, C = wt.shape[0], wt.shape[3]
    t = wt.dtype.type
    k4, k6, k12, k24 = t(1 / 4), t(1 / 6), t(1 / 12), t(1 / 24)
    for f in prange(F):
        T = np.empty((6, 3, C), dtype=wt.dtype)       # G applied down each kernel column
        for j in range(3):
            g0, g1, g2 = wt[f, 0, j], wt[f, 1, j], wt[f, 2, j]
            for c in range(C):
                a0, a1, a2 = g0[c], g1[c], g2[c]
                T[0, j, c] = k4 * a0
                T[1, j, c] = -k6 * (a0 + a1 + a2)
                T[2, j, c] = -k6 * (a0 - a1 + a2)
                T[3, j, c] = k24 * a0 + k12 * a1 + k6 * a2
                T[4, j, c] = k24 * a0 - k12 * a1 + k6 * a2
                T[5, j, c] = a2
        for i in range(6):                            # ... and along each row
            g0, g1, g2 = T[i, 0], T[i, 1], T[i, 2]
            u0, u1, u2 = U[6 * i, f], U[6 * i + 1, f], U[6 * i + 2, f]
            u3, u4, u5 = U[6 * i + 3, f], U[6 * i + 4, f], U[6 * i + 5, f]
            for c in range(C):
                a0, a1, a2 = g0[c], g1[c], g2[c]
                u0[c] = k4 * a0
                u1[c] = -k6 * (a0 + a1 + a2)
                u2[c] = -k6 * (a0 - a1 + a2)
                u3[c] = k24 * a0 + k12 * a1 + k6 * a2
                u4[c] = k24 * a0 - k12 * a1 + k6 * a2
                u5[c] = a2


@njit(parallel=True, cache=True)
def _wino4_weight_grad_kernel(dU, dwt):
    """dwt[f, r, s, c] = (G^T dU[:, f, c] G)[r, s]: the adjoint of _wino4_weight_kernel, in the
    (F, 3, 3, C) layout. Rows of G^T: u0/4 - u1/6 - u2/6 + u3/24 + u4/24,
    -u1/6 + u2/6 + u3/12 - u4/12, -u1/6 - u2/6 + u3/6 + u4/6 + u5."""
    F, C = dwt.shape[0], dwt.shape[3]
    t = dwt.dtype.type
    k4, k6, k12, k24 = t(1 / 4), t(1 / 6), t(1 / 12), t(1 / 24)
    for f in prange(F):
        T = np.empty((3, 6, C), dtype=dwt.dtype)     # G^T applied down each column j
        for j in range(6):
            a0, a1, a2 = dU[j, f], dU[6 + j, f], dU[12 + j, f]
            a3, a4, a5 = dU[18 + j, f], dU[24 + j, f], dU[30 + j, f]
            for c in range(C):
                p12, m12 = a1[c] + a2[c], a1[c] - a2[c]
                p34, m34 = a3[c] + a4[c], a3[c] - a4[c]
                T[0, j, c] = k4 * a0[c] - k6 * p12 + k24 * p34
                T[1, j, c] = -k6 * m12 + k12 * m34
                T[2, j, c] = -k6 * p12 + k6 * p34 + a5[c]
        for r in range(3):                            # ... and along each row
            a0, a1, a2, a3, a4, a5 = T[r, 0], T[r, 1], T[r, 2], T[r, 3], T[r, 4], T[r, 5]
            o0, o1, o2 = dwt[f, r, 0], dwt[f, r, 1], dwt[f, r, 2]
            for c in range(C):
                p12, m12 = a1[c] + a2[c], a1[c] - a2[c]
                p34, m34 = a3[c] + a4[c], a3[c] - a4[c]
                o0[c] = k4 * a0[c] - k6 * p12 + k24 * p34
                o1[c] = -k6 * m12 + k12 * m34
                o2[c] = -k6 * p12 + k6 * p34 + a5[c]


WINO_BUDGET = 8 << 20       # bytes of the larger of V and M per tile
WINO_MIN_BLOCKS = 1024      # ... but at least this many blocks: each GEMM stays wide,
WINO_MAX_BYTES = 64 << 20   # ... as long as V and M stay under this (they are kept: memory;
#                             16 MB saved only 14 MB of FCN-8s's step peak, for 10% on conv3-4)
WINO_MIN_CHANNELS = 16      # below this the thin GEMMs lose to one im2col GEMM
WINO_MIN_TOTAL_BLOCKS = {4: 100, 2: 150}   # blocks in the whole batch, per block size
WINO_TILES = (4, 2)         # block sizes tried, largest first


def _wino_tiles(N, TH, TW, chans, itemsize, nxi=16):
    """Like _tiles, in blocks: (n0, n1, ty0, ty1); nxi transformed planes (16 or 36)."""
    per_block = nxi * chans * itemsize
    blocks = max(WINO_BUDGET // per_block, min(WINO_MIN_BLOCKS, WINO_MAX_BYTES // per_block), 1)
    return row_tiles(N, TH, blocks // TW)


def _blocks(N, out_hw, m):
    return N * (-(-out_hw[0] // m)) * (-(-out_hw[1] // m))


def _winograd_tile(w_shape, stride, dilation, groups, out_hw, N):
    """The output block size of the Winograd route for this convolution: 4 (F(4x4, 3x3)), 2
    (F(2x2, 3x3)), or 0 for im2col + GEMM. 3x3, stride 1, enough channels, and enough blocks
    for wide GEMMs: the largest block with WINO_MIN_TOTAL_BLOCKS of them. On VGG16 at 224
    (2 cores): F(4x4) from conv1_2 to conv3_3 (56x56: 196 blocks), F(2x2) at conv4 (28x28:
    196 blocks), im2col at conv5 (14x14: 49 blocks), where its single GEMM is wider. On the
    tiny FCN's batch of 8: F(4x4) from 16 channels at 64x64 (forward+backward 11.2 -> 5.7 ms)
    down to 16x16 (128 blocks), im2col at 8x8 (F(2x2)'s 128 blocks lose to it)."""
    F, Cg, kh, kw = w_shape
    if (kh, kw) != (3, 3) or stride != (1, 1) or dilation != (1, 1) or \
            min(Cg, F // groups) < WINO_MIN_CHANNELS:
        return 0
    for m in WINO_TILES:
        if _blocks(N, out_hw, m) >= WINO_MIN_TOTAL_BLOCKS[m]:
            return m
    return 0

# The transformed weight of the turned kernel w'[c, f] = rot180(w[f, c]) (whose convolution
# with dout is dx) is, for F(2x2, 3x3), U itself transposed in (f, c), with the transform index
# 0 <-> 3 swapped in both directions (rot180 reverses g's rows and columns; G maps a reversed g
# to its rows 3, 1, 2, 0). So dx needs no turned copy of the weight: its GEMMs read
# U[_ROT[xi]]^T. (F(4x4, 3x3)'s G has no such symmetry: dx turns the weight.)
_ROT = [(3 - i if i in (0, 3) else i) * 4 + (3 - j if j in (0, 3) else j)
        for i in range(4) for j in range(4)]


def _wino_weight(w, m):
    """U (nxi, F, C/groups): the transformed weight for blocks of m."""
    if m == 2:
        U = np.empty((16,) + w.shape[:2], dtype=w.dtype)
        _wino_weight_kernel(np.ascontiguousarray(w), U)
    else:
        U = np.empty((36,) + w.shape[:2], dtype=w.dtype)
        _wino4_weight_kernel(np.ascontiguousarray(w.transpose(0, 2, 3, 1)), U)
    return U


def _wino_conv(x, w, b, pad, groups, Ho, Wo, m=2, transpose=False):
    """y = conv2d(x, w, b) (3x3, stride 1) by Winograd with m x m output blocks; with
    transpose=True, the convolution with the turned weight w' (C, F/groups, 3, 3) instead:
    dx when x is dout."""
    if transpose and m == 4:
        return _wino_conv(x, _flipped_weight(w, groups), b, pad, groups, Ho, Wo, m)
    N = x.shape[0]
    F, Cg = w.shape[:2]
    U = _wino_weight(w, m)
    nxi = U.shape[0]
    if transpose:                            # in: F channels (of dout) per group, out: Cg
        Cg, F = F // groups, Cg * groups
    Fg = F // groups
    y = np.empty((N, F, Ho, Wo), dtype=x.dtype)
    bias = np.zeros(0, x.dtype) if b is None else np.ascontiguousarray(b, dtype=x.dtype)
    TH, TW = -(-Ho // m), -(-Wo // m)
    win, wout = (_wino_in, _wino_out) if m == 2 else (_wino4_in, _wino4_out)
    for n0, n1, ty0, ty1 in _wino_tiles(N, TH, TW, max(Cg, Fg), x.itemsize, nxi):
        T = (n1 - n0) * (ty1 - ty0) * TW
        V = _scratch_matrix("a", nxi, Cg * T, x.dtype).reshape(nxi, Cg, T)
        M = _scratch_matrix("b", nxi, Fg * T, x.dtype).reshape(nxi, Fg, T)
        for g in range(groups):
            win(x, n0, n1, g * Cg, Cg, pad[0], pad[1], ty0, ty1, TW, V)
            if transpose:
                for xi in range(16):
                    np.matmul(U[_ROT[xi], g * Cg:(g + 1) * Cg].T, V[xi], out=M[xi])
            else:
                np.matmul(U[:, g * Fg:(g + 1) * Fg], V, out=M)
            wout(M, bias[g * Fg:(g + 1) * Fg] if bias.size else bias, n0, n1, g * Fg,
                 Fg, ty0, ty1, TW, y)
    return y


def _wino_dw(dout, x, w_shape, pad, groups, m=2):
    """dw of a 3x3 stride-1 convolution by Winograd: dU[xi] = sum over blocks of
    D[xi] V[xi]^T, then dw = G^T dU G."""
    N, C, H, W = x.shape
    F, Cg = w_shape[:2]
    Fg = F // groups
    Ho, Wo = dout.shape[2:]
    nxi = 16 if m == 2 else 36
    TH, TW = -(-Ho // m), -(-Wo // m)
    win, wdout = (_wino_in, _wino_dout) if m == 2 else (_wino4_in, _wino4_dout)
    dU = np.empty((nxi, F, Cg), dtype=x.dtype)
    first = True
    for n0, n1, ty0, ty1 in _wino_tiles(N, TH, TW, max(Cg, Fg), x.itemsize, nxi):
        T = (n1 - n0) * (ty1 - ty0) * TW
        V = _scratch_matrix("a", nxi, Cg * T, x.dtype).reshape(nxi, Cg, T)
        D = _scratch_matrix("b", nxi, Fg * T, x.dtype).reshape(nxi, Fg, T)
        for g in range(groups):
            win(x, n0, n1, g * Cg, Cg, pad[0], pad[1], ty0, ty1, TW, V)
            wdout(dout, n0, n1, g * Fg, Fg, ty0, ty1, TW, D)
            dst = dU[:, g * Fg:(g + 1) * Fg]
            if first:
                np.matmul(D, V.transpose(0, 2, 1), out=dst)
            else:                            # one transformed plane at a time: small scratch
                tmp = _scratch_matrix("c", Fg, Cg, x.dtype)
                for xi in range(nxi):
                    dst[xi] += np.matmul(D[xi], V[xi].T, out=tmp)
        first = False
    if m == 2:
        dw = np.empty(w_shape, dtype=x.dtype)
        _wino_weight_grad_kernel(dU, dw)
        return dw
    dwt = np.empty((F, 3, 3, Cg), dtype=x.dtype)
    _wino4_weight_grad_kernel(dU, dwt)
    return np.ascontiguousarray(dwt.transpose(0, 3, 1, 2))


# ----------------------------------------------------------------------------- convolution
def conv2d(x, w, b, stride, pad, dilation, groups):
    N, C, H, W = x.shape
    F, Cg, kh, kw = w.shape
    Ho = conv_out(H, kh, stride[0], pad[0], dilation[0])
    Wo = conv_out(W, kw, stride[1], pad[1], dilation[1])
    m = _winograd_tile(w.shape, stride, dilation, groups, (Ho, Wo), N)
    if m:
        return _wino_conv(x, w, b, pad, groups, Ho, Wo, m)
    y = np.empty((N, F, Ho, Wo), dtype=x.dtype)
    Fg, K = F // groups, Cg * kh * kw
    wmat = np.ascontiguousarray(w).reshape(F, K)
    pointwise = _is_pointwise(kh, kw, stride, pad)
    if pointwise:
        x = np.ascontiguousarray(x)
    for n0, n1, r0, r1 in _tiles(N, Ho, Wo, K, x.itemsize):
        m = (n1 - n0) * (r1 - r0) * Wo
        for g in range(groups):
            if pointwise:
                col = _as_cols(x, n0, n1, g * Cg, Cg, r0, r1)
            else:
                col = _scratch_matrix("a", K, m, x.dtype)
                _im2col(x, n0, n1, g * Cg, Cg, kh, kw, *stride, *pad, *dilation, r0, r1, Wo, col)
            _gemm_into(wmat[g * Fg:(g + 1) * Fg], col, y, n0, n1, g * Fg, Fg, r0, r1,
                       None if b is None else b[g * Fg:(g + 1) * Fg])
    return y


def _dx_as_conv(x_shape, w_shape, dout_shape, stride, pad, dilation):
    """The pad with which dx is itself a convolution of dout (stride 1 only), or None.

    With stride 1, dx = conv2d(dout, w', pad=d(k-1) - p) where w'[c, f] is w[f, c] turned by
    180 degrees. That replaces a thin GEMM (K = C_out) and a scatter-add col2im with the same
    im2col + GEMM as the forward pass, writing dx straight in place. Only taken when it does
    not grow the work: dout must be about as large as dx (not fc6's 16x16 from 22x22)."""
    if stride != (1, 1):
        return None
    p = tuple(dilation[a] * (w_shape[2 + a] - 1) - pad[a] for a in (0, 1))
    if min(p) < 0 or x_shape[2] * x_shape[3] > 1.25 * dout_shape[2] * dout_shape[3]:
        return None
    return p


def _flipped_weight(w, groups):
    """w (F, C/g, kh, kw) -> w' (C, F/g, kh, kw) with w'[c, f] = w[f, c] rotated 180 degrees,
    group by group: the weight of the convolution that computes dx."""
    F, Cg, kh, kw = w.shape
    wg = w.reshape(groups, F // groups, Cg, kh, kw).transpose(0, 2, 1, 3, 4)[..., ::-1, ::-1]
    return np.ascontiguousarray(wg).reshape(groups * Cg, F // groups, kh, kw)


def conv2d_backward(dout, x, w, stride, pad, dilation, groups, need_dx=True, need_dw=True):
    N, C, H, W = x.shape
    F, Cg, kh, kw = w.shape
    Ho, Wo = dout.shape[2:]
    Fg, K = F // groups, Cg * kh * kw
    dout = np.ascontiguousarray(dout)
    wmat = np.ascontiguousarray(w).reshape(F, K)
    pointwise = _is_pointwise(kh, kw, stride, pad)
    if pointwise:
        x = np.ascontiguousarray(x)
    dx = dwm = None
    dx_pad = _dx_as_conv(x.shape, w.shape, dout.shape, stride, pad, dilation) \
        if need_dx and not pointwise else None
    m = _winograd_tile(w.shape, stride, dilation, groups, (H, W), N) if dx_pad else 0
    if m:
        dx = _wino_conv(dout, w, None, dx_pad, groups, H, W, m, transpose=True)
    elif dx_pad is not None and w.size <= dout.size:
        # im2col + GEMM on the turned weight, when turning it (a copy) costs less than dout's
        # size: at conv5 of VGG16 (14x14, a 9 MB weight) the GEMM + col2im below is faster
        dx = conv2d(dout, _flipped_weight(w, groups), None, (1, 1), dx_pad, dilation, groups)
    elif need_dx:
        dx_pad = None
        dx = np.empty_like(x) if pointwise else np.zeros_like(x)
    dw = None
    m = _winograd_tile(w.shape, stride, dilation, groups, (Ho, Wo), N) if need_dw else 0
    if m:
        dw = _wino_dw(dout, x, w.shape, pad, groups, m)
        need_dw = False
    if need_dw:
        dwm = np.empty((F, K), dtype=w.dtype)
    first = True
    tiles = _tiles(N, Ho, Wo, K, x.itemsize) if need_dw or (need_dx and dx_pad is None) else ()
    for n0, n1, r0, r1 in tiles:
        m = (n1 - n0) * (r1 - r0) * Wo
        for g in range(groups):
            d = _as_cols(dout, n0, n1, g * Fg, Fg, r0, r1)          # (Fg, m)
            if need_dw:
                if pointwise:
                    col = _as_cols(x, n0, n1, g * Cg, Cg, r0, r1)
                else:
                    col = _scratch_matrix("a", K, m, x.dtype)
                    _im2col(x, n0, n1, g * Cg, Cg, kh, kw, *stride, *pad, *dilation, r0, r1, Wo,
                            col)
                dst = dwm[g * Fg:(g + 1) * Fg]
                if first:
                    np.matmul(d, col.T, out=dst)
                else:
                    dst += np.matmul(d, col.T, out=_scratch_matrix("c", Fg, K, w.dtype))
            if need_dx and dx_pad is None:
                wg = wmat[g * Fg:(g + 1) * Fg]
                if pointwise:
                    _gemm_into(wg.T, d, dx, n0, n1, g * Cg, Cg, r0, r1)
                else:
                    dcol = np.matmul(wg.T, d, out=_scratch_matrix("a", K, m, x.dtype))
                    _col2im(dcol, n0, n1, g * Cg, Cg, kh, kw, *stride, *pad, *dilation, r0,
                            r1, Wo, dx)
        first = False
    if need_dw:
        dw = dwm.reshape(w.shape)
    return dx, dw, _bias_grad(dout)


# ----------------------------------------------------------------------------- deconvolution
@njit(cache=True)
def _is_diagonal(w):
    """Is w (C, C, kh, kw) zero off the channel diagonal? Stops at the first nonzero, so a
    dense weight costs one look; a bilinear upsampling weight, one pass over it."""
    C, F = w.shape[0], w.shape[1]
    if C != F:
        return False
    for c in range(C):
        for f in range(F):
            if c != f:
                for i in range(w.shape[2]):
                    for j in range(w.shape[3]):
                        if w[c, f, i, j] != 0:
                            return False
    return True


@njit(parallel=True, cache=True)
def _deconv_depthwise(x, w, sh, sw, ph, pw, y):
    """y[n, c] = transposed conv of x[n, c] with w[c, c] alone. One output row at a time: each
    input row under it (ceil(k/s) of them) paints its pixels' scaled kernel rows into a row
    buffer, a contiguous multiply-add over the kernel width that LLVM vectorises; then the
    row, cut by the pad, is copied out. Each thread owns whole planes. (Measured against a
    per-pixel gather of the same sums: 13x faster on FCN-32s's k64 s32 upsampling at 500.)
    Indexing goes through slices that start at 0: Numba then needs no negative-index test in
    the inner loop, which is what keeps it vectorised."""
    N, C, H, W = x.shape
    Ho, Wo = y.shape[2], y.shape[3]
    kh, kw = w.shape[2], w.shape[3]
    Wf = sw * (W - 1) + kw                    # the un-cropped output row
    for t in prange(N * C):
        n, c = t // C, t % C
        row = np.empty(Wf, dtype=y.dtype)
        for oh in range(Ho):
            a = oh + ph                       # row in the un-cropped output
            row[:] = 0
            for ih in range(max(0, (a - kh + sh) // sh), min(H - 1, a // sh) + 1):
                wr, xr = w[c, c, a - ih * sh], x[n, c, ih]
                for iw in range(W):
                    v = xr[iw]
                    seg = row[iw * sw:iw * sw + kw]
                    for j in range(kw):
                        seg[j] += v * wr[j]
            y[n, c, oh, :] = row[pw:pw + Wo]


@njit(parallel=True, cache=True, fastmath={"reassoc", "contract"})
def _deconv_depthwise_dx(dout, w, sh, sw, ph, pw, dx):
    """The adjoint: dx[n, c, ih, iw] = the dot product of w[c, c] with the window of dout[n, c]
    that input pixel painted (clipped to dout). Reassociation lets the dot product vectorise
    (5x faster on k64 s32); the order of a float sum is all it changes."""
    N, C, H, W = dx.shape
    Ho, Wo = dout.shape[2], dout.shape[3]
    kh, kw = w.shape[2], w.shape[3]
    for t in prange(N * C):
        n, c = t // C, t % C
        for ih in range(H):
            i0, i1 = max(0, ph - ih * sh), min(kh, Ho + ph - ih * sh)
            for iw in range(W):
                off = iw * sw - pw
                j0, j1 = max(0, -off), min(kw, Wo - off)
                s = dx.dtype.type(0)
                for i in range(i0, i1):
                    dr = dout[n, c, ih * sh - ph + i, off + j0:off + j1]
                    wr = w[c, c, i, j0:j1]
                    for j in range(j1 - j0):
                        s += dr[j] * wr[j]
                dx[n, c, ih, iw] = s


def conv_transpose2d(x, w, b, stride, pad):
    """Forward of a transposed conv = backward-data of a conv: col = W^T x, then col2im.
    A weight that is diagonal across channels (FCN's bilinear upsampling) takes the
    depthwise kernel instead: C_out times less work than the dense product with its zeros."""
    N, C, H, W = x.shape
    _, F, kh, kw = w.shape
    Ho, Wo = deconv_out(H, kh, stride[0], pad[0]), deconv_out(W, kw, stride[1], pad[1])
    if _is_diagonal(w):
        y = np.empty((N, F, Ho, Wo), dtype=x.dtype)
        _deconv_depthwise(x, w, *stride, *pad, y)
    else:
        y = np.zeros((N, F, Ho, Wo), dtype=x.dtype)
        K = F * kh * kw
        wmat_t = np.ascontiguousarray(w).reshape(C, K).T
        x = np.ascontiguousarray(x)
        for n0, n1, r0, r1 in _tiles(N, H, W, K, x.itemsize):
            m = (n1 - n0) * (r1 - r0) * W
            col = np.matmul(wmat_t, _as_cols(x, n0, n1, 0, C, r0, r1),
                            out=_scratch_matrix("a", K, m, x.dtype))
            _col2im(col, n0, n1, 0, F, kh, kw, *stride, *pad, 1, 1, r0, r1, W, y)
    if b is not None:
        y += b.reshape(1, F, 1, 1)
    return y


def conv_transpose2d_backward(dout, x, w, stride, pad, need_dx=True, need_dw=True):
    N, C, H, W = x.shape
    _, F, kh, kw = w.shape
    K = F * kh * kw
    wmat = np.ascontiguousarray(w).reshape(C, K)
    dout = np.ascontiguousarray(dout)
    x = np.ascontiguousarray(x)
    dx = dwm = None
    if need_dx and _is_diagonal(w):
        dx = np.empty_like(x)
        _deconv_depthwise_dx(dout, w, *stride, *pad, dx)
        dense_dx = False
    else:
        dense_dx = need_dx
        dx = np.empty_like(x) if need_dx else None
    if need_dw:
        dwm = np.empty((C, K), dtype=w.dtype)
    if dense_dx or need_dw:
        first = True
        for n0, n1, r0, r1 in _tiles(N, H, W, K, x.itemsize):
            m = (n1 - n0) * (r1 - r0) * W
            col = _scratch_matrix("a", K, m, x.dtype)
            _im2col(dout, n0, n1, 0, F, kh, kw, *stride, *pad, 1, 1, r0, r1, W, col)
            if dense_dx:
                _gemm_into(wmat, col, dx, n0, n1, 0, C, r0, r1)
            if need_dw:
                xc = _as_cols(x, n0, n1, 0, C, r0, r1)
                if first:
                    np.matmul(xc, col.T, out=dwm)
                else:
                    dwm += np.matmul(xc, col.T, out=_scratch_matrix("c", C, K, w.dtype))
            first = False
    return dx, (dwm.reshape(w.shape) if need_dw else None), _bias_grad(dout)


# ----------------------------------------------------------------------------- pooling
@njit(parallel=True, cache=True)
def _max_pool(x, kh, kw, sh, sw, ph, pw, y, argmax):
    N, C, H, W = x.shape
    Ho, Wo = y.shape[2], y.shape[3]
    for t in prange(N * C):
        n, c = t // C, t % C
        for oh in range(Ho):
            h0 = oh * sh - ph
            h1, h0 = min(h0 + kh, H), max(h0, 0)
            for ow in range(Wo):
                w0 = ow * sw - pw
                w1, w0 = min(w0 + kw, W), max(w0, 0)
                best, arg = x[n, c, h0, w0], h0 * W + w0
                for ih in range(h0, h1):
                    for iw in range(w0, w1):
                        v = x[n, c, ih, iw]
                        if v > best:                 # strict: the first maximum wins ties
                            best, arg = v, ih * W + iw
                y[n, c, oh, ow] = best
                argmax[n, c, oh, ow] = arg


@njit(parallel=True, cache=True)
def _max_pool_2x2(x, y, argmax):
    """_max_pool for VGG's 2x2 windows of stride 2 without padding, written so that LLVM
    vectorises it: no bounds tests in the inner loop and no branches (each pair's winner is a
    select). Ties go to the first pixel in scan order, as in _max_pool: the top pair's winner
    keeps a tie against the bottom pair's. 8x faster than _max_pool on VGG16's pool1."""
    N, C, H, W = x.shape
    Ho, Wo = y.shape[2], y.shape[3]
    full = W // 2                            # windows two columns wide; ceil mode may add one
    for t in prange(N * C):
        n, c = t // C, t % C
        for oh in range(Ho):
            h0 = 2 * oh
            h1 = min(h0 + 1, H - 1)          # ceil mode: a last window one row high
            r0, r1 = x[n, c, h0], x[n, c, h1]
            yr, ar = y[n, c, oh], argmax[n, c, oh]
            for ow in range(full):
                w0 = 2 * ow
                a0, a1, b0, b1 = r0[w0], r0[w0 + 1], r1[w0], r1[w0 + 1]
                top, bot = a1 > a0, b1 > b0
                ta = a1 if top else a0
                tb = b1 if bot else b0
                ia = h0 * W + w0 + (1 if top else 0)
                ib = h1 * W + w0 + (1 if bot else 0)
                lower = tb > ta
                yr[ow] = tb if lower else ta
                ar[ow] = ib if lower else ia
            for ow in range(full, Wo):
                w0 = 2 * ow
                a0, b0 = r0[w0], r1[w0]
                lower = b0 > a0
                yr[ow] = b0 if lower else a0
                ar[ow] = h1 * W + w0 if lower else h0 * W + w0


@njit(parallel=True, cache=True)
def _max_unpool(dout, argmax, dx):
    """dx[p] = 0, then dx[p, argmax[p, k]] += dout[p, k] on (planes, pixels) views: one
    thread per plane, which it zeroes and fills while it sits in its cache (no separate
    np.zeros pass over dx, no division to split the flat index)."""
    for p in prange(dout.shape[0]):
        row, d, a = dx[p], dout[p], argmax[p]
        row[:] = 0
        for k in range(d.shape[0]):
            row[uint64(a[k])] += d[k]          # argmax >= 0: no wraparound test


def max_pool2d(x, kernel, stride, pad, ceil_mode):
    N, C, H, W = x.shape
    Ho = pool_out(H, kernel[0], stride[0], pad[0], ceil_mode)
    Wo = pool_out(W, kernel[1], stride[1], pad[1], ceil_mode)
    y = np.empty((N, C, Ho, Wo), dtype=x.dtype)
    argmax = np.empty((N, C, Ho, Wo), dtype=np.int32)
    if kernel == stride == (2, 2) and pad == (0, 0):
        _max_pool_2x2(x, y, argmax)
    else:
        _max_pool(x, *kernel, *stride, *pad, y, argmax)
    return y, argmax


def max_pool2d_backward(dout, argmax, x_shape):
    N, C, H, W = x_shape
    dx = np.empty(x_shape, dtype=dout.dtype)
    P = N * C
    _max_unpool(np.ascontiguousarray(dout).reshape(P, -1),
                np.ascontiguousarray(argmax).reshape(P, -1), dx.reshape(P, H * W))
    return dx


@njit(parallel=True, cache=True)
def _avg_pool(x, kh, kw, sh, sw, ph, pw, y, backward):
    """Forward: y = window means of x. Backward (backward=True): x += y spread over windows
    (there x is the gradient being filled and y the output gradient)."""
    N, C = x.shape[0], x.shape[1]
    H, W = x.shape[2], x.shape[3]
    Ho, Wo = y.shape[2], y.shape[3]
    for t in prange(N * C):
        n, c = t // C, t % C
        for oh in range(Ho):
            h0 = oh * sh - ph
            h1 = min(h0 + kh, H + ph)
            area_h = h1 - h0
            h0, h1 = max(h0, 0), min(h1, H)
            for ow in range(Wo):
                w0 = ow * sw - pw
                w1 = min(w0 + kw, W + pw)
                area = area_h * (w1 - w0)              # Caffe's divisor counts the padding
                w0, w1 = max(w0, 0), min(w1, W)
                if backward:
                    g = y[n, c, oh, ow] / area
                    for ih in range(h0, h1):
                        for iw in range(w0, w1):
                            x[n, c, ih, iw] += g
                else:
                    s = 0.0
                    for ih in range(h0, h1):
                        for iw in range(w0, w1):
                            s += x[n, c, ih, iw]
                    y[n, c, oh, ow] = s / area


def avg_pool2d(x, kernel, stride, pad, ceil_mode):
    N, C, H, W = x.shape
    Ho = pool_out(H, kernel[0], stride[0], pad[0], ceil_mode)
    Wo = pool_out(W, kernel[1], stride[1], pad[1], ceil_mode)
    y = np.empty((N, C, Ho, Wo), dtype=x.dtype)
    _avg_pool(x, *kernel, *stride, *pad, y, False)
    return y


def avg_pool2d_backward(dout, x_shape, kernel, stride, pad, ceil_mode):
    dx = np.zeros(x_shape, dtype=dout.dtype)
    _avg_pool(dx, *kernel, *stride, *pad, dout, True)
    return dx


# ----------------------------------------------------------------------------- pointwise
# Pointwise kernels take flat 1-D views (made in Python: a reshape inside a parallel Numba
# kernel can silently become a copy, and the writes would be lost).
@njit(parallel=True, cache=True)
def _relu(x, slope, out):
    s = x.dtype.type(slope)
    for i in prange(x.size):
        v = x[i]
        out[i] = v if v > 0 else v * s


@njit(parallel=True, cache=True)
def _relu_back(dout, x, slope, out):
    s = dout.dtype.type(slope)
    for i in prange(x.size):
        out[i] = dout[i] if x[i] > 0 else dout[i] * s


def _flat(a):
    return np.ascontiguousarray(a).reshape(-1)


def relu(x, slope):
    out = np.empty(x.shape, dtype=x.dtype)
    _relu(_flat(x), slope, out.reshape(-1))
    return out


def relu_backward(dout, x, slope):
    out = np.empty(dout.shape, dtype=dout.dtype)
    _relu_back(_flat(dout), _flat(x), slope, out.reshape(-1))
    return out


@njit(parallel=True, cache=True)
def _dropout(x, u, p, y, mask):
    keep = x.dtype.type(1.0 / (1.0 - p))
    zero = x.dtype.type(0)
    for i in prange(x.size):
        m = keep if u[i] >= p else zero
        mask[i] = m
        y[i] = x[i] * m


def dropout(x, p, rng, train):
    if not train or p == 0:
        return x, None
    u = rng.random(x.size)           # the same draws as the reference: same rng, same mask
    y, mask = np.empty(x.shape, dtype=x.dtype), np.empty(x.shape, dtype=x.dtype)
    _dropout(_flat(x), u, p, y.reshape(-1), mask.reshape(-1))
    return y, mask


# ----------------------------------------------------------------------------- LRN
@njit(parallel=True, cache=True)
def _lrn_scale(x, size, alpha, k, scale):
    """scale[n, c, h, w] = k + alpha/size * sum of x^2 over channels c-pre .. c-pre+size-1,
    a running window sum down the channels of each pixel."""
    N, C, H, W = x.shape
    pre = (size - 1) // 2
    a = alpha / size
    for t in prange(N * H):
        n, h = t // H, t % H
        for w in range(W):
            acc = 0.0
            for c in range(min(C, size - pre - 1)):      # the window of channel 0, minus one
                acc += x[n, c, h, w] * x[n, c, h, w]
            for c in range(C):
                add = c + size - pre - 1
                if add < C:
                    acc += x[n, add, h, w] * x[n, add, h, w]
                scale[n, c, h, w] = k + a * acc
                drop = c - pre
                if drop >= 0:
                    acc -= x[n, drop, h, w] * x[n, drop, h, w]


@njit(parallel=True, cache=True)
def _lrn_back(dout, x, scale, size, alpha, beta, dx):
    N, C, H, W = x.shape
    pre = (size - 1) // 2
    coef = 2.0 * alpha * beta / size
    for t in prange(N * H):
        n, h = t // H, t % H
        for w in range(W):
            # t_c = dout_c * y_c / scale_c = dout_c * x_c * scale_c^(-beta-1); channel c
            # collects t over c' in [c - (size-1-pre), c + pre]
            acc = 0.0
            for c in range(min(C, pre)):
                acc += dout[n, c, h, w] * x[n, c, h, w] * scale[n, c, h, w] ** (-beta - 1)
            for c in range(C):
                add = c + pre
                if add < C:
                    acc += dout[n, add, h, w] * x[n, add, h, w] * scale[n, add, h, w] ** (-beta - 1)
                s = scale[n, c, h, w]
                dx[n, c, h, w] = dout[n, c, h, w] * s ** -beta - coef * x[n, c, h, w] * acc
                drop = c - (size - 1 - pre)
                if drop >= 0:
                    acc -= dout[n, drop, h, w] * x[n, drop, h, w] * scale[n, drop, h, w] ** (
                        -beta - 1)


def lrn(x, size, alpha, beta, k):
    x = np.ascontiguousarray(x)
    scale = np.empty_like(x)
    _lrn_scale(x, size, alpha, k, scale)
    return x * scale ** x.dtype.type(-beta)


def lrn_backward(dout, x, size, alpha, beta, k):
    x = np.ascontiguousarray(x)
    scale = np.empty_like(x)
    _lrn_scale(x, size, alpha, k, scale)
    dx = np.empty_like(x)
    _lrn_back(np.ascontiguousarray(dout), x, scale, size, alpha, beta, dx)
    return dx


# ----------------------------------------------------------------------------- loss
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


# ----------------------------------------------------------------------------- solver steps
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
        from .reference import sgd_update as ref
        return ref(param, grad, buf, lr, momentum, weight_decay)
    _sgd(*flat, float(lr), float(momentum), float(weight_decay))


def adam_update(param, grad, m, v, lr, beta1, beta2, eps, weight_decay, t):
    """Adam step t (1-based), in place (as reference.adam_update)."""
    flat = _flat_views(param, grad, m, v)
    if flat is None:
        from .reference import adam_update as ref
        return ref(param, grad, m, v, lr, beta1, beta2, eps, weight_decay, t)
    _adam(*flat, float(lr), float(beta1), float(beta2), float(eps), float(weight_decay),
          1.0 - beta1 ** t, 1.0 - beta2 ** t)
