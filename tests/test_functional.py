"""Functional ops: float64 gradient checks on every device, cpu == numpy reference on random
configurations, conv/deconv adjointness, an independent conv oracle, Caffe's size rules and
the error messages."""
import numpy as np
import pytest
import scipy.signal
from hypothesis import assume, given
from hypothesis import strategies as st

import minifcn
from minifcn import functional as F
from minifcn.gradcheck import numeric_grad, rel_error
from minifcn.kernels.cpu import im2col as cpu_im2col
from minifcn.kernels.geometry import conv_out, pool_out, row_tiles

DEVICES = ["numpy", "cpu"]
TOL = 1e-7          # float64 centred differences (h = 1e-6) agree to ~1e-9


def distinct(rng, shape, spacing=0.05):
    """Values with no ties and none near 0 (|v| >= spacing/2, gaps of `spacing`): keeps max
    pooling and ReLU away from their kinks under an h = 1e-6 perturbation."""
    n = int(np.prod(shape))
    return ((rng.permutation(n) - n / 2 + 0.5) * spacing).reshape(shape)


def check_grads(loss, analytic, arrays):
    """Compare analytic gradients with centred differences of the scalar loss()."""
    for name, arr in arrays.items():
        err = rel_error(analytic[name], numeric_grad(loss, arr))
        assert err < TOL, f"{name}: relative error {err:.2e}"


