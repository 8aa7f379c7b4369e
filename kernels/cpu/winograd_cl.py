"""F(4x4, 3x3) Winograd transforms with the channels as the vector, for small images.
Twin: kernels/reference.py, section "conv" (as winograd.py, which drives these).

On small images a row of blocks is short (4 blocks at 16x16, 2 at 8x8) and winograd.py's
F(4x4) kernels, which vectorise along it, run at scalar speed. These take the channels as the
vector: the input (or dout) is first copied channels-last, each block's 6x6 patch is 36
vectors of C, V and M are (36, blocks, channels) and the GEMMs are V[xi] @ U[xi]^T. The same
transforms, term for term, as _wino4_in, _wino4_out and _wino4_dout. The input transform
alone, median ms on the 2-core dev machine (copy included): 8x64x16x16 0.35 -> 0.09,
8x128x8x8 0.42 -> 0.04, 8x32x32x32 0.39 -> 0.20, but 8x16x64x64 0.43 -> 0.50 and
1x128x112x112 3.0 -> 2.4: so images up to 32x32 only (winograd._channels_last_pays), where
it also lets F(4x4) run with fewer blocks (winograd._winograd_tile). AlexNet's conv3-5 on
100 patches of 13x13, forward and backward: 1.6-1.9x faster.
"""
from __future__ import annotations

import numpy as np
from numba import njit, prange


@njit(parallel=True, cache=True)
def _channels_last(x, n0, n1, c0, C, xt):
    """xt[nn, h, w, c] = x[n0 + nn, c0 + c, h, w]."""
    H, W = x.shape[2], x.shape[3]
    for t in prange((n1 - n0) * H):
        nn, h = t // H, t % H
        for c in range(C):
            for w in range(W):
                xt[nn, h, w, c] = x[n0 + nn, c0 + c, h, w]


@njit(cache=True)
def _patch(src, nn, h0, w0, P):
    """P[i, j, :] = src[nn, h0 + i, w0 + j, :] (channels last), zero outside src: the block
    patch both transforms below start from."""
    H, W, C = src.shape[1], src.shape[2], src.shape[3]
    for i in range(P.shape[0]):
        for j in range(P.shape[1]):
            h, w = h0 + i, w0 + j
            if 0 <= h < H and 0 <= w < W:
                for c in range(C):
                    P[i, j, c] = src[nn, h, w, c]
            else:
                for c in range(C):
                    P[i, j, c] = 0


@njit(parallel=True, cache=True)
def _wino4_in_cl(xt, ph, pw, TH, TW, V):
    """V[6i + j, t, c] = (B^T d B)[i, j], d the 6x6 patch of the padded xt (images, H, W, C)
    under block t = (nn*TH + ty)*TW + tx."""
    N, C = xt.shape[0], xt.shape[3]
    f4, f5, f2 = xt.dtype.type(4), xt.dtype.type(5), xt.dtype.type(2)
    for q in prange(N * TH):
        nn, ty = q // TH, q % TH
        D = np.empty((6, 6, C), dtype=xt.dtype)
        R = np.empty((6, 6, C), dtype=xt.dtype)
        for tx in range(TW):
            t = q * TW + tx
            _patch(xt, nn, 4 * ty - ph, 4 * tx - pw, D)
            for j in range(6):                       # B^T down the columns ...
                for c in range(C):
                    d0, d1, d2, d3, d4, d5 = D[0, j, c], D[1, j, c], D[2, j, c], D[3, j, c], \
                        D[4, j, c], D[5, j, c]
                    R[0, j, c] = f4 * d0 - f5 * d2 + d4
                    R[1, j, c] = d3 + d4 - f4 * (d1 + d2)
                    R[2, j, c] = d4 - d3 + f4 * (d1 - d2)
                    R[3, j, c] = d4 - d2 + f2 * (d3 - d1)
                    R[4, j, c] = d4 - d2 + f2 * (d1 - d3)
                    R[5, j, c] = f4 * d1 - f5 * d3 + d5
            for i in range(6):                       # ... then along each row
                for c in range(C):
                    d0, d1, d2, d3, d4, d5 = R[i, 0, c], R[i, 1, c], R[i, 2, c], R[i, 3, c], \
                        R[i, 4, c], R[i, 5, c]
                    V[6 * i, t, c] = f4 * d0 - f5 * d2 + d4
                    V[6 * i + 1, t, c] = d3 + d4 - f4 * (d1 + d2)
                    V[6 * i + 2, t, c] = d4 - d3 + f4 * (d1 - d2)
                    V[6 * i + 3, t, c] = d4 - d2 + f2 * (d3 - d1)
                    V[6 * i + 4, t, c] = d4 - d2 + f2 * (d1 - d3)
                    V[6 * i + 5, t, c] = f4 * d1 - f5 * d3 + d5


