"""A hand-written tiled GEMM for CUDA: the one kernel that does the arithmetic of every
convolution (forward, both backwards, and the transposed convolution). Twin: kernels/reference.py,
section "conv" (there NumPy's einsum per kernel tap; on the CPU, numpy's BLAS: cpu/im2col.py).
The package exposes gemm() itself as minifcn.kernels.cuda.gemm, so that name is the function;
the tuning knobs below live on this module (importlib.import_module of its full name).

    C[b] (M x N) = op(A[b]) @ op(B[b])  (+ C[b] when accumulate),  op = identity or transpose

Arrays are passed the BLAS way: a flat buffer, an offset, a leading dimension (the row stride
of the row-major matrix as stored) and a batch stride. That lets the convolution driver point
the GEMM at a group's slice of the weights, a tile of output rows inside y, or one image of a
batch, without a single copy, and keeps one compiled kernel per dtype and micro-tile
whatever the views.

How the kernel works (the classic shared-memory blocking, as in the CUDA programming guide
and llm.c / siboehm's SGEMM notes):
  * each block owns a BM x BN tile of C; its TPB x TPB threads each own a TM x TM micro-tile
    of that, kept in registers (16 or 64 accumulators: several outputs per thread means each
    value loaded from shared memory is used TM times, not once);
  * the K dimension is walked BK at a time: the block copies a BK x BM slab of op(A) and a
    BK x BN slab of op(B) into shared memory (coalesced: consecutive threads read consecutive
    addresses of the matrix as stored, whichever way it is transposed), synchronises, and every
    thread does BK rank-1 updates of its micro-tile from shared memory;
  * a thread's micro-tile is strided (rows ty + i*TPB, columns tx + j*TPB), not a contiguous
    4x4 square, so the 16 threads of a half-warp read 16 consecutive shared-memory words (no
    bank conflicts) and write 16 consecutive elements of C (coalesced);
  * out-of-range rows/columns of edge tiles load zeros, so any M, N, K works; blocks walk the
    tiles with a grid-stride loop, so any grid size works too;
  * a product with too few tiles to fill the GPU and a long K (a weight gradient) is split
    along K into partial products that a second pass sums (split-K, below).
Not done (measure first): double-buffered slabs, vectorised float4 loads, tensor cores.
"""
from __future__ import annotations

import functools

import numpy as np

from .util import SIM, cuda, empty, flat, launch, sm_count, to_device, typed

BK = 8                # depth of one shared-memory slab
TPB = 16              # threads per block along each axis (TPB x TPB = 256 threads)
# The simulator pays for every thread it starts, so there the same kernel runs 4x4 threads
# per block. tests/test_cuda_kernels.py also runs the GPU's 16x16 layout.
if SIM:
    TPB = 4
# Two micro-tiles (TM x TM outputs of C per thread): 8x8 makes 128x128 block tiles on a GPU,
# each value read from shared memory used 8 times (16 shared loads per 64 FMAs, against 8 per
# 16 with 4x4), but a small product then has too few tiles to keep every SM busy; there 4x4
# (64x64 tiles) makes four times as many blocks. gemm_raw takes 8x8 when its tiles still give
# every SM LARGE_MIN_BLOCKS_PER_SM blocks of work.
TM_LARGE, TM_SMALL = 8, 4
LARGE_MIN_BLOCKS_PER_SM = 2
FORCE_TM = None       # tests and benchmarks pin one micro-tile here
MAX_BLOCKS = 4 if SIM else 65535   # a grid this size covers a 4096^2 C; bigger ones stride


def _registers(tm):
    """ptxas register cap: with 4x4 (16 accumulators), 128 leaves room for two 256-thread
    blocks per SM, no spills (it takes ~168 when left alone); 8x8 holds 64 accumulators and
    8 + 8 operands, and gets the most a thread may have."""
    return {} if SIM else {"max_registers": 128 if tm <= 4 else 255}


