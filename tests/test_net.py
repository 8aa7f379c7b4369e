"""The layer graph: gradient checks of small nets with a skip, a crop and a sum on every
device; blobs read twice; in-place layers; frozen parameters; accumulation; shape errors
that name the layer; save/load."""

from fractions import Fraction

import numpy as np
import pytest

from minifcn import layers as L
from minifcn.gradcheck import check_net, rel_error
from minifcn.net import Net

DEVICES = ["numpy", "cpu"]


def skip_net(num_classes=3, seed=0, loss=True):
    """A miniature FCN: two pooled stages, a 3x3 'fc', a score layer, a learned 2x upsampling,
    a scored skip from pool1 cropped and summed in, a final 2x upsampling cropped to the input."""
    net = Net(inputs=["data", "label"] if loss else ["data"])
    net.add("conv1", L.Conv(3, 4, 3, pad=5, seed=seed), "data")
    net.add("relu1", L.ReLU(), "conv1", "conv1")
    net.add("pool1", L.MaxPool(2, 2), "conv1")
    net.add("conv2", L.Conv(4, 6, 3, pad=1, seed=seed + 1), "pool1")
    net.add("relu2", L.ReLU(slope=0.1), "conv2", "conv2")
    net.add("pool2", L.AvgPool(2, 2), "conv2")
    net.add("fc", L.Conv(6, 5, 3, seed=seed + 2), "pool2")
    net.add("drop", L.Dropout(0.5, seed=seed), "fc", "fc")
    net.add("score", L.Conv(5, num_classes, 1, seed=seed + 3), "fc")
    net.add("up2", L.Deconv(num_classes, num_classes, 4, 2), "score")
    net.add("score_pool1", L.Conv(4, num_classes, 1, seed=seed + 4), "pool1")
    net.add("score_pool1c", L.Crop(), ["score_pool1", "up2"])
    net.add("fuse", L.Sum(), ["up2", "score_pool1c"])
    net.add("up", L.Deconv(num_classes, num_classes, 4, 2).freeze(), "fuse")
    net.add("score_final", L.Crop(), ["up", "data"])
    if loss:
        net.add("loss", L.SoftmaxLoss(), ["score_final", "label"])
    return net


def randomize_biases(net, rng):
    """Zero biases put every padded position exactly on ReLU's kink; move them off it."""
    for key, value in net.params().items():
        if key.endswith(".bias"):
            net.set_param(key, rng.uniform(0.1, 0.5, value.shape) * rng.choice([-1, 1],
                                                                             value.shape))


@pytest.mark.parametrize("device", DEVICES)
def test_skip_net_gradients(device, rng):
    net = skip_net().astype(np.float64).to(device).eval()
    randomize_biases(net, rng)
    x = rng.standard_normal((2, 3, 13, 11))
    labels = rng.integers(0, 3, (2, 13, 11))
    labels[0, :2] = 255
    errors = check_net(net, {"data": x, "label": labels}, n_probe=12)
    assert "up.weight" not in errors                       # frozen: not even checked
    assert set(errors) >= {"conv1.weight", "up2.weight", "score_pool1.bias", "data"}
    assert max(errors.values()) < 1e-6, errors


def test_crop_offsets_are_derived():
    net = skip_net()
    # by hand, y = a*data + b through the layers: conv1 (k3 p5) +4; pool1 /2 - 1/4 -> 1/2, 7/4;
    # conv2 (k3 p1) +0; pool2 -> 1/4, 5/8; fc (k3 p0) -1 -> 1/4, -3/8; up2 (k4 s2) x2 + 3/2
    # -> 1/2, 3/4; score_pool1 sits at 1/2, 7/4, so its crop starts 1 in; up -> 1, 3: offset 3
    assert net.layers["score_final"].offset == (3, 3)
    assert net.layers["score_pool1c"].offset == (1, 1)
    out = net.forward(data=np.zeros((1, 3, 13, 11), np.float32),
                      label=np.zeros((1, 13, 11), int))
    assert net.blobs["score_final"].shape == (1, 3, 13, 11) and np.isfinite(out)


