"""The fast routes of kernels/cpu/, each forced on small shapes and compared with the numpy
reference: Winograd F(2x2, 3x3) and F(4x4, 3x3) convolutions (forward, dx, dw; F(4x4) also
channels last), dx as a convolution of dout, the depthwise transposed convolution of a
diagonal (bilinear) weight, the 2x2 max-pool kernel and its first-maximum-wins rule on ties,
im2col's flat copy for "same" convolutions of stride 1, and scratch reuse across calls of
different sizes.
On real sizes these routes are chosen by thresholds; here the thresholds are lowered so that
tiny shapes take them."""
import numpy as np
import pytest

from minifcn import functional as F
from minifcn.kernels.cpu import conv, winograd
from minifcn.layers import bilinear_weight


def close(a, b, dtype):
    tol = 2e-4 if dtype == np.float32 else 1e-10
    for u, v in zip(a if isinstance(a, tuple) else (a,), b if isinstance(b, tuple) else (b,)):
        if u is None or v is None:
            assert u is None and v is None
            continue
        scale = max(1.0, float(np.abs(v).max()))
        np.testing.assert_allclose(u, v, rtol=0, atol=tol * scale)


@pytest.fixture(params=["F2x2", "F4x4", "F4x4-cl"])
def winograd_everywhere(monkeypatch, request):
    monkeypatch.setattr(winograd, "WINO_TILES", (4,) if "F4" in request.param else (2,))
    monkeypatch.setattr(winograd, "WINO_MIN_CHANNELS", 1)
    monkeypatch.setattr(winograd, "WINO_MIN_TOTAL_BLOCKS", {2: 1, 4: 1})
    monkeypatch.setattr(winograd, "WINO_BUDGET", 1)
    if request.param == "F4x4-cl":         # channels last: whole images a tile, and only that
        monkeypatch.setattr(winograd, "WINO_CL_MIN_CHANNELS", 1)
        for old in ("_wino4_in", "_wino4_out", "_wino4_dout"):
            monkeypatch.setattr(winograd, old, None)
    else:
        monkeypatch.setattr(winograd, "WINO_MIN_BLOCKS", 3)    # several tiles per image
    calls = {"conv": 0, "dw": 0}           # so a test can tell the route was really taken

    def counted(name, fn):
        def run(*args, **kwargs):
            calls[name] += 1
            return fn(*args, **kwargs)
        return run
    monkeypatch.setattr(winograd, "_wino_conv", counted("conv", winograd._wino_conv))
    monkeypatch.setattr(winograd, "_wino_dw", counted("dw", winograd._wino_dw))
    return calls


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("n,c,f,h,w,pad,groups", [
    (1, 3, 4, 5, 7, 1, 1), (2, 4, 6, 6, 6, 0, 2), (3, 2, 2, 9, 4, 2, 1), (1, 5, 3, 1, 1, 1, 1),
    (2, 4, 4, 8, 8, 3, 1), (2, 8, 6, 11, 9, 1, 1)])
