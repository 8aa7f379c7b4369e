"""The CUDA kernels (kernels/cuda/) against the NumPy reference, run in Numba's simulator.

No GPU is needed: NUMBA_ENABLE_CUDASIM=1 makes numba.cuda run every CUDA thread as a Python
thread. That is slow (~0.1 ms per thread), so shapes are tiny and the simulator launches only a
few small blocks; every kernel walks its work with a grid-stride loop, so most cases here have
more work items than threads and exercise the stride. On a machine with a GPU and the variable
unset, the same tests run on the GPU.
"""
import os

# Must happen before numba.cuda is first imported: tests/conftest.py sets it at session start;
# this line covers running this file without that conftest.
os.environ.setdefault("NUMBA_ENABLE_CUDASIM", "1")

import importlib  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402

import numpy as np  # noqa: E402
import pytest  # noqa: E402

from cuda_support import load_cuda  # noqa: E402

K = load_cuda()
from minifcn.kernels import reference as R  # noqa: E402
from minifcn.kernels.cuda import im2col as cuda_im2col  # noqa: E402
# The module: on the package, the name gemm is the function (K.gemm).
cuda_gemm = importlib.import_module("minifcn.kernels.cuda.gemm")

DTYPES = [np.float32, np.float64]


def tol(dtype):
    return dict(rtol=2e-4, atol=2e-5) if dtype == np.float32 else dict(rtol=1e-9, atol=1e-11)


def host(a):
    return None if a is None else K.to_host(a)


def close(got, want, dtype):
    got = host(got)
    assert got.shape == want.shape, (got.shape, want.shape)
    assert got.dtype == want.dtype, (got.dtype, want.dtype)
    np.testing.assert_allclose(got, want, **tol(dtype))


def randn(rng, shape, dtype):
    return rng.standard_normal(shape).astype(dtype)


# ----------------------------------------------------------------------------- helpers
def test_device_helpers(rng):
    a = randn(rng, (2, 3), np.float32)
    d = K.to_device(a)
    assert K.is_device_array(d) and not K.is_device_array(a)
    assert K.to_device(d) is d                      # device arrays pass through
    np.testing.assert_array_equal(K.to_host(d), a)
    # A non-contiguous host view becomes a contiguous device array.
    t = K.to_device(a.T)
    assert t.is_c_contiguous() and tuple(t.shape) == (3, 2)
    np.testing.assert_array_equal(K.to_host(t), a.T)
    # label[None] has stride 0 on its new axis; numba-cuda's reshape refuses such an array
    # on a GPU (the simulator's does not), so it must arrive with the textbook strides.
    lab = np.asarray(rng.integers(0, 3, (5, 7)), dtype=np.int32)[None]
    assert lab.strides[0] == 0 or lab.strides[0] == lab.nbytes
    d = K.to_device(lab)
    assert tuple(d.strides) == (140, 28, 4)
    np.testing.assert_array_equal(K.to_host(K.flat(d)), lab.ravel())


def test_dispatch_table_finds_every_op():
    from minifcn import kernels
    for op in kernels.OPS:
        assert kernels.get(op, "cuda") is getattr(K, op)


def test_import_without_cuda_says_why():
    """With the simulator off and no GPU, importing the module is one clear ImportError."""
    code = ("import minifcn.kernels as k\n"
            "try:\n    k.get('relu', 'cuda')\nexcept k.DeviceUnavailable as e:\n    print(e)\n"
            "else:\n    print('GPU')\n")
    env = dict(os.environ, NUMBA_ENABLE_CUDASIM="0", PYTHONPATH=os.pathsep.join(sys.path))
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                         timeout=120)
    line = out.stdout.strip()
    if line == "GPU":
        pytest.skip("a real GPU is present")
    assert "device 'cuda' is not available" in line, out.stdout + out.stderr
    assert "NUMBA_ENABLE_CUDASIM" in line or "numba-cuda" in line, line


