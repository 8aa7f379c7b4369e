"""Solvers and the training loop: the update rule with Caffe's multipliers, lr policies,
iter_size, loss sampling, checkpoints that resume exactly, Ctrl-C and NaN handling."""
import json
import os

import numpy as np
import pytest

from minifcn import layers as L
from minifcn import train
from minifcn.data import Loader, synthetic_splits
from minifcn.net import Net


def tiny_net(num_classes=3, normalize="valid", dropout=True, seed=0):
    net = Net(inputs=["data", "label"])
    net.add("conv1", L.Conv(3, 4, 3, pad=1, seed=seed), "data")
    net.add("relu1", L.ReLU(), "conv1", "conv1")
    net.add("pool1", L.MaxPool(2), "conv1")
    net.add("conv2", L.Conv(4, 6, 3, pad=1, seed=seed + 1), "pool1")
    net.add("relu2", L.ReLU(), "conv2", "conv2")
    if dropout:
        net.add("drop2", L.Dropout(0.3, seed=seed), "conv2", "conv2")
    net.add("score_fr", L.Conv(6, num_classes, 1, seed=seed + 2), "conv2")
    net.add("upscore", L.Deconv(num_classes, num_classes, 4, 2).freeze(), "score_fr")
    net.add("score", L.Crop(), ["upscore", "data"])
    net.add("loss", L.SoftmaxLoss(normalize=normalize), ["score", "label"])
    return net


@pytest.fixture(scope="module")
def shapes():
    tr, va = synthetic_splits(12, 4, seed=3, num_classes=3, size=(24, 32))
    return [tr[i] for i in range(len(tr))], [va[i] for i in range(len(va))]


def make_trainer(tmp_path, shapes, optimizer="sgd", iter_size=1, loss_sample=None, seed=0, **kw):
    net = tiny_net()
    loader = Loader(shapes[0], batch_size=2, crop=(24, 24), mirror=True, seed=seed)
    solver = train.make_solver(net, optimizer, lr=0.01, momentum=0.9, weight_decay=5e-4)
    return train.Trainer(net, solver, loader, str(tmp_path), val_data=shapes[1], num_classes=3,
                         iter_size=iter_size, loss_sample=loss_sample, sample_seed=seed,
                         val_interval=3, checkpoint_interval=2, progress=False, **kw)


def test_sgd_step_applies_multipliers(rng):
    net = tiny_net(dropout=False)
    for key, v in net.params().items():
        net.set_param(key, rng.standard_normal(v.shape))
        layer, _, p = key.rpartition(".")
        net.layers[layer].grads[p] = rng.standard_normal(v.shape).astype(np.float32)
    before = {k: v.copy() for k, v in net.params().items()}
    grads = {k: v.copy() for k, v in net.grads().items()}
    solver = train.SGD(net, lr=0.1, momentum=0.9, weight_decay=0.01)
    solver.step()
    p = net.params()
    # weights: lr 1x with decay; biases: lr 2x without decay (the reference's lr_mult/decay_mult)
    assert np.allclose(p["conv1.weight"], before["conv1.weight"] - 0.1 * (
        grads["conv1.weight"] + 0.01 * before["conv1.weight"]), atol=1e-6)
    assert np.allclose(p["conv1.bias"], before["conv1.bias"] - 0.2 * grads["conv1.bias"],
                       atol=1e-6)
    assert np.array_equal(p["upscore.weight"], before["upscore.weight"])      # frozen
    # the second step adds momentum: v2 = 0.9 v1 + lr g
    v1 = before["conv2.weight"] - p["conv2.weight"]
    w1 = p["conv2.weight"].copy()
    solver.step()
    expected = w1 - (0.9 * v1 + 0.1 * (grads["conv2.weight"] + 0.01 * w1))
    assert np.allclose(net.params()["conv2.weight"], expected, atol=1e-6)


def test_adam_first_step_moves_by_lr():
    net = tiny_net(dropout=False)
    w = net.params()["conv1.weight"].copy()
    g = np.where(np.arange(w.size).reshape(w.shape) % 2, 1.0, -3.0).astype(np.float32)
    net.layers["conv1"].grads["weight"] = g
    train.Adam(net, lr=0.01, weight_decay=0.0).step()
    # bias-corrected Adam's first step is lr * sign(g) (up to eps)
    assert np.allclose(net.params()["conv1.weight"], w - 0.01 * np.sign(g), atol=1e-6)


def test_lr_policies():
    net = tiny_net()
    assert train.SGD(net, lr=0.1, policy="step", stepsize=10, gamma=0.5).lr(25) == 0.1 * 0.25
    poly = train.SGD(net, lr=0.1, policy="poly", max_iter=100, power=2)
    assert np.isclose(poly.lr(50), 0.1 * 0.25) and poly.lr(100) == 0
    assert train.SGD(net, lr=0.1).lr(10**6) == 0.1
    with pytest.raises(ValueError, match="stepsize"):
        train.SGD(net, lr=0.1, policy="step")