def test_winograd_matches_reference(winograd_everywhere, rng, dtype, n, c, f, h, w, pad, groups):
    x = rng.standard_normal((n, c, h, w)).astype(dtype)
    wt = rng.standard_normal((f, c // groups, 3, 3)).astype(dtype)
    b = rng.standard_normal(f).astype(dtype)
    kw = dict(pad=pad, groups=groups)
    y = F.conv2d(x, wt, b, **kw, device="cpu")
    close(y, F.conv2d(x, wt, b, **kw, device="numpy"), dtype)
    dy = rng.standard_normal(y.shape).astype(dtype)
    close(F.conv2d_backward(dy, x, wt, **kw, device="cpu"),
          F.conv2d_backward(dy, x, wt, **kw, device="numpy"), dtype)
    # one gradient at a time (frozen weight; data input)
    close(F.conv2d_backward(dy, x, wt, **kw, need_dw=False, device="cpu")[0],
          F.conv2d_backward(dy, x, wt, **kw, need_dw=False, device="numpy")[0], dtype)
    close(F.conv2d_backward(dy, x, wt, **kw, need_dx=False, device="cpu")[1],
          F.conv2d_backward(dy, x, wt, **kw, need_dx=False, device="numpy")[1], dtype)
    # the forward, and dx twice where dx is a convolution of dout (not when it would grow
    # the work, e.g. pad 0; F(4x4) turns the weight and calls itself again); dw twice
    dx_conv = conv._dx_as_conv(x.shape, wt.shape, y.shape, (1, 1), (pad, pad), (1, 1))
    per_dx = 2 if winograd.WINO_TILES == (4,) else 1
    assert winograd_everywhere == {"conv": 1 + 2 * per_dx * bool(dx_conv), "dw": 2}


def test_small_images_take_f4x4_channels_last(rng, monkeypatch):
    """With the real thresholds: a batch of small images with 16+ channels takes F(4x4)
    channels last even with fewer blocks than the row-of-blocks kernels need (forward, dx and
    dw, matching the reference); VGG16's conv5 at 224 (16 blocks) stays with im2col."""
    assert winograd._winograd_tile((512, 512, 3, 3), (1, 1), (1, 1), 1, (14, 14), 1) == 0
    assert winograd._winograd_tile((16, 16, 3, 3), (1, 1), (1, 1), 1, (16, 16), 2) == 4
    calls = []

    def counted(name, fn):
        def run(*args):
            calls.append(name)
            return fn(*args)
        return run
    for name in ("_wino4_in_cl", "_wino4_out_cl", "_wino4_dout_cl"):
        monkeypatch.setattr(winograd, name, counted(name, getattr(winograd, name)))
    x = rng.standard_normal((2, 16, 16, 16))
    wt = rng.standard_normal((16, 16, 3, 3))
    y = F.conv2d(x, wt, pad=1, device="cpu")
    close(y, F.conv2d(x, wt, pad=1, device="numpy"), np.float64)
    dy = rng.standard_normal(y.shape)
    close(F.conv2d_backward(dy, x, wt, pad=1, device="cpu"),
          F.conv2d_backward(dy, x, wt, pad=1, device="numpy"), np.float64)
    assert set(calls) == {"_wino4_in_cl", "_wino4_out_cl", "_wino4_dout_cl"}


def test_winograd_on_a_strided_view(winograd_everywhere, rng):
    """Crops hand the kernels non-contiguous views."""
    big = rng.standard_normal((2, 4, 12, 12))
    x = big[:, :, 1:10, 2:11]
    wt = rng.standard_normal((3, 4, 3, 3))
    close(F.conv2d(x, wt, pad=1, device="cpu"), F.conv2d(x, wt, pad=1, device="numpy"),
          np.float64)
    assert winograd_everywhere["conv"] == 1


@pytest.mark.parametrize("stride,pad,dil", [(1, 1, 1), (1, 0, 1), (1, 2, 2), (2, 1, 1)])
def test_dx_routes(rng, stride, pad, dil, monkeypatch):
    """dx as a convolution of dout (stride 1) and as GEMM + col2im, both against numpy."""
    monkeypatch.setattr(winograd, "WINO_MIN_CHANNELS", 10**9)
    x = rng.standard_normal((2, 3, 9, 8))
    for f in (2, 40):                       # a weight smaller / larger than dout
        wt = rng.standard_normal((f, 3, 3, 3))
        kw = dict(stride=stride, pad=pad, dilation=dil)
        dy = rng.standard_normal(F.conv2d_output_shape(x.shape, wt.shape, **kw))
        close(F.conv2d_backward(dy, x, wt, **kw, device="cpu"),
              F.conv2d_backward(dy, x, wt, **kw, device="numpy"), np.float64)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("k,s,p,h", [(64, 32, 0, 3), (4, 2, 0, 5), (16, 8, 0, 4), (4, 2, 1, 3),
                                     (3, 2, 1, 4), (5, 3, 2, 2)])
def test_depthwise_deconv(rng, dtype, k, s, p, h):
    """FCN's bilinear upsampling weight is diagonal across channels: the depthwise route."""
    c = 3
    w = bilinear_weight(c, c, k).astype(dtype)
    w[1, 1] *= 2.0                           # not the same filter on every channel
    assert conv._is_diagonal(w)
    x = rng.standard_normal((2, c, h, h + 1)).astype(dtype)
    y = F.conv_transpose2d(x, w, None, s, p, device="cpu")
    close(y, F.conv_transpose2d(x, w, None, s, p, device="numpy"), dtype)
    dy = rng.standard_normal(y.shape).astype(dtype)
    for need_dw in (False, True):            # a learnable upsampling still gets its full dw
        close(F.conv_transpose2d_backward(dy, x, w, s, p, need_dw=need_dw, device="cpu"),
              F.conv_transpose2d_backward(dy, x, w, s, p, need_dw=need_dw, device="numpy"),
              dtype)


def test_dense_deconv_is_not_diagonal(rng):
    w = bilinear_weight(3, 3, 4)
    w[0, 2, 1, 1] = 1e-3
    assert not conv._is_diagonal(w)
    assert not conv._is_diagonal(np.zeros((2, 3, 4, 4)))      # C_in != C_out
    x = rng.standard_normal((1, 3, 4, 4))
    close(F.conv_transpose2d(x, w, None, 2, 1, device="cpu"),
          F.conv_transpose2d(x, w, None, 2, 1, device="numpy"), np.float64)


def test_flat_im2col_is_the_row_by_row_one():
    """_im2col_flat (stride 1, Wo == W) writes exactly what _im2col_rows writes, every entry
    (the column matrix starts as NaN): taps that reach past every edge, dilations, row pads
    unlike column pads (Ho != H), tiles of rows and of images, a channel offset."""
    import itertools
    from minifcn.kernels.cpu import im2col
    from minifcn.kernels.geometry import conv_out
    rng = np.random.default_rng(0)
    cases = 0
    for H, W, k, d, ph in itertools.product([1, 3, 6], [1, 2, 5], [1, 3, 5], [1, 2], [0, 1, 4]):
        pw = d * (k - 1) // 2
        Ho = conv_out(H, k, 1, ph, d)
        if Ho <= 0 or d * (k - 1) % 2:
            continue
        x = rng.standard_normal((3, 3, H, W))
        for (n0, n1), (r0, r1) in itertools.product([(0, 3), (1, 2)], {(0, Ho), (Ho // 2, Ho)}):
            if r1 <= r0:
                continue
            m = (n1 - n0) * (r1 - r0) * W
            a, b = np.full((2 * k * k, m), np.nan), np.full((2 * k * k, m), np.nan)
            im2col._im2col_rows(x, n0, n1, 1, 2, k, k, 1, 1, ph, pw, d, d, r0, r1, W, a)
            im2col._im2col_flat(x.reshape(3, 3, H * W), W, n0, n1, 1, 2, k, k, ph, pw, d, d, r0,
                                r1, b)
            assert np.array_equal(a, b), (H, W, k, d, ph, n0, n1, r0, r1)
            cases += 1
    assert cases > 100


# rows short and long (4, 50), heights even and odd
@pytest.mark.parametrize("h,w,ceil", [(6, 6, True), (7, 5, True), (7, 5, False), (1, 1, True),
                                      (4, 50, True), (5, 52, False)])
def test_max_pool_2x2_ties_and_edges(rng, h, w, ceil):
    """Ties (integer-valued inputs) go to the first pixel in scan order, as in the reference;
    infinities pool as numbers (a window holding both sums to NaN but holds no NaN)."""
    x = rng.integers(0, 3, (2, 3, h, w)).astype(np.float32)
    x[0, 1, 0, 0] = -np.inf
    if h > 1 and w > 1:
        x[0, 0, 0, :2] = np.inf, -np.inf
        x[1, 2, 1, 0] = np.inf
    y, arg = F.max_pool2d(x, 2, 2, ceil_mode=ceil, device="cpu")
    yr, argr = F.max_pool2d(x, 2, 2, ceil_mode=ceil, device="numpy")
    np.testing.assert_array_equal(y, yr)
    np.testing.assert_array_equal(arg, argr)
    dy = rng.standard_normal(y.shape).astype(np.float32)
    np.testing.assert_array_equal(F.max_pool2d_backward(dy, arg, x.shape, device="cpu"),
                                  F.max_pool2d_backward(dy, arg, x.shape, device="numpy"))


def test_scratch_reuse_across_sizes(rng):
    """A big call then a small one then a big one: the scratch buffers never leak into
    results (each result is a fresh array)."""
    outs = []
    for h in (20, 5, 20):
        x = rng.standard_normal((1, 4, h, h)).astype(np.float32)
        wt = rng.standard_normal((6, 4, 3, 3)).astype(np.float32)
        y = F.conv2d(x, wt, pad=1, device="cpu")
        close(y, F.conv2d(x, wt, pad=1, device="numpy"), np.float32)
        outs.append((x, wt, y.copy(), y))
    for x, wt, saved, y in outs:
        np.testing.assert_array_equal(saved, y)


def test_max_pool_propagates_nan(rng):
    """A window holding a NaN pools to NaN, its gradient to the first NaN: the numpy
    reference and both cpu routes (2x2 fast path, general loop) alike (tests/pool_nan.py)."""
    from pool_nan import check_device

    from minifcn.kernels.cpu import pool
    check_device(rng, pool.max_pool2d, pool.max_pool2d_backward, np.asarray, np.float32)


def test_small_ops_run_on_one_thread_and_restore_the_pools():
    """Below TINY_FLOPS a kernel runs with one Numba thread and one BLAS thread; up to
    SMALL_FLOPS with one BLAS thread and matmul cut over Numba's threads; the thread counts
    come back afterwards, also when the block raises; big ops keep every thread."""
    import numba
    from threadpoolctl import threadpool_info
    from minifcn.kernels.cpu import threads
    if numba.get_num_threads() < 2:
        pytest.skip("one thread here already")
    n = numba.get_num_threads()
    blas = threads._blas_lib()
    nb = blas.num_threads if blas else None
    seen = []
    for flops in (threads.TINY_FLOPS / 2, threads.TINY_FLOPS * 2):
        with threads.one_thread_if_small(flops):
            seen.append((numba.get_num_threads(), threads._split))
            if blas:
                assert {i["num_threads"] for i in threadpool_info()
                        if i["filepath"] == blas.filepath} == {1}
    with pytest.raises(RuntimeError):
        with threads.one_thread_if_small(1.0):
            raise RuntimeError
    with threads.one_thread_if_small(threads.SMALL_FLOPS * 2):
        seen.append((numba.get_num_threads(), threads._split))
    assert seen == [(1, 0), (n, n), (n, 0)] and numba.get_num_threads() == n
    assert not blas or blas.num_threads == nb


@pytest.mark.parametrize("shape", [(2, 3, 5, 7), (5, 4, 6), (1, 3, 1), (3, 2, 1)])
def test_cut_matmul_is_the_same_bits_on_any_thread_count(rng, shape, monkeypatch):
    """threads.matmul cuts a product the same way whatever the thread count: 1, 2 and 3
    workers give one result, the product (a stack of matrices, a 2-D matrix, one column)."""
    from minifcn.kernels.cpu import threads
    a = rng.standard_normal(shape[:-2] + (4, shape[-2])).astype(np.float32)
    b = rng.standard_normal(shape).astype(np.float32)
    outs = []
    for n in (1, 2, 3):
        monkeypatch.setattr(threads, "_split", n)
        outs.append(threads.matmul(a, b, np.empty(shape[:-2] + (4, shape[-1]), np.float32)))
    for o in outs[1:]:
        np.testing.assert_array_equal(o, outs[0])
    close(outs[0], a @ b, np.float32)


def test_mid_sized_convs_are_the_same_bits_on_one_thread(rng):
    """Convolutions between TINY_FLOPS and SMALL_FLOPS (fcn8s_tiny's, here Winograd and
    im2col routes) run their GEMMs cut over the threads: forward and backward give the
    same bits with Numba on one thread and on all, so a seeded run does not depend on it."""
    import numba
    from minifcn.kernels.cpu import conv, threads
    if numba.get_num_threads() < 2:
        pytest.skip("one thread here already")
    cases = [((8, 16, 32, 32), (16, 16, 3, 3)), ((8, 64, 8, 8), (64, 64, 3, 3)),
             ((8, 3, 64, 64), (16, 3, 3, 3))]
    for xs, ws in cases:
        x = rng.standard_normal(xs).astype(np.float32)
        w = rng.standard_normal(ws).astype(np.float32)
        flops = conv._flops(xs, ws, xs[2:])
        assert threads.TINY_FLOPS <= flops < threads.SMALL_FLOPS, (xs, flops)
        runs = []
        for n in (numba.get_num_threads(), 1):
            before = numba.get_num_threads()
            numba.set_num_threads(n)
            try:
                y = F.conv2d(x, w, None, pad=1, device="cpu")
                runs.append((y, *F.conv2d_backward(y, x, w, pad=1, device="cpu")[:2]))
            finally:
                numba.set_num_threads(before)
        for a, b in zip(*runs):
            np.testing.assert_array_equal(a, b)
        close(runs[0][0], F.conv2d(x, w, None, pad=1, device="numpy"), np.float32)


@pytest.mark.parametrize("user", [{}, {"OMP_WAIT_POLICY": "ACTIVE"}, {"GOMP_SPINCOUNT": "0"}],
                         ids=["unset", "user-policy", "user-spincount"])
def test_wait_policy_is_ours_only_where_the_user_chose_none(user):
    """In a clean environment the cpu kernels set a short spin then sleep (before Numba's
    OpenMP threads start) and say so in SET_BY_US, which the bench keeps out of PyTorch's
    process; a user's OMP_WAIT_POLICY or GOMP_SPINCOUNT is left as it is and nothing is set."""
    import json
    import os
    import subprocess
    import sys
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT")}
    env.update(user)
    code = ("import json, os; from minifcn.kernels import cpu; from minifcn.bench import workers;"
            "print(json.dumps([cpu.SET_BY_US, {k: os.environ.get(k) for k in "
            "('OMP_WAIT_POLICY', 'GOMP_SPINCOUNT')}, {k: workers.user_env().get(k) for k in "
            "('OMP_WAIT_POLICY', 'GOMP_SPINCOUNT')}]))")
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                         check=True, timeout=120).stdout
    ours, seen, for_workers = json.loads(out.splitlines()[-1])
    given = {k: user.get(k) for k in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT")}
    if user:
        assert ours == {} and seen == given and for_workers == given
    else:
        assert set(ours) == {"OMP_WAIT_POLICY", "GOMP_SPINCOUNT"} and seen == ours
        assert for_workers == given            # PyTorch's process sees none of it