def test_simulator_shared_array_is_one_per_block(monkeypatch):
    """In the simulator, every thread of a block that asks for a shared array on one line gets
    the same array, even when the threads ask at the same moment. Numba's own allocator looks
    the array up and creates it without a lock, so two threads could each make their own; that
    made the GEMM (and a cuda training step) wrong now and then on a busy machine.
    kernels/cuda/util.py installs a locked allocator; here np.empty is made slow, so without
    the lock every thread would find no array and make one."""
    if not K.SIM:
        pytest.skip("a real GPU has real shared memory")
    import threading
    import time

    from numba.cuda.simulator import kernelapi
    empty = np.empty

    def slow_empty(*args, **kwargs):
        time.sleep(0.02)
        return empty(*args, **kwargs)
    monkeypatch.setattr(np, "empty", slow_empty)
    shared, got, start = kernelapi.FakeCUDAShared(0), [], threading.Barrier(8)

    def thread():
        start.wait()
        got.append(shared.array((4,), np.float64))     # one line: one shared array
        got.append(shared.array((2,), np.float32))     # another line: another array
    threads = [threading.Thread(target=thread) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    firsts = {id(a) for a in got if a.shape == (4,)}
    seconds = {id(a) for a in got if a.shape == (2,)}
    assert len(got) == 16 and len(firsts) == 1 and len(seconds) == 1 and firsts != seconds


# ----------------------------------------------------------------------------- GEMM
@pytest.fixture(params=[("as configured", 4), ("as configured", 8), ("GPU layout", 4),
                        ("GPU layout", 8)], ids=lambda p: f"{p[0]} {p[1]}x{p[1]}")
def gemm_tiles(request, monkeypatch):
    """The GEMM with each micro-tile (4x4 and 8x8 outputs per thread) as configured (in the
    simulator: 4x4 threads), then, in the simulator, in the GPU's layout too (16x16 threads:
    64x64 and 128x128 tiles of C)."""
    layout, tm = request.param
    if layout == "GPU layout":
        if not K.SIM:
            pytest.skip("the GPU layout is the configured one")
        monkeypatch.setattr(cuda_gemm, "TPB", 16)
    monkeypatch.setattr(cuda_gemm, "FORCE_TM", tm)


def test_gemm_micro_tile_choice(monkeypatch):
    """8x8 micro-tiles while C fills big tiles each way and gives every SM two blocks, else
    4x4."""
    monkeypatch.setattr(cuda_gemm, "sm_count", lambda: 4)
    big = cuda_gemm.TPB * cuda_gemm.TM_LARGE
    assert cuda_gemm._micro_tile(8 * big, big, 1) == cuda_gemm.TM_LARGE      # 8 tiles
    assert cuda_gemm._micro_tile(4 * big, big, 2) == cuda_gemm.TM_LARGE      # 2 x 4 tiles
    assert cuda_gemm._micro_tile(7 * big, big, 1) == cuda_gemm.TM_SMALL      # 7 < 2 x 4
    assert cuda_gemm._micro_tile(big // 2, 100 * big, 1) == cuda_gemm.TM_SMALL  # half empty


@pytest.mark.parametrize("trans_a,trans_b", [(False, False), (True, False), (False, True),
                                             (True, True)])
@pytest.mark.parametrize("dtype", DTYPES)
def test_gemm_odd_sizes(rng, trans_a, trans_b, dtype, gemm_tiles):
    M, N, Kd = 17, 33, 9
    a = randn(rng, (Kd, M) if trans_a else (M, Kd), dtype)
    b = randn(rng, (N, Kd) if trans_b else (Kd, N), dtype)
    want = (a.T if trans_a else a) @ (b.T if trans_b else b)
    close(K.gemm(a, b, trans_a=trans_a, trans_b=trans_b), want, dtype)


def test_gemm_accumulate_and_many_tiles(rng, monkeypatch):
    """More tiles than blocks (the grid-stride loop over tiles) and C += A @ B."""
    monkeypatch.setattr(cuda_gemm, "MAX_BLOCKS", 2)
    a, b = randn(rng, (70, 11), np.float64), randn(rng, (11, 130), np.float64)
    c0 = randn(rng, (70, 130), np.float64)
    c = K.to_device(c0)
    K.gemm(a, b, c, accumulate=True)
    close(c, c0 + a @ b, np.float64)


@pytest.mark.parametrize("trans_a,trans_b", [(False, True), (True, False)])
def test_gemm_split_k(rng, monkeypatch, trans_a, trans_b):
    """A small C with a long K is cut into K-slices (a batch of partial products, then a
    summing pass); the last slice is shorter."""
    monkeypatch.setattr(cuda_gemm, "SPLIT_MIN_K", 8)
    M, N, Kd = 5, 7, 70
    assert cuda_gemm._splits(1, Kd) > 1
    a = randn(rng, (Kd, M) if trans_a else (M, Kd), np.float64)
    b = randn(rng, (N, Kd) if trans_b else (Kd, N), np.float64)
    c0 = randn(rng, (M, N), np.float64)
    c = K.to_device(c0)
    K.gemm(a, b, c, trans_a=trans_a, trans_b=trans_b, accumulate=True)
    close(c, c0 + (a.T if trans_a else a) @ (b.T if trans_b else b), np.float64)


# ----------------------------------------------------------------------------- convolution
CONV_CASES = [
    # (N, C, H, W), (F, kh, kw), stride, pad, dilation, groups, bias
    ((2, 3, 6, 6), (4, 3, 3), (1, 1), (1, 1), (1, 1), 1, True),
    ((1, 2, 7, 5), (3, 3, 2), (2, 3), (0, 1), (1, 1), 1, True),
    ((1, 2, 7, 7), (2, 3, 3), (1, 2), (2, 1), (2, 1), 1, False),
    ((2, 4, 5, 6), (4, 2, 3), (2, 1), (1, 0), (1, 2), 2, True),
    ((1, 3, 4, 5), (2, 1, 1), (1, 1), (0, 0), (1, 1), 1, True),
]


def conv_data(rng, case, dtype):
    xs, (F, kh, kw), stride, pad, dil, groups, bias = case
    x = randn(rng, xs, dtype)
    w = randn(rng, (F, xs[1] // groups, kh, kw), dtype)
    b = randn(rng, (F,), dtype) if bias else None
    return x, w, b, (stride, pad, dil, groups)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case", CONV_CASES)
def test_conv2d_forward_backward(rng, case, dtype):
    x, w, b, geo = conv_data(rng, case, dtype)
    y = R.conv2d(x, w, b, *geo)
    close(K.conv2d(x, w, b, *geo), y, dtype)
    dout = randn(rng, y.shape, dtype)
    for got, want in zip(K.conv2d_backward(dout, x, w, *geo), R.conv2d_backward(dout, x, w, *geo)):
        close(got, want, dtype)


def test_conv2d_row_tiles_and_flags(rng, monkeypatch):
    """A tiny COL_BUDGET forces several row tiles per image (with the last tile short), a
    small SPLIT_MIN_K splits the weight-gradient GEMMs along K; the need_dx / need_dw flags
    skip their work."""
    monkeypatch.setattr(cuda_gemm, "SPLIT_MIN_K", 4)
    case = ((2, 2, 7, 6), (3, 3, 3), (2, 1), (1, 1), (1, 1), 1, True)   # y: (2, 3, 4, 6)
    x, w, b, geo = conv_data(rng, case, np.float64)
    monkeypatch.setattr(cuda_im2col, "COL_BUDGET", 3 * 18 * 6 * 8)     # 3 output rows per tile
    assert list(cuda_im2col._tiles(2, 4, 6, 18, 8)) == [(0, 1, 0, 3), (0, 1, 3, 4), (1, 2, 0, 3),
                                                      (1, 2, 3, 4)]
    y = R.conv2d(x, w, b, *geo)
    close(K.conv2d(x, w, b, *geo), y, np.float64)
    dout = randn(rng, y.shape, np.float64)
    rdx, rdw, rdb = R.conv2d_backward(dout, x, w, *geo)
    dx, dw, db = K.conv2d_backward(dout, x, w, *geo, need_dx=True, need_dw=False)
    assert dw is None
    close(dx, rdx, np.float64)
    close(db, rdb, np.float64)
    dx, dw, _ = K.conv2d_backward(dout, x, w, *geo, need_dx=False, need_dw=True)
    assert dx is None
    close(dw, rdw, np.float64)


DECONV_CASES = [
    # (N, C, H, W), (F, kh, kw), stride, pad
    ((1, 2, 3, 3), (3, 4, 4), (2, 2), (1, 1)),
    ((2, 3, 3, 2), (2, 3, 3), (1, 1), (0, 0)),
    ((1, 2, 2, 3), (2, 4, 3), (2, 3), (1, 0)),
    ((1, 2, 2, 2), (2, 8, 8), (4, 4), (0, 0)),     # FCN's upsampling shape, scaled down
]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case", DECONV_CASES)
def test_conv_transpose2d_forward_backward(rng, case, dtype):
    xs, (F, kh, kw), stride, pad = case
    x, w, b = randn(rng, xs, dtype), randn(rng, (xs[1], F, kh, kw), dtype), randn(rng, (F,), dtype)
    for bias in (b, None):
        y = R.conv_transpose2d(x, w, bias, stride, pad)
        close(K.conv_transpose2d(x, w, bias, stride, pad), y, dtype)
    dout = randn(rng, y.shape, dtype)
    for got, want in zip(K.conv_transpose2d_backward(dout, x, w, stride, pad),
                         R.conv_transpose2d_backward(dout, x, w, stride, pad)):
        close(got, want, dtype)


def test_conv_transpose2d_row_tiles(rng, monkeypatch):
    monkeypatch.setattr(cuda_im2col, "COL_BUDGET", 1)       # one row of one image per tile
    x, w = randn(rng, (2, 2, 3, 2), np.float64), randn(rng, (2, 3, 4, 4), np.float64)
    y = R.conv_transpose2d(x, w, None, (2, 2), (1, 1))
    close(K.conv_transpose2d(x, w, None, (2, 2), (1, 1)), y, np.float64)
    dout = randn(rng, y.shape, np.float64)
    for got, want in zip(K.conv_transpose2d_backward(dout, x, w, (2, 2), (1, 1)),
                         R.conv_transpose2d_backward(dout, x, w, (2, 2), (1, 1))):
        close(got, want, np.float64)


# ----------------------------------------------------------------------------- pooling
POOL_CASES = [
    # x shape, kernel, stride, pad, ceil_mode
    ((2, 3, 7, 7), (2, 2), (2, 2), (0, 0), True),      # VGG's pool: a short last window
    ((1, 2, 6, 5), (3, 3), (2, 2), (1, 1), True),      # AlexNet-like overlapping windows
    ((1, 2, 7, 7), (3, 3), (3, 3), (1, 1), True),
    ((2, 1, 5, 6), (2, 3), (2, 1), (1, 1), False),
]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case", POOL_CASES)
def test_max_pool2d(rng, case, dtype):
    shape, *geo = case
    x = rng.integers(-3, 3, shape).astype(dtype)        # small integers: plenty of ties
    y, arg = R.max_pool2d(x, *geo)
    gy, garg = K.max_pool2d(x, *geo)
    close(gy, y, dtype)
    np.testing.assert_array_equal(host(garg), arg)    # first maximum wins, as in Caffe
    assert host(garg).dtype == np.int32
    dout = randn(rng, y.shape, dtype)
    close(K.max_pool2d_backward(dout, garg, shape), R.max_pool2d_backward(dout, arg, shape),
          dtype)


def test_max_pool2d_propagates_nan(rng):
    """As numpy and cpu do (tests/pool_nan.py): a window with a NaN pools to NaN, its
    gradient goes to the first NaN."""
    from pool_nan import check_device
    check_device(rng, K.max_pool2d, K.max_pool2d_backward, host, np.float32)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case", POOL_CASES)
def test_avg_pool2d(rng, case, dtype):
    shape, *geo = case
    x = randn(rng, shape, dtype)
    y = R.avg_pool2d(x, *geo)
    close(K.avg_pool2d(x, *geo), y, dtype)
    dout = randn(rng, y.shape, dtype)
    close(K.avg_pool2d_backward(dout, shape, *geo), R.avg_pool2d_backward(dout, shape, *geo),
          dtype)


# ----------------------------------------------------------------------------- pointwise
@pytest.mark.parametrize("dtype", DTYPES)
def test_relu(rng, dtype):
    x, dout = randn(rng, (2, 3, 5, 7), dtype), randn(rng, (2, 3, 5, 7), dtype)
    for slope in (0.0, 0.1):
        close(K.relu(x, slope), R.relu(x, slope), dtype)
        close(K.relu_backward(dout, x, slope), R.relu_backward(dout, x, slope), dtype)
        y, bits = K.relu_bits(x, slope)               # 210 elements: a last part-byte
        close(y, R.relu(x, slope), dtype)
        assert np.array_equal(host(bits), R.relu_bits(x, slope)[1])
        close(K.relu_backward_bits(dout, bits, slope), R.relu_backward(dout, x, slope), dtype)


@pytest.mark.parametrize("dtype", DTYPES)
def test_dropout(rng, dtype):
    p = 0.3
    x = randn(rng, (2, 4, 10, 25), dtype)                  # 2000 units
    y, mask = K.dropout(x, p, np.random.default_rng(7), True)
    m = host(mask)
    assert m.dtype == dtype
    scale = dtype(1) / dtype(1 - p)
    assert set(np.unique(m).tolist()) <= {0.0, float(scale)}
    kept = (m != 0).mean()
    assert abs(kept - (1 - p)) < 4 * np.sqrt(p * (1 - p) / m.size), kept
    close(y, x * m, dtype)
    dout = randn(rng, x.shape, dtype)
    close(K.dropout_backward(dout, mask), dout * m, dtype)
    # The same seed gives the same mask; another seed another one.
    np.testing.assert_array_equal(host(K.dropout(x, p, np.random.default_rng(7), True)[1]), m)
    if dtype == np.float32:
        assert (host(K.dropout(x, p, np.random.default_rng(8), True)[1]) != m).any()
    # Test time, or p = 0: the input itself, no mask.
    for args in ((p, False), (0.0, True)):
        y, mask = K.dropout(x, args[0], np.random.default_rng(7), args[1])
        assert mask is None
        close(y, x, dtype)
        close(K.dropout_backward(dout, None), dout, dtype)


@pytest.mark.parametrize("dtype", DTYPES)
def test_crop(rng, dtype):
    x = randn(rng, (2, 3, 7, 6), dtype)
    like, off = (1, 1, 4, 3), (2, 1)
    y = R.crop(x, like, off)
    close(K.crop(x, like, off), y, dtype)
    dout = randn(rng, y.shape, dtype)
    close(K.crop_backward(dout, x.shape, off), R.crop_backward(dout, x.shape, off), dtype)


@pytest.mark.parametrize("dtype", DTYPES)
def test_concat(rng, dtype):
    """NYUD's early fusion: colour and depth stacked on the channel axis, and back."""
    xs = [randn(rng, (2, c, 3, 4), dtype) for c in (3, 1, 2)]
    y = R.concat(xs)
    close(K.concat(xs), y, dtype)
    dout = randn(rng, y.shape, dtype)
    for got, want in zip(K.concat_backward(dout, [3, 1, 2]), R.concat_backward(dout, [3, 1, 2])):
        close(got, want, dtype)


@pytest.mark.parametrize("dtype", DTYPES)
def test_eltwise_sum_and_scale(rng, dtype):
    xs = [randn(rng, (2, 3, 4, 5), dtype) for _ in range(3)]
    for n, coeffs in ((1, [2.0]), (2, [1.0, -0.5]), (3, [0.5, 1.0, 3.0])):
        close(K.eltwise_sum(xs[:n], coeffs[:n]), R.eltwise_sum(xs[:n], coeffs[:n]), dtype)
    close(K.scale(xs[0], 0.01), R.scale(xs[0], 0.01), dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("size", [5, 4])
def test_lrn(rng, size, dtype):
    x, dout = randn(rng, (2, 7, 3, 4), dtype), randn(rng, (2, 7, 3, 4), dtype)
    args = (size, 0.5, 0.75, 2.0)       # a large alpha so the normalisation really matters
    close(K.lrn(x, *args), R.lrn(x, *args), dtype)
    close(K.lrn_backward(dout, x, *args), R.lrn_backward(dout, x, *args), dtype)


# ----------------------------------------------------------------------------- loss
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("normalize", ["valid", "batch", "none"])
@pytest.mark.parametrize("weighted", [False, True])
def test_softmax_cross_entropy(rng, normalize, weighted, dtype):
    N, C, H, W = 2, 4, 5, 6
    scores = (3 * rng.standard_normal((N, C, H, W))).astype(dtype)
    labels = rng.integers(0, C, (N, H, W)).astype(np.int32)
    labels[rng.random(labels.shape) < 0.25] = 255
    cw = rng.uniform(0.5, 2, C) if weighted else None
    loss, d = R.softmax_cross_entropy(scores, labels, 255, normalize, cw)
    gloss, gd = K.softmax_cross_entropy(scores, K.to_device(labels), 255, normalize, cw)
    assert isinstance(gloss, float)
    assert gloss == pytest.approx(loss, rel=tol(dtype)["rtol"])
    close(gd, d, dtype)


def test_softmax_cross_entropy_edges(rng):
    scores = rng.standard_normal((1, 3, 2, 2))
    labels = np.full((1, 2, 2), 255, np.int64)                 # nothing valid: loss 0, grad 0
    loss, d = K.softmax_cross_entropy(scores, labels, 255, "valid", None)
    assert loss == 0.0 and not host(d).any()
    labels[0, 0, 0] = 3                                        # out of range and not ignored
    with pytest.raises(ValueError, match="outside"):
        K.softmax_cross_entropy(scores, K.to_device(labels), 255, "valid", None)


# ----------------------------------------------------------------------------- training
@pytest.mark.parametrize("dtype", DTYPES)
def test_solver_updates(rng, dtype):
    """sgd_update / adam_update in place on device arrays (and through a round trip on host
    arrays), against the reference's in-place update."""
    p, g, m, v = (randn(rng, (3, 5, 7), dtype) for _ in range(4))
    v = np.abs(v)
    cases = [("sgd_update", (p, g, m), (0.01, 0.9, 5e-4)),
             ("adam_update", (p, g, m, v), (0.01, 0.9, 0.999, 1e-8, 5e-4, 3))]
    for op, arrays, scalars in cases:
        want = [a.copy() for a in arrays]
        getattr(R, op)(*want, *scalars)
        dev = [K.to_device(a) for a in arrays]
        getattr(K, op)(*dev, *scalars)
        hst = [a.copy() for a in arrays]
        getattr(K, op)(*hst, *scalars)
        for i in [0] + list(range(2, len(arrays))):       # everything but the gradient
            close(dev[i], want[i], dtype)
            close(hst[i], want[i], dtype)


def test_confusion_update(rng):
    n = 4
    gt = rng.integers(-1, n + 1, (2, 9, 11))
    gt[0, 0, :5] = 255
    pred = rng.integers(0, n, gt.shape).astype(np.int32)
    ok = (gt >= 0) & (gt < n)
    want = np.bincount(n * gt[ok] + pred[ok], minlength=n * n).reshape(n, n)
    hist = K.to_device(np.zeros((n, n), np.int64))
    K.confusion_update(hist, K.to_device(gt), pred, n)
    K.confusion_update(hist, gt, K.to_device(pred), n)
    np.testing.assert_array_equal(host(hist), 2 * want)
    h = np.zeros((n, n), np.int64)                              # a host histogram
    assert K.confusion_update(h, gt, pred, n) is h
    np.testing.assert_array_equal(h, want)


# ----------------------------------------------------------------------------- gradients
def directional_check(f, grads, params, rng, eps=1e-6, directions=3):
    """Centred differences of the scalar f along random directions v against sum(grad * v)
    (Chainer's gradient_check): cheap even when the simulator makes every call slow."""
    for _ in range(directions):
        vs = [rng.standard_normal(p.shape) for p in params]
        plus = f(*[p + eps * v for p, v in zip(params, vs)])
        minus = f(*[p - eps * v for p, v in zip(params, vs)])
        numeric = (plus - minus) / (2 * eps)
        analytic = sum(float((g * v).sum()) for g, v in zip(grads, vs))
        assert numeric == pytest.approx(analytic, rel=1e-6, abs=1e-8)


def test_conv2d_gradient_check(rng):
    x, w, b = rng.standard_normal((1, 2, 5, 4)), rng.standard_normal((2, 2, 3, 2)), \
        rng.standard_normal(2)
    geo = ((2, 1), (1, 1), (1, 2), 1)
    r = rng.standard_normal(host(K.conv2d(x, w, b, *geo)).shape)

    def f(x, w, b):
        return float((host(K.conv2d(x, w, b, *geo)) * r).sum())

    directional_check(f, [host(g) for g in K.conv2d_backward(r, x, w, *geo)], [x, w, b], rng)


def test_max_pool2d_gradient_check(rng):
    x = rng.permutation(2 * 2 * 5 * 5).reshape(2, 2, 5, 5) * 0.1    # distinct: no ties, no kinks
    geo = ((3, 3), (2, 2), (1, 1), True)
    y, arg = K.max_pool2d(x, *geo)
    r = rng.standard_normal(y.shape)

    def f(x):
        return float((host(K.max_pool2d(x, *geo)[0]) * r).sum())

    directional_check(f, [host(K.max_pool2d_backward(r, arg, x.shape))], [x], rng)


# ----------------------------------------------------------------------------- gpu_check
def test_gpu_check_runs_tiny(tmp_path, capsys):
    """benchmarks/gpu_check.py, the script a lent GPU runs, keeps working: two of its sections
    on --tiny shapes (here in the simulator), every checked row matching, JSON written."""
    import importlib.util
    import json
    import pathlib
    path = pathlib.Path(__file__).resolve().parents[1] / "benchmarks" / "gpu_check.py"
    spec = importlib.util.spec_from_file_location("gpu_check", path)
    gpu_check = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(gpu_check)
    out = tmp_path / "tiny.json"
    rc = gpu_check.main(["--tiny", "--sections", "gemm", "pointwise", "--out", str(out)])
    assert rc == 0, capsys.readouterr().out
    rows = json.loads(out.read_text())["rows"]
    assert {r["section"] for r in rows} >= {"gemm", "pointwise", "loss", "solver"}
    assert all(r.get("ok") is not False for r in rows)
    assert sum(r.get("ok") is True for r in rows) >= 10