def test_devices_agree_and_float32_runs(rng):
    x = rng.standard_normal((2, 3, 16, 12)).astype(np.float32)
    labels = rng.integers(0, 3, (2, 16, 12))
    results = []
    for device in DEVICES:
        net = skip_net().to(device).eval()
        loss = net.forward(data=x, label=labels)
        dx = net.backward()
        results.append((loss, dx, net.grads()["conv1.weight"]))
    assert np.isclose(results[0][0], results[1][0], rtol=1e-5)
    assert rel_error(results[0][1], results[1][1]) < 1e-4
    assert rel_error(results[0][2], results[1][2]) < 1e-4
    assert results[1][1].dtype == np.float32


def test_blob_read_twice_sums_gradients(rng):
    """y = conv_a(x) + conv_b(x): x's gradient is the sum of both paths'."""
    net = Net(inputs=["data"])
    net.add("a", L.Conv(2, 3, 3, pad=1, seed=1), "data")
    net.add("b", L.Conv(2, 3, 1, seed=2), "data")
    net.add("sum", L.Sum([1.0, -0.5]), ["a", "b"])
    net.astype(np.float64)
    x = rng.standard_normal((1, 2, 5, 4))
    errors = check_net(net, {"data": x}, n_probe=20)
    assert max(errors.values()) < 1e-6, errors


def test_input_grads_and_frozen_layers_skip_work(rng):
    net = skip_net()
    x = rng.standard_normal((1, 3, 13, 11)).astype(np.float32)
    net.forward(data=x, label=np.zeros((1, 13, 11), int))
    assert net.backward(input_grads=False) is None
    assert not net.layers["up"].trainable("weight")
    assert np.all(net.grads()["up.weight"] == 0)            # never computed
    assert np.any(net.grads()["up2.weight"] != 0)


def test_accumulate_adds_gradients(rng):
    net = skip_net().eval()
    feed = dict(data=rng.standard_normal((1, 3, 13, 11)).astype(np.float32),
                label=np.zeros((1, 13, 11), int))
    net.forward(**feed)
    net.backward()
    once = {k: v.copy() for k, v in net.grads().items()}
    net.forward(**feed)
    net.backward(accumulate=True)
    for k, v in net.grads().items():
        assert np.allclose(v, 2 * once[k], rtol=1e-5, atol=1e-7), k
    net.zero_grads()
    assert all(np.all(v == 0) for v in net.grads().values())


def test_dropout_only_in_train_mode(rng):
    net = skip_net(loss=False)
    x = rng.standard_normal((1, 3, 13, 11)).astype(np.float32)
    a, b = net.eval().forward(data=x), net.forward(data=x)
    assert np.array_equal(a, b)
    c = net.train().forward(data=x)
    assert not np.allclose(a, c)


def test_outputs_and_multiple_outputs(rng):
    net = skip_net(loss=False)
    assert net.outputs == ["score_final"]
    net.add("aux", L.ReLU(), "pool2")
    out = net.forward(rng.standard_normal((1, 3, 13, 11)).astype(np.float32))
    assert set(out) == {"score_final", "aux"}
    with pytest.raises(ValueError, match="no loss layer"):
        net.backward()
    dx = net.backward(grads={"score_final": np.ones_like(out["score_final"])})
    assert dx.shape == (1, 3, 13, 11)


def test_shape_errors_name_layer_and_blobs():
    net = skip_net(loss=False)
    with pytest.raises(ValueError) as e:
        net.forward(data=np.zeros((1, 4, 13, 11), np.float32))
    msg = str(e.value)
    assert "'conv1'" in msg and "data (1, 4, 13, 11)" in msg and "3 channels" not in msg
    assert "4 channels" in msg
    with pytest.raises(ValueError, match="'conv1'.*float64"):
        net.forward(data=np.zeros((1, 3, 13, 11)))
    with pytest.raises(ValueError, match="missing \\['data'\\]"):
        net.forward(image=np.zeros((1, 3, 13, 11)))


def test_graph_errors():
    net = Net(inputs=["data"])
    with pytest.raises(ValueError, match="'nope'"):
        net.add("c", L.Conv(3, 3, 1), "nope")
    net.add("c", L.Conv(3, 3, 1), "data")
    with pytest.raises(ValueError, match="already exists"):
        net.add("c", L.ReLU(), "c", "c2")
    with pytest.raises(ValueError, match="only ReLU"):
        net.add("p", L.MaxPool(2), "c", "c")
    net.add("reader", L.MaxPool(2), "c")
    with pytest.raises(ValueError, match="in place after \\['reader'\\]"):
        net.add("r", L.ReLU(), "c", "c")
    with pytest.raises(ValueError, match="takes 2 bottom"):
        net.add("crop", L.Crop(), ["c"])


