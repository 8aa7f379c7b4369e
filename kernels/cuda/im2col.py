"""im2col / col2im on CUDA, the column buffer and its tiles: what conv.py feeds to the tiled GEMM
(gemm.py). Twin: kernels/reference.py, section "conv" (one product per kernel tap there; here
the taps laid out as the rows of a column matrix). The CPU's version: cpu/im2col.py.

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

from ..geometry import row_tiles
from .util import cuda, empty, launch


# ----------------------------------------------------------------------------- tiles and scratch
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
