"""3x3 stride-1 convolutions by Winograd's minimal filtering, F(2x2, 3x3) and F(4x4, 3x3): the
forward pass, dx (a convolution of dout with the turned weight) and dw, each 2.25x / 4x fewer
multiply-adds than im2col + GEMM. Twin: kernels/reference.py, section "conv" (the same
convolution, tap by tap). conv.py decides, through _winograd_tile, when this route runs.
"""
from __future__ import annotations

import numpy as np
from numba import njit, prange

from ..geometry import row_tiles
from .im2col import _flipped_weight, _scratch_matrix
from .threads import matmul
from .winograd_cl import _channels_last, _wino4_dout_cl, _wino4_in_cl, _wino4_out_cl


# ----------------------------------------------------------------------------- F(2x2, 3x3)
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


# ----------------------------------------------------------------------------- F(4x4, 3x3)
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


# ----------------------------------------------------------------------------- route and tiles
WINO_BUDGET = 8 << 20       # bytes of the larger of V and M per tile
WINO_MIN_BLOCKS = 1024      # ... but at least this many blocks: each GEMM stays wide,
WINO_MAX_BYTES = 64 << 20   # ... as long as V and M stay under this (they are kept: memory;
#                             16 MB saved only 14 MB of FCN-8s's step peak, for 10% on conv3-4)
WINO_MIN_CHANNELS = 16      # below this the thin GEMMs lose to one im2col GEMM
WINO_MIN_TOTAL_BLOCKS = {4: 100, 2: 150}   # blocks in the whole batch, per block size
WINO_TILES = (4, 2)         # block sizes tried, largest first
WINO_CL_MIN_CHANNELS = 16   # F(4x4) channels last from this many channels in and out ...
WINO_CL_MAX_PIXELS = 32 * 32   # ... on images up to this size (one tile of whole images)
WINO_CL_SMALL_PIXELS = 16 * 16   # ... and from WINO_CL_MIN_BLOCKS blocks up to this size
WINO_CL_MIN_BLOCKS = 32