@njit(parallel=True, cache=True)
def _wino4_out_cl(M, bias, n0, f0, TH, TW, y):
    """y[n0 + nn, f0 + f, 4ty + p, 4tx + q] = (A^T m A)[p, q] (+ bias[f]), m = M[:, t, f] as
    6x6, t = (nn*TH + ty)*TW + tx; each f's four outputs of a block row stored together."""
    Ho, Wo = y.shape[2], y.shape[3]
    F = M.shape[2]
    N = M.shape[1] // (TH * TW)
    f2, f4, f8 = y.dtype.type(2), y.dtype.type(4), y.dtype.type(8)
    for q in prange(N * TH):
        nn, ty = q // TH, q % TH
        n = n0 + nn
        S = np.empty((4, 6, F), dtype=y.dtype)        # A^T down the columns
        for tx in range(TW):
            t = q * TW + tx
            for j in range(6):
                for f in range(F):
                    a1, a2, a3, a4 = M[6 + j, t, f], M[12 + j, t, f], M[18 + j, t, f], \
                        M[24 + j, t, f]
                    p12, m12, p34, m34 = a1 + a2, a1 - a2, a3 + a4, a3 - a4
                    S[0, j, f] = M[j, t, f] + p12 + p34
                    S[1, j, f] = m12 + f2 * m34
                    S[2, j, f] = p12 + f4 * p34
                    S[3, j, f] = m12 + f8 * m34 + M[30 + j, t, f]
            ow, nq = 4 * tx, min(4, Wo - 4 * tx)
            for p in range(min(4, Ho - 4 * ty)):
                oh = 4 * ty + p
                for f in range(F):
                    bf = bias[f] if bias.size > 0 else y.dtype.type(0)
                    e0, e1, e2, e3, e4, e5 = S[p, 0, f], S[p, 1, f], S[p, 2, f], S[p, 3, f], \
                        S[p, 4, f], S[p, 5, f]
                    p12, m12, p34, m34 = e1 + e2, e1 - e2, e3 + e4, e3 - e4
                    y0 = e0 + p12 + p34 + bf
                    y1 = m12 + f2 * m34 + bf
                    y2 = p12 + f4 * p34 + bf
                    y3 = m12 + f8 * m34 + e5 + bf
                    y[n, f0 + f, oh, ow] = y0
                    if nq > 1:                        # (the last block may be cut by the edge)
                        y[n, f0 + f, oh, ow + 1] = y1
                    if nq > 2:
                        y[n, f0 + f, oh, ow + 2] = y2
                    if nq > 3:
                        y[n, f0 + f, oh, ow + 3] = y3


@njit(parallel=True, cache=True)
def _wino4_dout_cl(gt, TH, TW, D):
    """D[6i + j, t, f] = (A g A^T)[i, j] for the 4x4 block t of gt (images, Ho, Wo, F), zero
    past its edge: the adjoint of _wino4_out_cl."""
    N, F = gt.shape[0], gt.shape[3]
    f2, f4, f8 = gt.dtype.type(2), gt.dtype.type(4), gt.dtype.type(8)
    for q in prange(N * TH):
        nn, ty = q // TH, q % TH
        G = np.empty((4, 4, F), dtype=gt.dtype)
        Q = np.empty((6, 4, F), dtype=gt.dtype)
        for tx in range(TW):
            t = q * TW + tx
            _patch(gt, nn, 4 * ty, 4 * tx, G)
            for m in range(4):                       # A down the columns ...
                for f in range(F):
                    a0, a1, a2, a3 = G[0, m, f], G[1, m, f], G[2, m, f], G[3, m, f]
                    e02, e13 = a0 + a2, a1 + a3
                    b02, b13 = a0 + f4 * a2, f2 * a1 + f8 * a3
                    Q[0, m, f] = a0
                    Q[1, m, f] = e02 + e13
                    Q[2, m, f] = e02 - e13
                    Q[3, m, f] = b02 + b13
                    Q[4, m, f] = b02 - b13
                    Q[5, m, f] = a3
            for i in range(6):                       # ... then along each row
                for f in range(F):
                    a0, a1, a2, a3 = Q[i, 0, f], Q[i, 1, f], Q[i, 2, f], Q[i, 3, f]
                    e02, e13 = a0 + a2, a1 + a3
                    b02, b13 = a0 + f4 * a2, f2 * a1 + f8 * a3
                    D[6 * i, t, f] = a0
                    D[6 * i + 1, t, f] = e02 + e13
                    D[6 * i + 2, t, f] = e02 - e13
                    D[6 * i + 3, t, f] = b02 + b13
                    D[6 * i + 4, t, f] = b02 - b13
                    D[6 * i + 5, t, f] = a3
