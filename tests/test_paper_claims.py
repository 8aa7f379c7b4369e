"""The paper's claims, as property tests.

- section 3.1 / seed: f_ks o g_k's' = (f o g)_{k' + (k-1)s', ss'}, and the composed receptive
  field is the support of the gradient of one output unit with respect to the input;
- sections 3.1, 3.4: whole-image training = patchwise training on the receptive fields;
- section 3.1: a convolutionalized classifier's score map at (i, j) is the classifier on the
  input patch at (i, j) (exact without padding; plus one full-size VGG16 check);
- section 3.2: shift-and-stitch = filter rarefaction;
- section 3.3: a bilinear-initialised deconvolution is bilinear interpolation.
"""
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import minifcn
from minifcn import functional as F
from minifcn import layers as L
from minifcn import models
from minifcn.coordmap import coord_map, inverse, layer_map, receptive_field
from minifcn.net import Net
from minifcn.stitch import rarefy, shift_and_stitch, stitch_size

F64 = np.float64


@pytest.fixture
def numpy_device():
    """The readable NumPy references: on nets this small they beat the parallel kernels,
    whose thread start-up dominates (and the claims are about math, not kernels)."""
    with minifcn.device("numpy"):
        yield


def _randomize_biases(net, rng):
    """Nonzero biases: zero ones put every ReLU of a padded border exactly at its kink."""
    for layer in net.layers.values():
        if "bias" in layer.params:
            layer.params["bias"] = rng.uniform(0.1, 0.5, layer.params["bias"].shape).astype(
                layer.params["bias"].dtype)


# ----------------------------------------------------------------------------- composition
layer_st = st.tuples(st.sampled_from(["conv", "pool"]), st.integers(1, 4), st.integers(1, 3),
                     st.integers(1, 2))


@pytest.mark.usefixtures("numpy_device")
@given(st.lists(layer_st, min_size=1, max_size=4), st.integers(0, 2**16))
@settings(deadline=None, max_examples=20)
def test_composition_rule_and_empirical_receptive_field(stack, seed):
    rng = np.random.default_rng(seed)
    net = Net(["data"])
    bottom, rf, stride = "data", 1, 1
    for i, (kind, k, s, d) in enumerate(stack):
        if kind == "conv":
            layer = L.Conv(1, 1, k, stride=s, dilation=d, dtype=F64)
            layer.params["weight"] = rng.uniform(0.5, 1.5, layer.params["weight"].shape)
            k_e = d * (k - 1) + 1
        else:            # average pooling: max pooling has the same map, but its gradient
            layer = L.AvgPool(k, s)         # reaches only the winners
            k_e = k
        bottom = net.add(f"l{i}", layer, bottom)
        rf, stride = rf + (k_e - 1) * stride, stride * s          # the seed's rule
    (size, s_h, off), _ = receptive_field(net, bottom)
    assert (size, s_h, off) == (rf, stride, 0)
    assert coord_map(net, "data", bottom)[0][0] == pytest.approx(1 / stride)
    # empirical: the input pixels that move unit (1, 1) of the top
    n = rf + stride                                         # two units per axis
    x = rng.standard_normal((1, 1, n, n))
    y = net.forward(data=x)
    dout = np.zeros_like(y)
    dout[0, 0, 1, 1] = 1.0
    dx = net.backward(grads={bottom: dout})
    rows = np.flatnonzero(np.abs(dx[0, 0]).sum(1))
    cols = np.flatnonzero(np.abs(dx[0, 0]).sum(0))
    assert (rows[0], rows[-1]) == (stride, stride + rf - 1)
    assert (cols[0], cols[-1]) == (stride, stride + rf - 1)


# ----------------------------------------------------------------------------- patchwise
@pytest.mark.usefixtures("numpy_device")
@given(st.integers(1, 3), st.integers(2, 3), st.integers(1, 3), st.integers(2, 3),
       st.integers(0, 2**16))