# ----------------------------------------------------------------------------- gradient checks
@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("cfg", [
    dict(stride=1, pad=1, dilation=1, groups=1),
    dict(stride=(2, 1), pad=(0, 2), dilation=(1, 2), groups=2),
])
def test_conv2d_gradients(device, cfg, rng):
    x = rng.standard_normal((2, 4, 7, 6))
    w = rng.standard_normal((6, 4 // cfg["groups"], 3, 2))
    b = rng.standard_normal(6)
    R = rng.standard_normal(F.conv2d(x, w, b, **cfg, device=device).shape)
    dx, dw, db = F.conv2d_backward(R, x, w, **cfg, device=device)
    check_grads(lambda: np.sum(F.conv2d(x, w, b, **cfg, device=device) * R),
                {"x": dx, "w": dw, "b": db}, {"x": x, "w": w, "b": b})


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("stride,pad", [(1, 0), (2, 1), ((3, 2), (1, 0))])
def test_conv_transpose2d_gradients(device, stride, pad, rng):
    x = rng.standard_normal((2, 3, 4, 3))
    w = rng.standard_normal((3, 2, 4, 3))
    b = rng.standard_normal(2)
    R = rng.standard_normal(F.conv_transpose2d(x, w, b, stride, pad, device=device).shape)
    dx, dw, db = F.conv_transpose2d_backward(R, x, w, stride, pad, device=device)
    check_grads(lambda: np.sum(F.conv_transpose2d(x, w, b, stride, pad, device=device) * R),
                {"x": dx, "w": dw, "b": db}, {"x": x, "w": w, "b": b})


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("kernel,stride,pad", [(2, 2, 0), (3, 2, 1), (3, 1, 0), ((2, 3), (1, 2), (1, 1))])
def test_pool_gradients(device, kernel, stride, pad, rng):
    x = distinct(rng, (2, 3, 7, 6))
    y, argmax = F.max_pool2d(x, kernel, stride, pad, device=device)
    R = rng.standard_normal(y.shape)
    dx = F.max_pool2d_backward(R, argmax, x.shape, device=device)
    check_grads(lambda: np.sum(F.max_pool2d(x, kernel, stride, pad, device=device)[0] * R),
                {"x": dx}, {"x": x})
    dx = F.avg_pool2d_backward(R, x.shape, kernel, stride, pad, device=device)
    check_grads(lambda: np.sum(F.avg_pool2d(x, kernel, stride, pad, device=device) * R),
                {"x": dx}, {"x": x})


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("slope", [0.0, 0.1])
def test_relu_gradients(device, slope, rng):
    x = distinct(rng, (2, 3, 4, 5))
    R = rng.standard_normal(x.shape)
    dx = F.relu_backward(R, x, slope, device=device)
    check_grads(lambda: np.sum(F.relu(x, slope, device=device) * R), {"x": dx}, {"x": x})
    y = F.relu(x, slope, device=device)
    assert np.array_equal(F.relu_backward(R, y, slope, device=device), dx)   # output works too


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("n", [1, 7, 8, 13, 1003])
@pytest.mark.parametrize("slope", [0.0, 0.1])
def test_relu_bits_are_the_sign_pattern_and_backward_needs_no_more(device, n, slope, rng):
    """relu(bits=True): the same output, plus np.packbits of where it is > 0 (sizes that are
    not a whole number of bytes included); backward from the bits == backward from y."""
    x = rng.standard_normal(n).astype(np.float32)
    x[::5] = 0.0                         # zeros are not > 0: their bit is clear
    x[3::11] = np.nan                    # NaN > 0 is false, as relu_backward's x > 0 says
    y, bits = F.relu(x, slope, bits=True, device=device)
    assert np.array_equal(y, F.relu(x, slope, device=device), equal_nan=True)
    assert bits.dtype == np.uint8 and np.array_equal(bits, np.packbits(y > 0))
    dout = rng.standard_normal(n).astype(np.float32)
    assert np.array_equal(F.relu_backward(dout, bits, slope, device=device),
                          F.relu_backward(dout, y, slope, device=device))
    x4 = x.reshape(1, 1, 1, n)           # any shape: the bits are of the flat array
    _, bits4 = F.relu(x4, slope, bits=True, device=device)
    assert np.array_equal(bits4, bits)
    with pytest.raises(ValueError, match="relu_backward: bits has shape"):
        F.relu_backward(dout, np.zeros(bits.size + 1, np.uint8), slope, device=device)


@pytest.mark.parametrize("device", DEVICES)
def test_dropout(device, rng):
    x = rng.standard_normal((4, 8, 10, 10))
    y, mask = F.dropout(x, 0.3, np.random.default_rng(7), train=True, device=device)
    kept = mask != 0
    assert abs(kept.mean() - 0.7) < 0.03
    assert np.allclose(y[kept], x[kept] / 0.7) and np.all(y[~kept] == 0)
    R = rng.standard_normal(x.shape)
    dx = F.dropout_backward(R, mask, device=device)
    # the same generator state draws the same mask, so the function is deterministic
    check_grads(lambda: np.sum(F.dropout(x, 0.3, np.random.default_rng(7), device=device)[0] * R),
                {"x": dx}, {"x": x})
    y, mask = F.dropout(x, 0.3, np.random.default_rng(7), train=False, device=device)
    assert y is x and mask is None


@pytest.mark.parametrize("device", DEVICES)
def test_crop_sum_scale_gradients(device, rng):
    x = rng.standard_normal((2, 3, 9, 8))
    ref_shape = (2, 3, 5, 4)
    R = rng.standard_normal(ref_shape)
    dx = F.crop_backward(R, x.shape, (3, 2), device=device)
    check_grads(lambda: np.sum(F.crop(x, ref_shape, (3, 2), device=device) * R), {"x": dx},
                {"x": x})
    a, b = rng.standard_normal((2, 3, 4, 5)), rng.standard_normal((2, 3, 4, 5))
    R = rng.standard_normal(a.shape)
    da, db = F.eltwise_sum_backward(R, [0.5, -2.0], device=device)
    check_grads(lambda: np.sum(F.eltwise_sum([a, b], [0.5, -2.0], device=device) * R),
                {"a": da, "b": db}, {"a": a, "b": b})
    check_grads(lambda: np.sum(F.scale(a, 0.01, device=device) * R),
                {"a": F.scale_backward(R, 0.01, device=device)}, {"a": a})


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("size", [1, 2, 3, 5])
def test_lrn_gradients(device, size, rng):
    x = rng.standard_normal((2, 6, 3, 4))
    kw = dict(size=size, alpha=0.5, beta=0.75, k=2.0)     # a large alpha makes the test bite
    R = rng.standard_normal(x.shape)
    dx = F.lrn_backward(R, x, **kw, device=device)
    check_grads(lambda: np.sum(F.lrn(x, **kw, device=device) * R), {"x": dx}, {"x": x})


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("normalize", ["valid", "batch", "none"])
@pytest.mark.parametrize("weighted", [False, True])
def test_softmax_cross_entropy(device, normalize, weighted, rng):
    s = rng.standard_normal((2, 4, 3, 5)) * 3
    labels = rng.integers(0, 4, (2, 3, 5))
    labels[0, 1, :3] = 255
    cw = np.array([0.5, 1.0, 2.0, 3.0]) if weighted else None
    loss, ds = F.softmax_cross_entropy(s, labels, normalize=normalize, class_weights=cw,
                                       device=device)
    # an independent computation of the loss, pixel by pixel
    total, norm = 0.0, 0.0
    for n, h, w in np.ndindex(labels.shape):
        if labels[n, h, w] == 255:
            continue
        z = s[n, :, h, w]
        wt = 1.0 if cw is None else cw[labels[n, h, w]]
        total -= wt * (z[labels[n, h, w]] - np.log(np.exp(z).sum()))
        norm += wt
    norm = {"valid": norm, "batch": 2, "none": 1}[normalize]
    assert np.isclose(loss, total / norm, rtol=1e-12)
    assert np.all(ds[0, :, 1, :3] == 0)                       # ignored pixels get nothing
    check_grads(lambda: F.softmax_cross_entropy(s, labels, normalize=normalize,
                                                class_weights=cw, device=device)[0],
                {"s": ds}, {"s": s})


@pytest.mark.parametrize("device", DEVICES)
def test_softmax_is_stable(device):
    s = np.array([[[[1000.0]], [[-1000.0]], [[0.0]]]])
    loss, ds = F.softmax_cross_entropy(s, np.array([[[1]]]), device=device)
    assert np.isfinite(loss) and np.isclose(loss, 2000.0) and np.all(np.isfinite(ds))
    loss, ds = F.softmax_cross_entropy(s, np.array([[[255]]]), device=device)
    assert loss == 0.0 and np.all(ds == 0)                    # no valid pixel: no NaN


# ----------------------------------------------------------------------------- cpu == numpy
def assert_same(a, b, tol=1e-10):
    if isinstance(a, (tuple, list)):
        for u, v in zip(a, b):
            assert_same(u, v, tol)
    elif a is not None:
        assert np.allclose(a, b, atol=tol, rtol=tol), np.abs(np.asarray(a) - b).max()


conv_cfg = st.fixed_dictionaries(dict(
    n=st.integers(1, 2), cg=st.integers(1, 3), fg=st.integers(1, 3), groups=st.integers(1, 3),
    h=st.integers(1, 9), w=st.integers(1, 9), kh=st.integers(1, 4), kw=st.integers(1, 4),
    sh=st.integers(1, 3), sw=st.integers(1, 3), ph=st.integers(0, 3), pw=st.integers(0, 3),
    dh=st.integers(1, 3), dw=st.integers(1, 3)))


@given(c=conv_cfg, seed=st.integers(0, 2**16))
def test_conv2d_cpu_matches_reference(c, seed):
    assume(conv_out(c["h"], c["kh"], c["sh"], c["ph"], c["dh"]) >= 1)
    assume(conv_out(c["w"], c["kw"], c["sw"], c["pw"], c["dw"]) >= 1)
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((c["n"], c["cg"] * c["groups"], c["h"], c["w"]))
    w = rng.standard_normal((c["fg"] * c["groups"], c["cg"], c["kh"], c["kw"]))
    b = rng.standard_normal(w.shape[0])
    kw = dict(stride=(c["sh"], c["sw"]), pad=(c["ph"], c["pw"]), dilation=(c["dh"], c["dw"]),
              groups=c["groups"])
    ys = [F.conv2d(x, w, b, **kw, device=d) for d in DEVICES]
    assert_same(*ys)
    R = rng.standard_normal(ys[0].shape)
    assert_same(*[F.conv2d_backward(R, x, w, **kw, device=d) for d in DEVICES])


@given(n=st.integers(1, 2), c=st.integers(1, 3), f=st.integers(1, 3), h=st.integers(1, 5),
       w=st.integers(1, 5), k=st.integers(1, 5), s=st.integers(1, 4), p=st.integers(0, 2),
       seed=st.integers(0, 2**16))
def test_conv_transpose2d_cpu_matches_reference(n, c, f, h, w, k, s, p, seed):
    assume(s * (min(h, w) - 1) + k - 2 * p >= 1)
    rng = np.random.default_rng(seed)
    x, wt = rng.standard_normal((n, c, h, w)), rng.standard_normal((c, f, k, k))
    ys = [F.conv_transpose2d(x, wt, None, s, p, device=d) for d in DEVICES]
    assert_same(*ys)
    R = rng.standard_normal(ys[0].shape)
    assert_same(*[F.conv_transpose2d_backward(R, x, wt, s, p, device=d) for d in DEVICES])


@given(n=st.integers(1, 2), c=st.integers(1, 3), h=st.integers(1, 9), w=st.integers(1, 9),
       k=st.integers(1, 4), s=st.integers(1, 3), p=st.integers(0, 3), ceil=st.booleans(),
       seed=st.integers(0, 2**16))
def test_pools_cpu_match_reference(n, c, h, w, k, s, p, ceil, seed):
    assume(p < k and h + 2 * p >= k and w + 2 * p >= k)
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, c, h, w))
    x[..., 0, :] = x[..., 1 % h, :]            # plant ties: the first maximum must win both
    outs = [F.max_pool2d(x, k, s, p, ceil, device=d) for d in DEVICES]
    assert_same(*outs)
    assert np.array_equal(outs[0][1], outs[1][1])
    R = rng.standard_normal(outs[0][0].shape)
    assert_same(*[F.max_pool2d_backward(R, outs[0][1], x.shape, device=d) for d in DEVICES])
    assert_same(*[F.avg_pool2d(x, k, s, p, ceil, device=d) for d in DEVICES])
    assert_same(*[F.avg_pool2d_backward(R, x.shape, k, s, p, ceil, device=d) for d in DEVICES])