def test_crop_that_cannot_align_names_blobs_and_map():
    net = Net(inputs=["data"])
    net.add("pool", L.MaxPool(2, 2), "data")
    with pytest.raises(ValueError) as e:
        net.add("crop", L.Crop(), ["pool", "data"])
    msg = str(e.value)
    assert "'pool'" in msg and "'data'" in msg and "a=2, b=1/2" in msg


def test_save_load_roundtrip(tmp_path, rng):
    net = skip_net()
    randomize_biases(net, rng)
    path = tmp_path / "w.npz"
    net.save(path)
    assert [p.name for p in tmp_path.iterdir()] == ["w.npz"]   # no temp file left behind
    other = skip_net(seed=99)
    other.load(path)
    for k, v in net.params().items():
        assert np.array_equal(other.params()[k], v)
    bigger = skip_net(num_classes=4)
    with pytest.raises(ValueError) as e:
        bigger.load(path)
    assert "score.weight: file (3, 5, 1, 1) vs net (4, 5, 1, 1)" in str(e.value)
    with np.load(path) as f:
        stored = {k: f[k] for k in f.files if k != "conv1.bias"}
    np.savez(tmp_path / "partial.npz", **stored)
    with pytest.raises(ValueError, match="missing \\['conv1.bias'\\]"):
        other.load(tmp_path / "partial.npz")
    assert other.load(tmp_path / "partial.npz", strict=False)["missing"] == ["conv1.bias"]


def test_params_specs_and_counts():
    net = skip_net()
    specs = net.param_specs()
    assert specs["conv1.weight"] == (1.0, 1.0) and specs["conv1.bias"] == (2.0, 0.0)
    assert specs["up.weight"] == (0.0, 1.0)
    expected = sum(int(np.prod(v.shape)) for v in net.params().values())
    assert net.num_params() == expected
    assert net.num_params(trainable_only=True) == expected - 3 * 3 * 4 * 4
    assert list(net.params())[:2] == ["conv1.weight", "conv1.bias"]


def test_timings_recorded(rng):
    net = skip_net()
    net.forward(data=rng.standard_normal((1, 3, 13, 11)).astype(np.float32),
                label=np.zeros((1, 13, 11), int))
    net.backward()
    assert set(net.timings) == set(net.layers)
    assert all(f >= 0 and b >= 0 for f, b in net.timings.values())
    assert net.timings["conv2"][1] > 0


def test_backward_drops_blobs_and_saved_state_with_the_gradients_unchanged(rng):
    """Backward frees what no later step of it reads (the blobs behind it, each layer's saved
    arrays), keeping the inputs and outputs; the gradients are those of a keep-all pass, and
    keep=True / keep=[names] keep every blob / those. A keep-all net may run backward twice."""
    x = {"data": rng.standard_normal((2, 3, 13, 11)),
         "label": rng.integers(0, 3, (2, 13, 11))}
    nets = {}
    for keep in (True, False, ["pool1", "fuse"]):
        net = skip_net(seed=1).astype(np.float64).eval()
        randomize_biases(net, np.random.default_rng(5))
        net.forward(**x)
        made = set(net.blobs)
        dx = net.backward(keep=keep)
        nets[str(keep)] = (net, dx, made)
    full, dx_full, made = nets["True"]
    assert set(full.blobs) == made and full.layers["conv1"].x is not None
    np.testing.assert_array_equal(full.backward(keep=True), dx_full)     # again: the same
    for keep, want in (("False", set()), ("['pool1', 'fuse']", {"pool1", "fuse"})):
        net, dx, _ = nets[keep]
        assert set(net.blobs) == {"data", "label", "loss"} | want, keep
        for name in ("conv1", "up2", "pool1", "relu1", "loss"):
            layer = net.layers[name]
            assert all(getattr(layer, k) is None for k in layer.saved) and layer.saved, name
        np.testing.assert_array_equal(dx, dx_full)
        for k, g in full.grads().items():
            np.testing.assert_array_equal(net.grads()[k], g, err_msg=k)
        for b in want:
            np.testing.assert_array_equal(net.blobs[b], full.blobs[b])
        with pytest.raises(ValueError, match="second backward needs forward again"):
            net.backward()