@functools.cache
def _gemm_kernel(dtype, tpb, tm, bk):
    """The kernel for one dtype and shape (TPB x TPB threads, TM x TM outputs each, BK-deep
    slabs): the shape is closed over, so the compiler sees constants and unrolls."""
    T = np.dtype(dtype).type
    tn = tm
    bm = bn = tpb * tm
    nthreads = tpb * tpb

    @cuda.jit(**_registers(tm))
    def gemm(M, N, K, nbatch,
             A, a_off, lda, a_bs, trans_a,
             B, b_off, ldb, b_bs, trans_b,
             C, c_off, ldc, c_bs, accumulate):
        sA = cuda.shared.array((bk, bm), T)      # sA[k, m] = op(A)[m0 + m, k0 + k]
        sB = cuda.shared.array((bk, bn), T)      # sB[k, n] = op(B)[k0 + k, n0 + n]
        acc = cuda.local.array((tm, tn), T)
        a_reg = cuda.local.array(tm, T)
        b_reg = cuda.local.array(tn, T)
        tx = cuda.threadIdx.x
        ty = cuda.threadIdx.y
        tid = ty * tpb + tx
        zero = T(0)
        tiles_m = (M + bm - 1) // bm
        tiles_n = (N + bn - 1) // bn
        for tile in range(cuda.blockIdx.x, nbatch * tiles_m * tiles_n, cuda.gridDim.x):
            b = tile // (tiles_m * tiles_n)
            m0 = (tile // tiles_n) % tiles_m * bm
            n0 = tile % tiles_n * bn
            a0 = a_off + b * a_bs
            b0 = b_off + b * b_bs
            for i in range(tm):
                for j in range(tn):
                    acc[i, j] = zero
            for k0 in range(0, K, bk):
                # Stage the slabs. The index order follows the stored layout so that
                # neighbouring threads read neighbouring addresses.
                for l in range(tid, bk * bm, nthreads):
                    if trans_a:                  # A stored K x M: walk along m
                        kk = l // bm
                        mm = l - kk * bm
                    else:                        # A stored M x K: walk along k
                        mm = l // bk
                        kk = l - mm * bk
                    gm = m0 + mm
                    gk = k0 + kk
                    v = zero
                    if gm < M and gk < K:
                        if trans_a:
                            v = A[a0 + gk * lda + gm]
                        else:
                            v = A[a0 + gm * lda + gk]
                    sA[kk, mm] = v
                for l in range(tid, bk * bn, nthreads):
                    if trans_b:                  # B stored N x K: walk along k
                        nn = l // bk
                        kk = l - nn * bk
                    else:                        # B stored K x N: walk along n
                        kk = l // bn
                        nn = l - kk * bn
                    gn = n0 + nn
                    gk = k0 + kk
                    v = zero
                    if gn < N and gk < K:
                        if trans_b:
                            v = B[b0 + gn * ldb + gk]
                        else:
                            v = B[b0 + gk * ldb + gn]
                    sB[kk, nn] = v
                cuda.syncthreads()
                for kk in range(bk):             # BK rank-1 updates of the micro-tile
                    for i in range(tm):
                        a_reg[i] = sA[kk, ty + i * tpb]
                    for j in range(tn):
                        b_reg[j] = sB[kk, tx + j * tpb]
                    for i in range(tm):
                        for j in range(tn):
                            acc[i, j] += a_reg[i] * b_reg[j]
                cuda.syncthreads()               # the slabs are overwritten next round
            c0 = c_off + b * c_bs
            for i in range(tm):
                r = m0 + ty + i * tpb
                if r < M:
                    for j in range(tn):
                        c = n0 + tx + j * tpb
                        if c < N:
                            if accumulate:
                                C[c0 + r * ldc + c] += acc[i, j]
                            else:
                                C[c0 + r * ldc + c] = acc[i, j]
    return gemm


def _micro_tile(M, N, nbatch):
    """8x8 when C is at least one big tile each way (conv1's 64 filters in a 128-row tile
    would leave half the threads multiplying zeros) and there are enough tiles; else 4x4."""
    if FORCE_TM is not None:
        return FORCE_TM
    big = TPB * TM_LARGE
    tiles = nbatch * -(-M // big) * -(-N // big)
    fits = M >= big and N >= big
    return TM_LARGE if fits and tiles >= LARGE_MIN_BLOCKS_PER_SM * sm_count() else TM_SMALL


def gemm_raw(M, N, K, A, a_off, lda, B, b_off, ldb, C, c_off, ldc, *, trans_a=False,
             trans_b=False, accumulate=False, nbatch=1, a_bs=0, b_bs=0, c_bs=0, split=True):
    """BLAS-style strided-batched GEMM on flat device buffers A, B, C (one dtype):
    for b < nbatch: C[b] (M x N, row stride ldc, at c_off + b*c_bs) = op(A[b]) @ op(B[b])
    (+= when accumulate). op(A[b]) is M x K, stored M x K (or K x M if trans_a) with row
    stride lda at a_off + b*a_bs; likewise op(B[b]) is K x N, stored K x N (N x K if trans_b).
    Batches must not write overlapping parts of C (they run concurrently). A single product
    with few tiles of C and a long K is split along K (see below) unless split=False."""
    if M <= 0 or N <= 0 or nbatch <= 0:
        return
    tm = _micro_tile(M, N, nbatch)
    bm = TPB * tm
    tiles = nbatch * -(-M // bm) * -(-N // bm)
    splits = _splits(tiles, K) if split and nbatch == 1 else 1
    if splits > 1:
        return _gemm_split_k(splits, M, N, K, A, a_off, lda, B, b_off, ldb, C, c_off, ldc,
                             trans_a, trans_b, accumulate)
    _gemm_kernel(C.dtype, TPB, tm, BK)[min(tiles, MAX_BLOCKS), (TPB, TPB)](
        M, N, K, nbatch, A, a_off, lda, a_bs, bool(trans_a), B, b_off, ldb, b_bs,
        bool(trans_b), C, c_off, ldc, c_bs, bool(accumulate))


# ----------------------------------------------------------------------------- split-K
# A weight gradient is a small C with a very long K (conv1_2 of VGG at 500x500: 64 x 576 from
# K = 490,000 pixels): its 9 tiles would keep 9 SMs busy and leave the rest idle. Split-K cuts
# K into slices, computes one partial C per slice as a batch of the same kernel (the batch
# strides step along K), and a second pass sums the partials in a fixed order, so the result
# stays deterministic (no atomics).
SPLIT_MIN_K = 512           # no slice shallower than this
_partials = {}              # dtype -> flat buffer for the partial products, reused


def _splits(tiles, K):
    target = MAX_BLOCKS if SIM else 4 * sm_count()      # ~4 blocks per SM
    if tiles >= target or K < 2 * SPLIT_MIN_K:
        return 1
    return int(min(-(-target // tiles), K // SPLIT_MIN_K, 64))


@typed
def _split_sum_kernel(T):
    @cuda.jit
    def kernel(part, splits, M, N, C, c_off, ldc, accumulate):
        """C[r, c] (+)= sum over s of part[s, r, c], one thread per element of C."""
        for t in range(cuda.grid(1), M * N, cuda.gridsize(1)):
            s = T(0)
            for k in range(splits):
                s += part[k * M * N + t]
            i = c_off + (t // N) * ldc + t % N
            if accumulate:
                C[i] += s
            else:
                C[i] = s
    return kernel


def _gemm_split_k(splits, M, N, K, A, a_off, lda, B, b_off, ldb, C, c_off, ldc, trans_a,
                  trans_b, accumulate):
    chunk = -(-K // splits)
    chunk = -(-chunk // BK) * BK                 # whole slabs per slice
    splits = -(-K // chunk)
    need = splits * M * N
    part = _partials.get(C.dtype)
    if part is None or part.size < need:
        part = _partials[C.dtype] = empty((need,), C.dtype)
    # Moving one slice along K: down the rows of a matrix stored K x ..., along the columns
    # of one stored ... x K.
    a_step = chunk * lda if trans_a else chunk
    b_step = chunk if trans_b else chunk * ldb
    full = splits - 1                            # slices of exactly `chunk`, as one batch
    gemm_raw(M, N, chunk, A, a_off, lda, B, b_off, ldb, part, 0, N, trans_a=trans_a,
             trans_b=trans_b, nbatch=full, a_bs=a_step, b_bs=b_step, c_bs=M * N, split=False)
    gemm_raw(M, N, K - full * chunk, A, a_off + full * a_step, lda, B, b_off + full * b_step,
             ldb, part, full * M * N, N, trans_a=trans_a, trans_b=trans_b, split=False)
    _split_sum_kernel(C.dtype)[launch(M * N)](part, splits, M, N, C, c_off, ldc,
                                               bool(accumulate))


def gemm(a, b, c=None, trans_a=False, trans_b=False, accumulate=False):
    """c = op(a) @ op(b) (+ c when accumulate) on the device; op transposes when asked.

    a: (M, K), or (K, M) with trans_a;  b: (K, N), or (N, K) with trans_b;  c: (M, N).
    Host arrays are copied over; returns the device array c (new unless given)."""
    a, b = to_device(a), to_device(b)
    if a.dtype != b.dtype:
        raise ValueError(f"gemm: a is {a.dtype} but b is {b.dtype}")
    M, K = a.shape[::-1] if trans_a else a.shape
    Kb, N = b.shape[::-1] if trans_b else b.shape
    if K != Kb:
        raise ValueError(f"gemm: op(a) is {M}x{K} but op(b) is {Kb}x{N}")
    if c is None:
        if accumulate:
            raise ValueError("gemm: accumulate needs an output array c")
        c = empty((M, N), a.dtype)
    elif tuple(c.shape) != (M, N) or c.dtype != a.dtype or not c.is_c_contiguous():
        raise ValueError(f"gemm: c must be a contiguous {M}x{N} {a.dtype} device array, got "
                         f"{tuple(c.shape)} {c.dtype}")
    gemm_raw(M, N, K, flat(a), 0, a.shape[1], flat(b), 0, b.shape[1], flat(c), 0, N,
             trans_a=trans_a, trans_b=trans_b, accumulate=accumulate)
    return c