def test_iter_size_equals_bigger_batch(rng):
    """Two accumulated batches of 1 == one batch of 2 (with the reference's 'batch'
    normalisation, which divides the pixel sum by N)."""
    x = rng.standard_normal((2, 3, 8, 8)).astype(np.float32)
    y = rng.integers(0, 3, (2, 8, 8))
    a, b = tiny_net(normalize="batch", dropout=False), tiny_net(normalize="batch", dropout=False)
    a.forward(data=x, label=y)
    a.backward(input_grads=False)
    train.SGD(a, lr=0.1).step()
    for k in range(2):
        b.forward(data=x[k:k + 1], label=y[k:k + 1])
        b.backward(input_grads=False, accumulate=k > 0)
    train.SGD(b, lr=0.1).step(grad_scale=1 / 2)
    for key in a.params():
        assert np.allclose(a.params()[key], b.params()[key], atol=1e-6), key


def classifier_net(seed=0):
    """A conv and a fully connected layer (a 2-D weight) on 8x8 inputs, 5 classes."""
    net = Net(inputs=["data", "label"])
    net.add("conv1", L.Conv(3, 4, 3, seed=seed), "data")
    net.add("relu1", L.ReLU(), "conv1", "conv1")
    net.add("fc", L.InnerProduct((4, 6, 6), 5, seed=seed + 1), "conv1")
    net.add("loss", L.SoftmaxLoss(), ["fc", "label"])
    return net


@pytest.mark.parametrize("optimizer", ["sgd", "adam"])
@pytest.mark.parametrize("block", [None, 300])
@pytest.mark.parametrize("which", ["fcn", "classifier"])
def test_gradients_applied_during_backward_are_the_same_update(rng, monkeypatch, optimizer,
                                                               block, which):
    """Solver.during_backward (what Trainer.step takes) ends with the weights of backward then
    step(), bit for bit, over steps where momentum / Adam's moments matter. With a small
    GRAD_BLOCK_BYTES the weight gradients arrive a block of output channels at a time: the
    same sums, but a GEMM with fewer rows may add in another order (OpenBLAS picks its kernel
    by size), so those agree to float rounding."""
    if block:
        monkeypatch.setattr(L, "GRAD_BLOCK_BYTES", block)
    make = (lambda: tiny_net(dropout=False)) if which == "fcn" else classifier_net
    a, b = make(), make()
    sa, sb = (train.make_solver(n, optimizer, lr=0.05, momentum=0.9, weight_decay=1e-3)
              for n in (a, b))
    applied = []
    apply = sb._apply
    sb._apply = lambda name, layer, p, g, *r: applied.append((name, p, g.shape)) or apply(
        name, layer, p, g, *r)
    for _ in range(3):
        if which == "fcn":
            x, y = rng.standard_normal((2, 3, 8, 8)), rng.integers(0, 3, (2, 8, 8))
        else:
            x, y = rng.standard_normal((2, 3, 8, 8)), rng.integers(0, 5, (2, 1, 1))
        x = x.astype(np.float32)
        a.forward(data=x, label=y)
        a.backward(input_grads=False)
        sa.step()
        b.forward(data=x, label=y)
        applied.clear()
        with sb.during_backward():
            b.backward(input_grads=False)
        for key in a.params():
            if block:
                np.testing.assert_allclose(b.params()[key], a.params()[key], rtol=1e-5,
                                           atol=1e-6, err_msg=key)
            else:
                assert np.array_equal(a.params()[key], b.params()[key]), key
    assert sb.iter == sa.iter == 3
    assert all(not np.any(g) for g in b.grads().values())     # applied, then dropped
    big = "conv2" if which == "fcn" else "fc"
    shapes_in = [s for n, p, s in applied if (n, p) == (big, "weight")]
    whole = b.params()[big + ".weight"].shape
    if block:              # conv2: 6 rows of 144 bytes -> 3 blocks; fc: 5 rows of 576 -> 5
        assert len(shapes_in) > 1 and sum(s[0] for s in shapes_in) == whole[0]
        assert all(s[1:] == whole[1:] for s in shapes_in)
    else:
        assert shapes_in == [whole]
    if which == "fcn":                                          # frozen: never applied
        assert not any(n == "upscore" for n, _, _ in applied)


@pytest.mark.parametrize("block", [None, 30])
def test_gradients_applied_during_backward_cannot_accumulate(rng, monkeypatch, block):
    """Refused before any update, whole gradients or blocks (30 bytes: score_fr, the first
    trainable layer backward meets, has 24-byte rows)."""
    if block:
        monkeypatch.setattr(L, "GRAD_BLOCK_BYTES", block)
    net = tiny_net(dropout=False)
    before = {k: v.copy() for k, v in net.params().items()}
    solver = train.SGD(net, lr=0.1)
    x = rng.standard_normal((1, 3, 8, 8)).astype(np.float32)
    net.forward(data=x, label=rng.integers(0, 3, (1, 8, 8)))
    with pytest.raises(ValueError, match="iter_size"):
        with solver.during_backward():
            net.backward(input_grads=False, accumulate=True)
    assert solver.iter == 0 and all(layer.grad_sink is None for layer in net.layers.values())
    assert all(np.array_equal(v, before[k]) for k, v in net.params().items())