@settings(deadline=None, max_examples=10)
def test_whole_image_gradient_is_the_sum_of_patch_gradients(k1, kp, k2, n, seed):
    rng = np.random.default_rng(seed)
    net = Net(["data", "label"])
    net.add("conv1", L.Conv(3, 4, k1, dtype=F64, seed=seed), "data")
    net.add("relu1", L.ReLU(), "conv1", "conv1")
    net.add("pool1", L.MaxPool(kp, 2), "conv1")
    net.add("conv2", L.Conv(4, 4, k2, dtype=F64, seed=seed + 1), "pool1")
    net.add("relu2", L.ReLU(), "conv2", "conv2")
    net.add("score", L.Conv(4, 3, 1, dtype=F64, seed=seed + 2), "conv2")
    net.add("loss", L.SoftmaxLoss(normalize="none"), ["score", "label"])
    _randomize_biases(net, rng)
    (rf, s, off), _ = receptive_field(net, "score")
    assert off == 0                                         # no padding: patches are exact
    size = rf + s * (n - 1)
    x = rng.standard_normal((1, 3, size, size))
    label = rng.integers(0, 3, (1, n, n))
    whole = net.forward(data=x, label=label)
    assert net.blobs["score"].shape[2:] == (n, n)
    net.backward(input_grads=False)
    g_whole = {k: v.copy() for k, v in net.grads().items()}
    total, g_sum = 0.0, {k: 0.0 for k in g_whole}
    for i in range(n):
        for j in range(n):
            patch = x[:, :, s * i:s * i + rf, s * j:s * j + rf]
            total += net.forward(data=patch, label=label[:, i:i + 1, j:j + 1])
            assert net.blobs["score"].shape[2:] == (1, 1)
            net.backward(input_grads=False)
            for k, v in net.grads().items():
                g_sum[k] = g_sum[k] + v
    assert total == pytest.approx(whole, rel=1e-12)
    for k in g_whole:
        np.testing.assert_allclose(g_sum[k], g_whole[k], rtol=1e-9, atol=1e-12, err_msg=k)


# ----------------------------------------------------------------------------- convolutionalize
def _micro_rf():
    """pool5's receptive field in the micro backbone without padding, by the seed's rule."""
    rf, stride = 1, 1
    for _ in range(5):
        rf, stride = rf + 2 * stride, stride          # conv 3x3
        rf, stride = rf + stride, 2 * stride           # pool 2x2, stride 2
    return rf, stride


@pytest.mark.usefixtures("numpy_device")
@given(st.integers(1, 2), st.integers(1, 3), st.integers(1, 3), st.integers(0, 2**16))
@settings(deadline=None, max_examples=5)
def test_convolutionalized_classifier_is_the_classifier_on_each_patch(h5, gh, gw, seed):
    rf, stride = _micro_rf()
    size = rf + stride * (h5 - 1)             # the classifier sees an h5 x h5 pool5
    clf = models.vgg_classifier("micro", num_classes=3, input_size=size, conv_pad=0,
                                dtype=F64, seed=seed).eval()
    assert receptive_field(clf, "pool5")[0][:2] == (rf, stride)
    _randomize_biases(clf, np.random.default_rng(seed))
    fcn = models.convolutionalize(clf).eval()
    x = np.random.default_rng(seed).standard_normal((1, 3, size + stride * (gh - 1),
                                                     size + stride * (gw - 1)))
    scores = fcn.forward(data=x)
    assert scores.shape == (1, 3, gh, gw)
    for i in range(gh):
        for j in range(gw):
            patch = x[:, :, stride * i:stride * i + size, stride * j:stride * j + size]
            np.testing.assert_allclose(scores[:, :, i, j], clf.forward(data=patch)[:, :, 0, 0],
                                       rtol=1e-10, atol=1e-10)


def test_full_size_vgg16_convolutionalized_on_a_2x2_grid():
    """VGG16 pads its convolutions, so a patch's border sees zeros in the classifier and
    image in the whole-image net: the patch claim holds exactly at a 1x1 grid, and on a larger
    grid as: score (i, j) = fc8(fc7(fc6(the 7x7 window of pool5 at (i, j))))."""
    rng = np.random.default_rng(0)
    clf = models.vgg16(init="zeros").eval()
    for layer in clf.layers.values():
        if "weight" in layer.params:
            w = layer.params["weight"]
            bound = np.float32(np.sqrt(6.0 / w[0].size))                 # He, uniform
            w[...] = rng.random(w.shape, dtype=np.float32)
            w *= 2 * bound
            w -= bound
            layer.params["bias"][...] = rng.uniform(0, 0.1, w.shape[0])
    fcn = models.convolutionalize(clf, copy_params=False).eval()
    x = rng.standard_normal((1, 3, 224, 224)).astype(np.float32)
    one = fcn.forward(data=x)
    ref = clf.forward(data=x)
    assert one.shape == (1, 1000, 1, 1)
    np.testing.assert_allclose(one, ref, rtol=1e-4, atol=1e-4 * np.abs(ref).max())
    x = rng.standard_normal((1, 3, 256, 256)).astype(np.float32)     # a 2x2 grid
    scores = fcn.forward(data=x)
    assert scores.shape == (1, 1000, 2, 2)
    pool5 = fcn.blobs["pool5"]
    for i in range(2):
        for j in range(2):
            h = pool5[:, :, i:i + 7, j:j + 7].copy()
            for fc in ("fc6", "fc7", "fc8"):
                h = clf.layers[fc].forward(h)[0]
                h = F.relu(h) if fc != "fc8" else h
            np.testing.assert_allclose(scores[:, :, i:i + 1, j:j + 1], h, rtol=1e-4,
                                       atol=1e-4 * np.abs(h).max())