def _wino_tiles(N, TH, TW, chans, itemsize, nxi=16):
    """Like _tiles, in blocks: (n0, n1, ty0, ty1); nxi transformed planes (16 or 36)."""
    per_block = nxi * chans * itemsize
    blocks = max(WINO_BUDGET // per_block, min(WINO_MIN_BLOCKS, WINO_MAX_BYTES // per_block), 1)
    return row_tiles(N, TH, blocks // TW)


def _channels_last_pays(m, Cg, Fg, hw, tiles, TH):
    """F(4x4) channels last (winograd_cl.py): enough channels in and out to fill a vector,
    and small images, each tile whole images (so that the copies cover what the blocks
    read)."""
    return m == 4 and min(Cg, Fg) >= WINO_CL_MIN_CHANNELS and \
        hw[0] * hw[1] <= WINO_CL_MAX_PIXELS and all(t[2:] == (0, TH) for t in tiles)


def _blocks(N, out_hw, m):
    return N * (-(-out_hw[0] // m)) * (-(-out_hw[1] // m))


def _winograd_tile(w_shape, stride, dilation, groups, out_hw, N):
    """The output block size of the Winograd route for this convolution: 4 (F(4x4, 3x3)), 2
    (F(2x2, 3x3)), or 0 for im2col + GEMM. 3x3, stride 1, enough channels, and enough blocks
    for wide GEMMs: the largest block with WINO_MIN_TOTAL_BLOCKS of them. On VGG16 at 224
    (2 cores): F(4x4) from conv1_2 to conv3_3 (56x56: 196 blocks), F(2x2) at conv4 (28x28:
    196 blocks), im2col at conv5 (14x14: 49 blocks), where its single GEMM is wider. On the
    tiny FCN's batch of 8: F(4x4) from 16 channels at 64x64 (forward+backward 11.2 -> 5.7 ms)
    down to 16x16 (128 blocks). Channels last (winograd_cl.py), F(4x4) pays with fewer
    blocks on small images: WINO_CL_MIN_BLOCKS of them up to WINO_CL_SMALL_PIXELS (conv4,
    8x128x8x8: 32 blocks, forward 1.1 -> 0.75 ms, backward 2.4 -> 1.5 against im2col; VGG16's
    conv5 at 224, 16 blocks, stays with im2col: 2.5x slower channels last)."""
    F, Cg, kh, kw = w_shape
    if (kh, kw) != (3, 3) or stride != (1, 1) or dilation != (1, 1) or \
            min(Cg, F // groups) < WINO_MIN_CHANNELS:
        return 0
    for m in WINO_TILES:
        if _blocks(N, out_hw, m) >= WINO_MIN_TOTAL_BLOCKS[m]:
            return m
    if 4 in WINO_TILES and min(Cg, F // groups) >= WINO_CL_MIN_CHANNELS and \
            out_hw[0] * out_hw[1] <= WINO_CL_SMALL_PIXELS and \
            _blocks(N, out_hw, 4) >= WINO_CL_MIN_BLOCKS:
        return 4
    return 0


# ----------------------------------------------------------------------------- drivers
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
    tiles = list(_wino_tiles(N, TH, TW, max(Cg, Fg), x.itemsize, nxi))
    if _channels_last_pays(m, Cg, Fg, x.shape[2:], tiles, TH):
        for n0, n1, _, _ in tiles:
            T = (n1 - n0) * TH * TW
            xt = np.empty((n1 - n0,) + x.shape[2:] + (Cg,), dtype=x.dtype)
            V = _scratch_matrix("a", nxi, T * Cg, x.dtype).reshape(nxi, T, Cg)
            M = _scratch_matrix("b", nxi, T * Fg, x.dtype).reshape(nxi, T, Fg)
            for g in range(groups):
                _channels_last(x, n0, n1, g * Cg, Cg, xt)
                _wino4_in_cl(xt, pad[0], pad[1], TH, TW, V)
                matmul(V, U[:, g * Fg:(g + 1) * Fg].transpose(0, 2, 1), out=M)
                _wino4_out_cl(M, bias[g * Fg:(g + 1) * Fg] if bias.size else bias, n0, g * Fg,
                              TH, TW, y)
        return y
    win, wout = (_wino_in, _wino_out) if m == 2 else (_wino4_in, _wino4_out)
    for n0, n1, ty0, ty1 in tiles:
        T = (n1 - n0) * (ty1 - ty0) * TW
        V = _scratch_matrix("a", nxi, Cg * T, x.dtype).reshape(nxi, Cg, T)
        M = _scratch_matrix("b", nxi, Fg * T, x.dtype).reshape(nxi, Fg, T)
        for g in range(groups):
            win(x, n0, n1, g * Cg, Cg, pad[0], pad[1], ty0, ty1, TW, V)
            if transpose:
                for xi in range(16):
                    matmul(U[_ROT[xi], g * Cg:(g + 1) * Cg].T, V[xi], out=M[xi])
            else:
                matmul(U[:, g * Fg:(g + 1) * Fg], V, out=M)
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
    tiles = list(_wino_tiles(N, TH, TW, max(Cg, Fg), x.itemsize, nxi))
    cl = _channels_last_pays(m, Cg, Fg, (H, W), tiles, TH)
    for n0, n1, ty0, ty1 in tiles:
        T = (n1 - n0) * (ty1 - ty0) * TW
        V = _scratch_matrix("a", nxi, Cg * T, x.dtype)
        D = _scratch_matrix("b", nxi, Fg * T, x.dtype)
        V, D = (V.reshape(nxi, T, Cg), D.reshape(nxi, T, Fg)) if cl else \
            (V.reshape(nxi, Cg, T), D.reshape(nxi, Fg, T))
        if cl:
            xt = np.empty((n1 - n0, H, W, Cg), dtype=x.dtype)
            gt = np.empty((n1 - n0, Ho, Wo, Fg), dtype=x.dtype)
        for g in range(groups):
            if cl:
                _channels_last(x, n0, n1, g * Cg, Cg, xt)
                _wino4_in_cl(xt, pad[0], pad[1], TH, TW, V)
                _channels_last(dout, n0, n1, g * Fg, Fg, gt)
                _wino4_dout_cl(gt, TH, TW, D)
                Dm, Vm = D.transpose(0, 2, 1), V             # dU[xi] = D[xi]^T V[xi]
            else:
                win(x, n0, n1, g * Cg, Cg, pad[0], pad[1], ty0, ty1, TW, V)
                wdout(dout, n0, n1, g * Fg, Fg, ty0, ty1, TW, D)
                Dm, Vm = D, V.transpose(0, 2, 1)             # dU[xi] = D[xi] V[xi]^T
            dst = dU[:, g * Fg:(g + 1) * Fg]
            if first:
                matmul(Dm, Vm, out=dst)
            else:                            # one transformed plane at a time: small scratch
                tmp = _scratch_matrix("c", Fg, Cg, x.dtype)
                for xi in range(nxi):
                    dst[xi] += matmul(Dm[xi], Vm[xi], out=tmp)
        first = False
    if m == 2:
        dw = np.empty(w_shape, dtype=x.dtype)
        _wino_weight_grad_kernel(dU, dw)
        return dw
    dwt = np.empty((F, 3, 3, Cg), dtype=x.dtype)
    _wino4_weight_grad_kernel(dU, dwt)
    return np.ascontiguousarray(dwt.transpose(0, 3, 1, 2))
