"""Convolution on CUDA as im2col + tiled GEMM, and transposed convolution as the same two
loops run backwards (its forward is col2im(W^T x), its backward im2col).

The column matrix of a big image is huge (conv1_2 of VGG16 at 500x500 with FCN's pad 100
would need 1.1 GB), so, as on the CPU, it is built for a tile of output rows at a time and
never exceeds COL_BUDGET bytes; small images go the other way: several whole images share one
tile, and a strided-batched GEMM handles all of them in one launch.

Layout of a tile's column buffer for images n0..n1 and output rows r0..r1 (R = r1 - r0,
P = R*Wo, L = (n1 - n0)*P):
    col[((c*kh + i)*kw + j)*L + (n - n0)*P + (oh - r0)*Wo + ow] = xpad[n, c, oh*sh + i*dh,
                                                                      ow*sw + j*dw]
so the rows of group g are the contiguous block [g*Cg*kh*kw, (g+1)*Cg*kh*kw) and image n is
the column block starting at (n - n0)*P: both are plain offsets for the GEMM.
"""
from __future__ import annotations

from .cuda_gemm import gemm_raw
from .geometry import row_tiles
from .cuda_util import cuda, empty, flat, launch

COL_BUDGET = 64 << 20      # bytes of im2col buffer per tile
_scratch_bufs = {}         # dtype -> flat device buffer, grown on demand and reused


def _scratch(dtype, n):
    """A flat device buffer of >= n elements, kept between calls like Caffe's shared col
    buffer, so a training step does not cudaMalloc/cudaFree a column matrix per layer.
    (Ops run one after another on the default stream, so one buffer per dtype is safe.)"""
    buf = _scratch_bufs.get(dtype)
    if buf is None or buf.size < n:
        buf = _scratch_bufs[dtype] = empty((max(n, 1),), dtype)
    return buf