@given(size=st.integers(1, 6), c=st.integers(1, 7), seed=st.integers(0, 2**16))
def test_lrn_and_loss_cpu_match_reference(size, c, seed):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((2, c, 3, 4))
    kw = dict(size=size, alpha=0.3, beta=0.75, k=1.5)
    assert_same(*[F.lrn(x, **kw, device=d) for d in DEVICES])
    assert_same(*[F.lrn_backward(x * 2, x, **kw, device=d) for d in DEVICES])
    labels = rng.integers(0, c, (2, 3, 4))
    labels[1, 0] = 255
    assert_same(*[F.softmax_cross_entropy(x, labels, device=d) for d in DEVICES])


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("budget", [1, 10**9])
def test_im2col_tiling(monkeypatch, dtype, budget, rng):
    """A budget of 1 byte forces one output row per tile; a huge one packs every image of the
    batch into one tile. Both must give the reference's answer."""
    monkeypatch.setattr(cpu_im2col, "COL_BUDGET", budget)
    x = rng.standard_normal((3, 4, 9, 7)).astype(dtype)
    w = rng.standard_normal((6, 2, 3, 3)).astype(dtype)
    kw = dict(stride=(2, 1), pad=1, dilation=(1, 2), groups=2)
    tol = 1e-4 if dtype == np.float32 else 1e-10
    y = F.conv2d(x, w, **kw, device="cpu")
    assert y.dtype == dtype
    assert_same(y, F.conv2d(x, w, **kw, device="numpy"), tol)
    R = rng.standard_normal(y.shape).astype(dtype)
    assert_same(F.conv2d_backward(R, x, w, **kw, device="cpu"),
                F.conv2d_backward(R, x, w, **kw, device="numpy"), tol)
    wt = rng.standard_normal((4, 3, 4, 4)).astype(dtype)
    y = F.conv_transpose2d(x, wt, None, 2, 1, device="cpu")
    assert_same(y, F.conv_transpose2d(x, wt, None, 2, 1, device="numpy"), tol)
    R = rng.standard_normal(y.shape).astype(dtype)
    assert_same(F.conv_transpose2d_backward(R, x, wt, 2, 1, device="cpu"),
                F.conv_transpose2d_backward(R, x, wt, 2, 1, device="numpy"), tol)