def test_forward_keep_false_drops_read_blobs_and_backward_is_unchanged(rng):
    """forward(keep=False), a training step's: each blob goes once its last reader has run
    (backward needs only what the layers saved: ReLU its sign bits), inputs and outputs stay,
    keep=[names] and until= keep those; the gradients are bit for bit a keep-all pass's."""
    x = {"data": rng.standard_normal((2, 3, 13, 11)),
         "label": rng.integers(0, 3, (2, 13, 11))}
    runs = {}
    for keep in (True, False, ["pool1", "conv2"]):
        net = skip_net(seed=1).astype(np.float64)      # train mode: dropout draws the same
        randomize_biases(net, np.random.default_rng(5))
        loss = net.forward(**x, keep=keep)
        runs[str(keep)] = (net, set(net.blobs), loss, net.backward())
    full, made, loss, dx = runs["True"]
    assert {"conv1", "pool1", "score", "fuse"} <= made
    for keep, extra in (("False", set()), ("['pool1', 'conv2']", {"pool1", "conv2"})):
        net, left, loss_k, dx_k = runs[keep]
        assert left == {"data", "label", "loss"} | extra, keep
        assert loss_k == loss
        np.testing.assert_array_equal(dx_k, dx)
        for k, g in full.grads().items():
            np.testing.assert_array_equal(net.grads()[k], g, err_msg=k)
    net = skip_net(seed=1).astype(np.float64)
    fc = net.forward(data=x["data"], until="fc", keep=False)
    assert set(net.blobs) == {"data", "fc"} and net.blobs["fc"] is fc
    net.forward(**x, keep="pool1")                     # one name alone: not its letters
    assert set(net.blobs) == {"data", "label", "loss", "pool1"}


def test_keep_names_are_checked_before_any_work(rng):
    """A name in keep that is no blob of the net is refused, naming it, before forward
    touches the net's blobs or backward the gradients."""
    x = {"data": rng.standard_normal((1, 3, 13, 11)).astype(np.float32),
         "label": rng.integers(0, 3, (1, 13, 11))}
    net = skip_net()
    net.forward(**x)
    before = dict(net.blobs)
    with pytest.raises(ValueError, match=r"keep: no blob \['pool_1'\]"):
        net.forward(**x, keep=["pool1", "pool_1"])
    assert set(net.blobs) == set(before) and all(net.blobs[k] is v for k, v in before.items())
    grads = {k: g.copy() for k, g in net.grads().items()}
    with pytest.raises(ValueError, match=r"keep: no blob \['fusion'\]"):
        net.backward(keep=["fusion"])
    assert set(net.blobs) == set(before)
    for k, g in net.grads().items():
        np.testing.assert_array_equal(g, grads[k], err_msg=k)


class _Twice(L.Layer):
    """Two tops (x, 2x): a layer whose second top may get no gradient back."""
    def coord_map(self):
        return ((Fraction(1), Fraction(0)),) * 2

    def _forward(self, x):
        return x.copy(), 2 * x

    def _backward(self, dtops, need, accumulate):
        return dtops[0] + 2 * dtops[1]


def test_forward_keep_false_keeps_a_multi_top_layers_tops(rng):
    """b is read only as a Crop's reference, so backward brings it no gradient and makes
    zeros shaped like it: forward(keep=False) must leave it."""
    x, grads = rng.standard_normal((1, 3, 5, 5)).astype(np.float32), []
    for keep in (True, False):
        net = Net(inputs=["data"])
        net.add("two", _Twice(), "data", ["a", "b"])
        net.add("conv", L.Conv(3, 2, 3, pad=1, seed=0), "a")
        net.add("crop", L.Crop(offset=0), ["conv", "b"])
        out = net.forward(data=x, keep=keep)
        assert {"a", "b"} <= set(net.blobs) and ("conv" in net.blobs) == keep
        grads.append(net.backward({"crop": np.ones_like(out)}))
    np.testing.assert_array_equal(grads[0], grads[1])