def _tiles(N, Ho, Wo, K, itemsize):
    """(n0, n1, r0, r1) tiles whose column matrix (K x (n1-n0)(r1-r0)Wo) fits COL_BUDGET
    (one output row at least, however wide)."""
    return row_tiles(N, Ho, COL_BUDGET // max(1, K * Wo * itemsize))


# ----------------------------------------------------------------------------- im2col / col2im
@cuda.jit
def _im2col_kernel(x, n0, nimg, kh, kw, sh, sw, ph, pw, dh, dw, r0, R, Wo, col):
    """One thread per column entry, walking the flat buffer in order: consecutive threads
    write consecutive addresses (coalesced) and, at stride 1, read neighbouring pixels."""
    C, H, W = x.shape[1], x.shape[2], x.shape[3]
    P = R * Wo
    L = nimg * P
    for t in range(cuda.grid(1), C * kh * kw * L, cuda.gridsize(1)):
        k = t // L
        q = t - k * L
        nn = q // P
        p = q - nn * P
        oh = r0 + p // Wo
        ow = p % Wo
        c = k // (kh * kw)
        i = (k // kw) % kh
        j = k % kw
        h = oh * sh + i * dh - ph
        w = ow * sw + j * dw - pw
        if 0 <= h < H and 0 <= w < W:
            col[t] = x[n0 + nn, c, h, w]
        else:
            col[t] = 0


@cuda.jit
def _col2im_kernel(col, n0, nimg, kh, kw, sh, sw, ph, pw, dh, dw, r0, R, Wo, h_lo, h_hi, dx):
    """dx[n, c, h, w] += every column entry that im2col copied from (h, w).

    A gather, not a scatter: one thread per input pixel of rows [h_lo, h_hi) finds the few
    output positions whose window covers it (oh in [ceil((h+ph-(kh-1)dh)/sh), (h+ph)/sh], the
    tap i = (h+ph-oh*sh)/dh when that divides) and sums their entries. Each thread owns its
    pixel, so there are no atomics and the result does not depend on thread timing. For the
    k64/s32 upsampling that is 2x2 taps per pixel, not 64x64."""
    C, W = dx.shape[1], dx.shape[3]
    P = R * Wo
    L = nimg * P
    rows = h_hi - h_lo
    for t in range(cuda.grid(1), nimg * C * rows * W, cuda.gridsize(1)):
        w = t % W
        h = h_lo + (t // W) % rows
        c = (t // (W * rows)) % C
        nn = t // (W * rows * C)
        hp = h + ph
        wp = w + pw
        oh_lo = max(r0, -((-(hp - (kh - 1) * dh)) // sh))       # ceil division
        oh_hi = min(r0 + R - 1, hp // sh)
        ow_lo = max(0, -((-(wp - (kw - 1) * dw)) // sw))
        ow_hi = min(Wo - 1, wp // sw)
        acc = dx[n0 + nn, c, h, w]
        for oh in range(oh_lo, oh_hi + 1):
            di = hp - oh * sh
            if di % dh == 0:
                row = (c * kh + di // dh) * kw
                base = nn * P + (oh - r0) * Wo
                for ow in range(ow_lo, ow_hi + 1):
                    dj = wp - ow * sw
                    if dj % dw == 0:
                        acc += col[(row + dj // dw) * L + base + ow]
        dx[n0 + nn, c, h, w] = acc


def _im2col(x, n0, n1, kh, kw, stride, pad, dilation, r0, r1, Wo, col):
    total = x.shape[1] * kh * kw * (n1 - n0) * (r1 - r0) * Wo
    _im2col_kernel[launch(total)](x, n0, n1 - n0, kh, kw, *stride, *pad, *dilation,
                                  r0, r1 - r0, Wo, col)


def _col2im(col, n0, n1, kh, kw, stride, pad, dilation, r0, r1, Wo, dx):
    """Add the tile's columns back into dx (only the input rows the tile's windows touch)."""
    H = dx.shape[2]
    h_lo = max(0, r0 * stride[0] - pad[0])
    h_hi = min(H, (r1 - 1) * stride[0] + (kh - 1) * dilation[0] - pad[0] + 1)
    if h_hi <= h_lo:
        return
    total = (n1 - n0) * dx.shape[1] * (h_hi - h_lo) * dx.shape[3]
    _col2im_kernel[launch(total)](col, n0, n1 - n0, kh, kw, *stride, *pad, *dilation,
                                  r0, r1 - r0, Wo, h_lo, h_hi, dx)


# ----------------------------------------------------------------------------- drivers
# All three take device arrays of one dtype, C-contiguous; w is (F, C/groups, kh, kw) in the
# convolution's own sense (F outputs from C inputs), whatever op calls them.
def forward(x, w, y, stride, pad, dilation, groups, accumulate):
    """y (N, F, Ho, Wo) (+)= conv(x, w): per tile, im2col then for each group
    y_g[n] (Fg x P) = w_g (Fg x K) @ col_g[n] (K x P), one batched GEMM over the tile's images."""
    N, C, H, W = x.shape
    F, Cg, kh, kw = w.shape
    Ho, Wo = y.shape[2:]
    Fg, K = F // groups, Cg * kh * kw
    HW = Ho * Wo
    wf, yf = flat(w), flat(y)
    for n0, n1, r0, r1 in _tiles(N, Ho, Wo, C * kh * kw, y.dtype.itemsize):
        P, L = (r1 - r0) * Wo, (n1 - n0) * (r1 - r0) * Wo
        col = _scratch(y.dtype, C * kh * kw * L)
        _im2col(x, n0, n1, kh, kw, stride, pad, dilation, r0, r1, Wo, col)
        for g in range(groups):
            gemm_raw(Fg, P, K, wf, g * Fg * K, K, col, g * K * L, L,
                     yf, (n0 * F + g * Fg) * HW + r0 * Wo, HW, accumulate=accumulate,
                     nbatch=n1 - n0, a_bs=0, b_bs=P, c_bs=F * HW)


def backward_data(dout, w, dx, stride, pad, dilation, groups):
    """dx (N, C, H, W) += conv's input gradient: per tile, col_g[n] (K x P) = w_g^T (K x Fg)
    @ dout_g[n] (Fg x P) for every image in one batched GEMM, then col2im adds the columns back
    onto the pixels they came from."""
    N, C, H, W = dx.shape
    F, Cg, kh, kw = w.shape
    Ho, Wo = dout.shape[2:]
    Fg, K = F // groups, Cg * kh * kw
    HW = Ho * Wo
    wf, df = flat(w), flat(dout)
    for n0, n1, r0, r1 in _tiles(N, Ho, Wo, C * kh * kw, dx.dtype.itemsize):
        P, L = (r1 - r0) * Wo, (n1 - n0) * (r1 - r0) * Wo
        col = _scratch(dx.dtype, C * kh * kw * L)
        for g in range(groups):
            gemm_raw(K, P, Fg, wf, g * Fg * K, K, df, (n0 * F + g * Fg) * HW + r0 * Wo, HW,
                     col, g * K * L, L, trans_a=True,
                     nbatch=n1 - n0, a_bs=0, b_bs=F * HW, c_bs=P)
        _col2im(col, n0, n1, kh, kw, stride, pad, dilation, r0, r1, Wo, dx)


def backward_weight(dout, x, dw, stride, pad, dilation, groups):
    """dw (F, Cg, kh, kw) += conv's weight gradient: per tile and image,
    dw_g (Fg x K) += dout_g[n] (Fg x P) @ col_g[n]^T (P x K). Images are separate GEMMs here:
    they all add into the same dw, so they cannot run as concurrent batches."""
    N, C, H, W = x.shape
    F, Cg, kh, kw = dw.shape
    Ho, Wo = dout.shape[2:]
    Fg, K = F // groups, Cg * kh * kw
    HW = Ho * Wo
    dwf, df = flat(dw), flat(dout)
    for n0, n1, r0, r1 in _tiles(N, Ho, Wo, C * kh * kw, dw.dtype.itemsize):
        P, L = (r1 - r0) * Wo, (n1 - n0) * (r1 - r0) * Wo
        col = _scratch(dw.dtype, C * kh * kw * L)
        _im2col(x, n0, n1, kh, kw, stride, pad, dilation, r0, r1, Wo, col)
        for n in range(n0, n1):
            for g in range(groups):
                gemm_raw(Fg, K, P, df, (n * F + g * Fg) * HW + r0 * Wo, HW,
                         col, g * K * L + (n - n0) * P, L, dwf, g * Fg * K, K,
                         trans_b=True, accumulate=True)