# ----------------------------------------------------------------------------- independent facts
@given(s=st.integers(1, 3), p=st.integers(0, 2), k=st.integers(1, 3), c=st.integers(1, 3),
       ho=st.integers(1, 4), seed=st.integers(0, 2**16))
def test_conv_transpose_is_adjoint_of_conv(s, p, k, c, ho, seed):
    """<conv2d(x), y> = <x, conv_transpose2d(y)> for the same weights: the deconvolution is
    the transpose of the convolution (the backward pass of one is the forward of the other)."""
    H = s * (ho - 1) + k - 2 * p          # a size where conv2d and its transpose round-trip
    assume(H >= 1)
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((2, c, H, H))
    w = rng.standard_normal((c + 1, c, k, k))
    for device in DEVICES:
        y = rng.standard_normal(F.conv2d(x, w, stride=s, pad=p, device=device).shape)
        lhs = np.sum(F.conv2d(x, w, stride=s, pad=p, device=device) * y)
        rhs = np.sum(x * F.conv_transpose2d(y, w, stride=s, pad=p, device=device))
        assert np.isclose(lhs, rhs, rtol=1e-10)


@pytest.mark.parametrize("device", DEVICES)
def test_conv2d_matches_scipy_correlate(device, rng):
    x = rng.standard_normal((2, 3, 8, 9))
    w = rng.standard_normal((4, 3, 3, 2))
    b = rng.standard_normal(4)
    s, p, d = 2, 1, 2
    y = F.conv2d(x, w, b, stride=s, pad=p, dilation=d, device=device)
    wd = np.zeros((4, 3, d * 2 + 1, d * 1 + 1))              # the dilated kernel, spelled out
    wd[:, :, ::d, ::d] = w
    xp = np.pad(x, ((0, 0), (0, 0), (p, p), (p, p)))
    for n in range(2):
        for f in range(4):
            ref = sum(scipy.signal.correlate(xp[n, c], wd[f, c], mode="valid") for c in range(3))
            assert np.allclose(y[n, f], ref[::s, ::s] + b[f])