# ----------------------------------------------------------------------------- rarefaction
@pytest.mark.usefixtures("numpy_device")
@given(st.sampled_from([2, 3]), st.sampled_from(["conv", "pool"]), st.integers(0, 1),
       st.lists(st.tuples(st.integers(1, 3), st.integers(0, 1)), min_size=1, max_size=2),
       st.integers(12, 22), st.integers(12, 22), st.integers(0, 2**16))
@settings(deadline=None, max_examples=15)
def test_shift_and_stitch_equals_filter_rarefaction(f, kind, extra_k, after, h, w, seed):
    rng = np.random.default_rng(seed)
    net = Net(["data"])
    net.add("pre", L.Conv(2, 3, 2, dtype=F64, seed=seed), "data")   # stride 1, no pad
    k = f + extra_k
    if kind == "conv":
        net.add("strided", L.Conv(3, 3, k, stride=f, dtype=F64, seed=seed + 1), "pre")
    else:
        net.add("strided", L.MaxPool(k, f), "pre")
    bottom = "strided"
    for i, (kk, pad) in enumerate(after):
        bottom = net.add(f"conv{i}", L.Conv(3, 3, kk, pad=pad, dtype=F64, seed=seed + 2 + i),
                         bottom)
        net.add(f"relu{i}", L.ReLU(), bottom, bottom)
    _randomize_biases(net, rng)
    H, W = stitch_size(net, "strided", (h, w))
    x = rng.standard_normal((1, 2, H, W))
    stitched = shift_and_stitch(net, x, f)
    dense = rarefy(net, "strided")
    assert dense.layers["strided"].stride == (1, 1)
    assert all(dense.layers[f"conv{i}"].dilation == (f, f) for i in range(len(after)))
    rarefied = dense.forward(data=x)
    assert stitched.shape == rarefied.shape
    np.testing.assert_allclose(stitched, rarefied, rtol=1e-12, atol=1e-12)
    # and the stride-f net is the stitched output's (0, 0) phase
    np.testing.assert_allclose(net.forward(data=x[:, :, :H - f + 1, :W - f + 1]),
                               stitched[:, :, ::f, ::f], rtol=1e-12, atol=1e-12)


def test_rarefy_refuses_pooling_after_the_strided_layer():
    net = Net(["data"])
    net.add("p1", L.MaxPool(2, 2), "data")
    net.add("p2", L.MaxPool(2, 2), "p1")
    with pytest.raises(ValueError, match="pooling has no dilation"):
        rarefy(net, "p1")


# ----------------------------------------------------------------------------- bilinear
@pytest.mark.usefixtures("numpy_device")
@given(st.integers(2, 4), st.booleans(), st.integers(1, 3), st.integers(2, 5),
       st.integers(2, 5), st.integers(0, 2**16))
@settings(deadline=None, max_examples=20)
def test_bilinear_deconvolution_is_bilinear_interpolation(f, odd, c, h, w, seed):
    k = 2 * f - odd                       # 2f (VGG FCNs) or 2f - 1 (AlexNet's 63 for 32)
    layer = L.Deconv(c, c, k, f, bias=False, init="bilinear", dtype=F64)
    x = np.random.default_rng(seed).standard_normal((1, c, h, w))
    y = layer.forward(x)[0]
    # where output pixel o sits in input coordinates: the inverse of the layer's map
    (a_h, b_h), (a_w, b_w) = inverse(layer_map(layer))

    def interp_matrix(n_out, n_in, a, b):
        u = np.array([float(a * o + b) for o in range(n_out)])
        inside = (u >= 0) & (u <= n_in - 1)
        return np.stack([np.interp(u, np.arange(n_in), e) for e in np.eye(n_in)], 1), inside

    A, rows = interp_matrix(y.shape[2], h, a_h, b_h)
    B, cols = interp_matrix(y.shape[3], w, a_w, b_w)
    expected = np.einsum("oh,chw,pw->cop", A, x[0], B)
    assert rows.sum() >= (h - 1) * f and cols.sum() >= (w - 1) * f
    np.testing.assert_allclose(y[0][:, rows][:, :, cols], expected[:, rows][:, :, cols],
                               rtol=1e-12, atol=1e-12)