def test_trainer_applies_gradients_during_backward_unless_iter_size(tmp_path, shapes):
    """One pass: the gradients are applied and dropped as backward goes (they read as zeros
    after a step); iter_size 2 keeps them whole for the sum, then steps. Either way the
    forward leaves backward only the inputs and what the loss layer reads and writes."""
    for iter_size, dropped in ((1, True), (2, False)):
        t = make_trainer(tmp_path / str(iter_size), shapes, iter_size=iter_size)
        left, backward = [], t.net.backward           # what forward left for backward
        t.net.backward = lambda *a, **k: left.append(set(t.net.blobs)) or backward(*a, **k)
        t.step()
        assert t.solver.iter == 1
        assert all(not np.any(g) for g in t.net.grads().values()) == dropped
        # the forward dropped each blob once read, but what the loss reads back
        assert left == [{"data", "label", "score", "loss"}] * iter_size


def test_loss_sampling_keeps_a_fraction(tmp_path, shapes):
    t = make_trainer(tmp_path, shapes, loss_sample=0.25)
    labels = np.zeros((4, 50, 50), np.int32)
    kept = (t._sample(labels) != 255).mean()
    assert 0.2 < kept < 0.3
    with pytest.raises(ValueError, match="loss_sample"):
        make_trainer(tmp_path, shapes, loss_sample=0.0)


def test_training_reduces_loss_and_writes_outputs(tmp_path, shapes):
    t = make_trainer(tmp_path, shapes, optimizer="adam")
    t.solver.base_lr = 0.01
    first = t.step()
    status = t.run(30, log_every=5)
    assert status == "done" and t.solver.iter == 30
    losses = [r["loss"] for r in t.history if "loss" in r]
    assert np.mean(losses[-2:]) < first
    assert {"val_mean_iu", "val_pixel_acc"} <= set(t.history[-1])
    for name in ("checkpoint.npz", "log.jsonl", "curves.png"):
        assert os.path.exists(tmp_path / name), name
    with open(tmp_path / "log.jsonl") as f:
        assert all("iter" in json.loads(line) for line in f)


@pytest.mark.parametrize("optimizer", ["sgd", "adam"])
def test_resume_matches_uninterrupted(tmp_path, shapes, optimizer):
    """Stop after 5 iterations (Ctrl-C), resume in fresh objects, run to 9: the weights equal
    those of one uninterrupted 9-iteration run (data order, crops, mirrors, dropout masks,
    loss sampling and momentum all restored)."""
    full = make_trainer(tmp_path / "full", shapes, optimizer, loss_sample=0.5)
    full.run(9)

    part = make_trainer(tmp_path / "part", shapes, optimizer, loss_sample=0.5)
    real_step = part.step

    def step_then_interrupt():
        loss = real_step()
        if part.solver.iter == 5:
            part._on_sigint(None, None)          # as if Ctrl-C arrived mid-iteration
        return loss
    part.step = step_then_interrupt
    assert part.run(9) == "interrupted" and part.solver.iter == 5

    resumed = make_trainer(tmp_path / "part", shapes, optimizer, loss_sample=0.5, seed=99)
    info = resumed.resume()
    assert info["iter"] == 5
    assert resumed.run(9) == "done"
    for key, v in full.net.params().items():
        assert np.array_equal(resumed.net.params()[key], v), key


@pytest.mark.filterwarnings("ignore::RuntimeWarning")      # the overflow is the point
def test_nan_loss_stops_and_keeps_last_good_checkpoint(tmp_path, shapes):
    t = make_trainer(tmp_path, shapes)
    t.run(2)
    good = {k: v.copy() for k, v in t.net.params().items()}
    t.solver.base_lr = 1e30                      # certain to blow up
    with pytest.raises(train.TrainingDiverged, match="iteration .* lr"):
        t.run(50)
    fresh = tiny_net()
    train.load_checkpoint(str(tmp_path / "checkpoint.npz"), fresh)
    for k, v in good.items():
        assert np.array_equal(fresh.params()[k], v)


def test_checkpoint_errors(tmp_path, shapes):
    with pytest.raises(FileNotFoundError, match="nope.npz"):
        train.load_checkpoint(str(tmp_path / "nope.npz"), tiny_net())
    np.savez(tmp_path / "plain.npz", a=np.zeros(3))
    with pytest.raises(ValueError, match="not a minifcn checkpoint"):
        train.load_checkpoint(str(tmp_path / "plain.npz"), tiny_net())
    t = make_trainer(tmp_path, shapes)
    t.checkpoint()
    with pytest.raises(ValueError, match="does not fit"):
        train.load_checkpoint(t.checkpoint_path, tiny_net(num_classes=4))


def test_evaluate_perfect_and_any_size(shapes):
    net = tiny_net(dropout=False)
    scores = train.evaluate(net, shapes[1], 3)
    assert set(scores) >= {"pixel_acc", "mean_acc", "mean_iu", "fw_iu", "loss"}
    assert 0 <= scores["mean_iu"] <= 1 and np.isfinite(scores["loss"])
    pred = train.predict(net, np.zeros((1, 3, 37, 29), np.float32))
    assert pred.shape == (1, 37, 29)