def test_caffe_size_rules():
    """VGG16 at 500x500 with conv1_1 pad 100 (the reference nets): conv1_1 698, then the five
    ceil-mode pools give 349, 175, 88, 44, 22 (paper facts file)."""
    size = conv_out(500, 3, 1, 100)
    sizes = []
    for _ in range(5):
        size = pool_out(size, 2, 2, 0, ceil_mode=True)
        sizes.append(size)
    assert conv_out(500, 3, 1, 100) == 698 and sizes == [349, 175, 88, 44, 22]
    # the last window starts inside the input: 5 + 2*1 with k2 s2 would be 4 windows by ceil,
    # but the 4th would start in the padding, so Caffe keeps 3
    assert pool_out(5, 2, 2, 1, ceil_mode=True) == 3
    assert pool_out(5, 2, 2, 0, ceil_mode=False) == 2
    y, _ = F.max_pool2d(np.zeros((1, 1, 5, 5)), 2, 2, 1)
    assert y.shape == (1, 1, 3, 3)


@given(st.integers(1, 4), st.integers(1, 9), st.integers(0, 20))
def test_row_tiles_cover_every_row_once(N, H, rows):
    """The tiles the im2col and Winograd drivers walk: bands of one image, or whole images
    grouped; every (image, row) exactly once, in order, none over `rows` rows (at least 1)."""
    tiles = list(row_tiles(N, H, rows))
    covered = [(n, r) for n0, n1, r0, r1 in tiles for n in range(n0, n1) for r in range(r0, r1)]
    assert covered == [(n, r) for n in range(N) for r in range(H)]
    assert all((n1 - n0) * (r1 - r0) <= max(rows, 1) for n0, n1, r0, r1 in tiles)
    assert all(n1 - n0 == 1 or (r0, r1) == (0, H) for n0, n1, r0, r1 in tiles)


def test_float32_stays_float32(rng):
    x = rng.standard_normal((1, 2, 5, 5)).astype(np.float32)
    w = rng.standard_normal((3, 2, 3, 3)).astype(np.float32)
    for device in DEVICES:
        assert F.conv2d(x, w, device=device).dtype == np.float32
        assert F.max_pool2d(x, 2, device=device)[0].dtype == np.float32
        assert F.lrn(x, device=device).dtype == np.float32
        assert F.softmax_cross_entropy(x, np.zeros((1, 5, 5), int), device=device)[1].dtype \
            == np.float32


# ----------------------------------------------------------------------------- errors, devices
@pytest.mark.parametrize("call,words", [
    (lambda: F.conv2d(np.zeros((1, 3, 5, 5)), np.zeros((4, 2, 3, 3))), ["3 channels", "(4, 2, 3, 3)"]),
    (lambda: F.conv2d(np.zeros((1, 3, 5, 5), np.float32), np.zeros((4, 3, 3, 3))), ["float32", "float64"]),
    (lambda: F.conv2d(np.zeros((1, 3, 2, 2)), np.zeros((4, 3, 3, 3))), ["too small", "(1, 3, 2, 2)"]),
    (lambda: F.conv2d(np.zeros((1, 3, 5, 5), np.int64), np.zeros((4, 3, 3, 3), np.int64)), ["int64"]),
    (lambda: F.conv2d(np.zeros((3, 5, 5)), np.zeros((4, 3, 3, 3))), ["4-D", "(3, 5, 5)"]),
    (lambda: F.max_pool2d(np.zeros((1, 1, 1, 1)), 3, 2), ["too small", "(1, 1, 1, 1)"]),
    (lambda: F.crop(np.zeros((1, 1, 4, 4)), (1, 1, 3, 3), 2), ["3x3", "offset (2, 2)"]),
    (lambda: F.softmax_cross_entropy(np.zeros((1, 3, 2, 2)), np.full((1, 2, 2), 7)), ["[7]", "[0, 3)"]),
    (lambda: F.softmax_cross_entropy(np.zeros((1, 3, 2, 2)), np.zeros((1, 2, 3), int)), ["(1, 2, 3)"]),
    (lambda: F.softmax_cross_entropy(np.zeros((1, 3, 2, 2)), np.zeros((1, 2, 2))), ["integers"]),
    (lambda: F.conv2d_backward(np.zeros((1, 4, 2, 2)), np.zeros((1, 3, 5, 5)), np.zeros((4, 3, 3, 3))), ["dout", "(1, 4, 3, 3)"]),
    (lambda: F.conv2d_backward(np.zeros((1, 4, 3, 3), np.float32), np.zeros((1, 3, 5, 5)),
                               np.zeros((4, 3, 3, 3))), ["conv2d_backward", "dout float32"]),
    (lambda: F.conv_transpose2d_backward(np.zeros((1, 4, 7, 7), np.int32), np.zeros((1, 3, 5, 5)),
                                         np.zeros((3, 4, 3, 3))), ["dout has dtype int32"]),
    (lambda: F.relu_backward(np.zeros(9), np.zeros(1, np.uint8)), ["bits", "(1,)", "(2,)"]),
])
def test_errors_name_what_and_where(call, words):
    with pytest.raises(ValueError) as e:
        call()
    for word in words:
        assert word in str(e.value), str(e.value)


def test_device_selection():
    x = np.arange(16.0).reshape(1, 1, 4, 4)
    assert minifcn.get_device() == "cpu"
    with minifcn.device("numpy"):
        assert minifcn.get_device() == "numpy"
        assert np.array_equal(F.max_pool2d(x, 2)[0], [[[[5, 7], [13, 15]]]])
    assert minifcn.get_device() == "cpu"
    minifcn.set_device("numpy")
    try:
        assert minifcn.get_device() == "numpy"
    finally:
        minifcn.set_device("cpu")
    with pytest.raises(ValueError, match="unknown device 'tpu'"):
        F.relu(x, device="tpu")


# ----------------------------------------------------------------------------- array chores
def test_array_chores_are_functional_ops_that_check_their_arguments():
    a = np.ones((2, 3), np.float32)
    assert F.add(a, a).sum() == 12 and F.zeros_like(a).sum() == 0
    assert F.accumulate(a, a) is a and a.sum() == 12
    assert F.to_host(F.asarray(a)) is a                   # the host devices copy nothing
    with pytest.raises(ValueError, match=r"add: b has shape \(3, 2\), expected \(2, 3\)"):
        F.add(a, a.T)
    hist = np.zeros((3, 3), np.int64)
    F.confusion_update(hist, np.array([0, 1, 255]), np.array([0, 2, 1]), 3)
    assert hist.tolist() == [[1, 0, 0], [0, 0, 1], [0, 0, 0]]
    with pytest.raises(ValueError, match=r"hist has shape \(2, 2\), expected \(3, 3\)"):
        F.confusion_update(np.zeros((2, 2), np.int64), np.zeros(4), np.zeros(4), 3)
    with pytest.raises(ValueError, match="adam_update: step t must be >= 1"):
        F.adam_update(a, a, a.copy(), a.copy(), 0.1, 0.9, 0.999, 1e-8, 0.0, 0)
