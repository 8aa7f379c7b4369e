"""A Net on the cuda device, end to end: forward, backward, gradient check, solver steps,
evaluation, checkpoints and `minifcn train --device cuda`, against the cpu device.

Without a GPU these run in Numba's simulator (NUMBA_ENABLE_CUDASIM=1, set by conftest.py),
which runs every CUDA thread as a Python thread (~0.1 ms each), so the nets and images are
tiny. The simulator's device arrays are NumPy arrays in disguise: they do arithmetic and hand
out every ndarray attribute, so code that treats a device array as a NumPy one would pass
here and break on a GPU. The fixture `gpu_like_arrays` takes that away (see there) and counts
what crosses the bus, so these tests also check that a cuda net keeps its arrays on the device.
"""
import os

os.environ.setdefault("NUMBA_ENABLE_CUDASIM", "1")   # before numba.cuda is first imported

import json  # noqa: E402
import sys  # noqa: E402

import numpy as np  # noqa: E402
import pytest  # noqa: E402

from cuda_support import load_cuda  # noqa: E402

K = load_cuda()
from minifcn import layers as L  # noqa: E402
from minifcn.cli import main  # noqa: E402
from minifcn.gradcheck import check_net, rel_error  # noqa: E402
from minifcn.kernels.cuda import util as cuda_util  # noqa: E402
from minifcn.net import Net  # noqa: E402
from minifcn.train import (Trainer, evaluate, load_checkpoint, make_solver,  # noqa: E402
                           predict)

is_dev = K.is_device_array
host = K.to_host


# ----------------------------------------------------------------------------- simulator set-up
@pytest.fixture(scope="module", autouse=True)
def quick_simulator():
    """In the simulator, one block per elementwise launch (not 4) and a short GIL switch
    interval (its threads wait on one another at barriers): about 3x faster here. The kernels'
    multi-block paths are tested in test_cuda_kernels.py; these tests are about the plumbing."""
    if not cuda_util.SIM:
        yield
        return
    blocks, interval = cuda_util._SIM_BLOCKS, sys.getswitchinterval()
    cuda_util._SIM_BLOCKS = 1
    sys.setswitchinterval(1e-4)
    yield
    cuda_util._SIM_BLOCKS = blocks
    sys.setswitchinterval(interval)


class Bus:
    """What crossed between host and device: sizes of the arrays copied each way."""

    def __init__(self):
        self.up, self.down = [], []

    def clear(self):
        self.up.clear()
        self.down.clear()


_DEVICE_ATTRS = {"shape", "strides", "ndim", "size", "dtype", "nbytes", "flags", "gpu_data", "squeeze",
                 "stream", "alloc_size", "__cuda_array_interface__"}


@pytest.fixture(autouse=True)
def gpu_like_arrays(monkeypatch):
    """Record the copies both ways (host -> device through cuda.to_device, device -> host
    through copy_to_host); yields a Bus. In the simulator also make device arrays behave as a
    GPU's, only stricter: no arithmetic or comparisons (a DeviceNDArray has none), no
    conversion to NumPy (a DeviceNDArray's __array__ would copy to the host behind the user's
    back), only DeviceNDArray's attributes, and no host array handed to a kernel (numba would
    copy it over and back at every launch)."""
    bus = Bus()
    if cuda_util.SIM:
        from numba.cuda.simulator.cudadrv.devicearray import FakeCUDAArray as array_class
    else:
        from numba.cuda.cudadrv.devicearray import DeviceNDArrayBase as array_class

    copy_to_host = array_class.copy_to_host

    def counted_copy_to_host(self, *args, **kwargs):
        bus.down.append(int(self.size))
        return copy_to_host(self, *args, **kwargs)
    monkeypatch.setattr(array_class, "copy_to_host", counted_copy_to_host)

    to_device = cuda_util.cuda.to_device

    def counted_to_device(a, *args, **kwargs):
        bus.up.append(int(np.size(a)))
        return to_device(a, *args, **kwargs)
    monkeypatch.setattr(cuda_util.cuda, "to_device", counted_to_device)
    if not cuda_util.SIM:
        yield bus
        return

    from numba.cuda.simulator import kernel as sim_kernel
    wrapped_getattr = array_class.__getattr__

    def getattr_(self, name):
        if name not in _DEVICE_ATTRS:
            raise AttributeError(f"a device array has no attribute {name!r}")
        return wrapped_getattr(self, name)

    def numpy_on_device(self, *args, **kwargs):
        raise TypeError("NumPy arithmetic or conversion on a device array")

    monkeypatch.setattr(array_class, "__getattr__", getattr_)
    for name in ("__array__", "__add__", "__sub__", "__mul__", "__truediv__", "__floordiv__",
                 "__mod__", "__pow__", "__eq__", "__ne__", "__lt__", "__le__", "__gt__",
                 "__ge__"):
        monkeypatch.setattr(array_class, name, numpy_on_device, raising=False)

    launch = sim_kernel.FakeCUDAKernel.__call__

    def checked_launch(self, *args):
        hosts = [i for i, a in enumerate(args) if isinstance(a, np.ndarray) and a.ndim]
        assert not hosts, f"kernel {self.fn.__name__} got host arrays as arguments {hosts}"
        return launch(self, *args)
    monkeypatch.setattr(sim_kernel.FakeCUDAKernel, "__call__", checked_launch)
    yield bus


# ----------------------------------------------------------------------------- nets and data
def skip_net(seed=0, dtype=np.float64):
    """The smallest FCN: two pooled stages, a scored skip from pool1 summed with the 2x
    upsampled score, a frozen 2x upsampling cropped to the input; both crops derived."""
    net = Net(inputs=["data", "label"])
    net.add("conv1", L.Conv(2, 3, 3, pad=2, seed=seed, dtype=dtype), "data")
    net.add("relu1", L.ReLU(), "conv1", "conv1")
    net.add("pool1", L.MaxPool(2, 2), "conv1")
    net.add("conv2", L.Conv(3, 3, 3, pad=1, seed=seed + 1, dtype=dtype), "pool1")
    net.add("relu2", L.ReLU(slope=0.1), "conv2", "conv2")
    net.add("pool2", L.AvgPool(2, 2), "conv2")
    net.add("score2", L.Conv(3, 2, 1, seed=seed + 2, dtype=dtype), "pool2")
    net.add("up2", L.Deconv(2, 2, 4, 2, dtype=dtype), "score2")
    net.add("score_pool1", L.Conv(3, 2, 1, seed=seed + 3, dtype=dtype), "pool1")
    net.add("up2c", L.Crop(), ["up2", "score_pool1"])
    net.add("fuse", L.Sum(), ["up2c", "score_pool1"])
    net.add("up", L.Deconv(2, 2, 4, 2, dtype=dtype).freeze(), "fuse")
    net.add("score", L.Crop(), ["up", "data"])
    net.add("loss", L.SoftmaxLoss(), ["score", "label"])
    rng = np.random.default_rng(seed)     # biases off zero: no padded pixel on ReLU's kink
    for key, value in net.params().items():
        if key.endswith(".bias"):
            net.set_param(key, rng.uniform(0.1, 0.5, value.shape) * rng.choice([-1, 1],
                                                                             value.shape))
    return net


def small_net(seed=0, dtype=np.float64, in_ch=2, loss=True):
    """conv 3x3 -> ReLU -> 1x1 score (3 classes) -> loss: for solver and scoring tests."""
    net = Net(inputs=["data", "label"] if loss else ["data"])
    net.add("conv", L.Conv(in_ch, 4, 3, pad=1, seed=seed, dtype=dtype), "data")
    net.add("relu", L.ReLU(slope=0.05), "conv", "conv")
    net.add("score", L.Conv(4, 3, 1, seed=seed + 1, dtype=dtype), "conv")
    if loss:
        net.add("loss", L.SoftmaxLoss(), ["score", "label"])
    return net


def feed(rng, n=1, shape=(6, 6), classes=2, in_ch=2):
    labels = rng.integers(0, classes, (n,) + shape)
    labels[0, 0, :2] = 255                                   # void pixels count for nothing
    return {"data": rng.standard_normal((n, in_ch) + shape), "label": labels}


def assert_on_device(net, blobs=True):
    assert net.device == "cuda"
    for key, v in list(net.params().items()) + list(net.grads().items()):
        assert is_dev(v), key
    if blobs:
        for name, v in net.blobs.items():
            assert name == "loss" or is_dev(v), name


@pytest.mark.skipif(not cuda_util.SIM, reason="the simulator's arrays are made strict")
def test_simulated_device_arrays_are_strict(gpu_like_arrays):
    d = K.to_device(np.arange(4.0))
    for numpy_op in (lambda: np.asarray(d), lambda: d + d, lambda: d * 2.0, lambda: np.sum(d),
                     lambda: np.zeros(4) + d, lambda: d == 0):
        with pytest.raises(TypeError):
            numpy_op()
    with pytest.raises(AttributeError):
        d.astype(np.float32)
    with pytest.raises(AssertionError, match="host arrays"):
        cuda_util._fill_kernel[1, 1](np.zeros(4), 1.0)
    assert np.array_equal(host(d), np.arange(4.0)) and gpu_like_arrays.down == [4]
    assert gpu_like_arrays.up == [4]


# ----------------------------------------------------------------------------- forward / backward
def test_forward_backward_equal_cpu(rng, gpu_like_arrays):
    x = feed(rng)
    cpu, gpu = skip_net().to("cpu"), skip_net().to("cuda")
    assert gpu.layers["up2c"].offset == (1, 1) and gpu.layers["score"].offset == (2, 2)
    loss_cpu, dx_cpu = cpu.forward(**x), cpu.backward(keep=True)    # blobs compared below
    gpu_like_arrays.clear()
    loss_gpu, dx_gpu = gpu.forward(**x), gpu.backward(keep=True)
    assert sorted(gpu_like_arrays.up) == sorted([x["data"].size, x["label"].size])
    assert gpu_like_arrays.down == [3]        # the loss: its three sums, nothing else
    assert isinstance(loss_gpu, float) and is_dev(dx_gpu)
    assert_on_device(gpu)
    assert loss_gpu == pytest.approx(loss_cpu, rel=1e-12)
    assert rel_error(host(dx_gpu), dx_cpu) < 1e-12
    for name in ("pool1", "fuse", "score"):
        assert rel_error(host(gpu.blobs[name]), cpu.blobs[name]) < 1e-12, name
    grads_cpu = cpu.grads()
    for key, g in gpu.grads(host=True).items():
        assert isinstance(g, np.ndarray)
        assert rel_error(g, grads_cpu[key]) < 1e-12, key
    assert not np.any(gpu.grads(host=True)["up.weight"])      # frozen: never computed


def test_gradient_check_on_cuda(rng):
    """float64 finite differences (taken on a host copy of the net) against cuda's backward."""
    net = skip_net().to("cuda").eval()
    errors = check_net(net, feed(rng), n_probe=6)
    assert set(errors) >= {"conv1.weight", "conv2.bias", "up2.weight", "score_pool1.weight",
                           "data"} and "up.weight" not in errors
    assert max(errors.values()) < 1e-6, errors
    assert_on_device(net, blobs=False)          # moved back after the numeric part


def test_to_round_trip_and_parameter_access(tmp_path, gpu_like_arrays):
    net = skip_net(dtype=np.float32)
    before = {k: v.copy() for k, v in net.params().items()}
    assert net.to("cuda") is net
    assert all(layer.device == "cuda" for layer in net.layers.values())
    assert_on_device(net, blobs=False)
    gpu_like_arrays.clear()
    net.to("cuda")                                            # already there: nothing copied
    assert gpu_like_arrays.up == [] and gpu_like_arrays.down == []
    for key, v in net.params(host=True).items():
        assert isinstance(v, np.ndarray) and np.array_equal(v, before[key]), key
    net.set_param("conv1.bias", np.arange(3.0))           # cast to float32, onto the device
    b = net.params()["conv1.bias"]
    assert is_dev(b) and b.dtype == np.float32 and np.array_equal(host(b), np.arange(3.0))
    net.zero_grads()
    assert_on_device(net, blobs=False)
    net.add("extra", L.Conv(2, 2, 1), "score")                # a late layer follows the net
    assert is_dev(net.params()["extra.weight"]) and net.layers["extra"].device == "cuda"
    net.astype(np.float64)
    assert_on_device(net, blobs=False)
    assert net.params()["conv1.weight"].dtype == np.float64
    net.save(tmp_path / "w.npz")                              # copies to the host to save
    for device in ("cpu", "numpy"):
        net.to(device)
        assert all(isinstance(v, np.ndarray) for v in net.params().values())
        assert all(isinstance(v, np.ndarray) for v in net.grads().values())
        assert np.allclose(net.params()["conv1.weight"], before["conv1.weight"], rtol=1e-7)
    other = skip_net(seed=5)
    other.add("extra", L.Conv(2, 2, 1), "score")
    other.load(tmp_path / "w.npz")
    assert np.array_equal(other.params()["conv1.bias"], [0, 1, 2])


# ----------------------------------------------------------------------------- solvers
class Batches:
    """A loader that hands out fixed batches in turn (Trainer calls next_batch)."""

    def __init__(self, batches):
        self.batches, self.i = batches, 0

    def next_batch(self):
        b = self.batches[self.i % len(self.batches)]
        self.i += 1
        return b["data"], b["label"]

    def state_dict(self):
        return {"i": self.i}

    def load_state_dict(self, state):
        self.i = state["i"]


@pytest.mark.parametrize("optimizer", ["sgd", "adam"])
def test_gradients_applied_during_backward_equal_cpu(optimizer, rng):
    """The Trainer's one-pass step (a forward that drops each blob once read, ReLU's sign
    bits, Solver.during_backward) on cuda: two steps end with cpu's parameters, and the
    applied gradients are left as zeros on the device."""
    batch = feed(rng, classes=3)
    nets = {}
    for device in ("cpu", "cuda"):
        net = small_net(seed=7).to(device)
        solver = make_solver(net, optimizer, lr=0.05, momentum=0.9, weight_decay=1e-3)
        for _ in range(2):
            net.forward(**batch, keep=False)
            assert set(net.blobs) == set(net.inputs + net.outputs)
            with solver.during_backward():
                net.backward(input_grads=False)
        nets[device] = net
    assert_on_device(nets["cuda"], blobs=False)
    for key, v in nets["cuda"].params(host=True).items():
        assert rel_error(v, nets["cpu"].params()[key]) < 1e-11, key
    assert not any(np.any(g) for g in nets["cuda"].grads(host=True).values())


@pytest.mark.parametrize("optimizer", ["sgd", "adam"])
def test_solver_steps_and_checkpoint_equal_cpu(optimizer, rng, tmp_path, gpu_like_arrays):
    """Two training iterations (the first summing two batches: iter_size 2) on cuda and on
    cpu; the parameters and solver buffers agree, stay on the device, and only the losses
    cross the bus. A checkpoint saved from the cuda run loads into a cpu net (and into a cuda
    net), and one more step from it matches on both."""
    batches = [{k: v for k, v in feed(rng, classes=3).items()} for _ in range(3)]
    settings = dict(lr=0.05, momentum=0.9, weight_decay=1e-3)

    def train(device, iters=2, start=None):
        net = small_net(seed=7).to(device)
        solver = make_solver(net, optimizer, **settings)
        loader = Batches(batches)
        trainer = Trainer(net, solver, loader, str(tmp_path / device), iter_size=2,
                          progress=False)
        if start is not None:
            load_checkpoint(start, net, solver, loader)
        gpu_like_arrays.clear()
        for _ in range(iters):
            trainer.step()
        return net, solver, trainer

    cpu, cpu_solver, _ = train("cpu")
    gpu, gpu_solver, trainer = train("cuda")
    assert gpu_like_arrays.down == [3] * 4               # 2 iterations x 2 passes: the losses
    assert len(gpu_like_arrays.up) == 2 * 4              # each pass: its data and labels
    assert_on_device(gpu)
    buffers = [v for d in gpu_solver.buffers.values() for v in d.values()]
    assert len(buffers) == (4 if optimizer == "sgd" else 8) and all(map(is_dev, buffers))
    for key, v in gpu.params(host=True).items():
        assert rel_error(v, cpu.params()[key]) < 1e-11, key
    state_cpu = cpu_solver.state_arrays()
    for key, v in gpu_solver.state_arrays().items():
        assert isinstance(v, np.ndarray) and rel_error(v, state_cpu[key]) < 1e-11, key

    trainer.checkpoint()                                 # saved from the cuda net
    path = trainer.checkpoint_path
    resumed_cpu, _, _ = train("cpu", iters=1, start=path)
    resumed_gpu, resumed_solver, _ = train("cuda", iters=1, start=path)
    assert resumed_solver.iter == 3
    assert all(is_dev(v) for d in resumed_solver.buffers.values() for v in d.values())
    for key, v in resumed_gpu.params(host=True).items():
        assert rel_error(v, resumed_cpu.params()[key]) < 1e-11, key
    assert not np.allclose(resumed_cpu.params()["conv.weight"], cpu.params()["conv.weight"])


# ----------------------------------------------------------------------------- scoring
def test_evaluate_and_predict_equal_cpu(rng, gpu_like_arrays):
    images = [(rng.integers(0, 256, (h, w, 3), dtype=np.uint8),
               rng.integers(0, 3, (h, w)).astype(np.uint8)) for h, w in ((5, 7), (6, 4))]
    images[0][1][0, :3] = 255
    x = rng.standard_normal((2, 3, 4, 5)).astype(np.float32)
    results = {}
    for device in ("cpu", "cuda"):
        net = small_net(seed=3, dtype=np.float32, in_ch=3).to(device)
        gpu_like_arrays.clear()
        results[device] = evaluate(net, images, 3)
        if device == "cuda":             # per image the loss's sums, at the end the matrix
            assert gpu_like_arrays.down == [3, 3, 9]
        bare = small_net(seed=3, dtype=np.float32, in_ch=3, loss=False).to(device)
        results[device]["no_label"] = evaluate(bare, images, 3)["confusion"].hist
        results[device]["predict"] = predict(bare, x)
        assert isinstance(results[device]["predict"], np.ndarray)
    cpu, gpu = results["cpu"], results["cuda"]
    assert gpu["confusion"].hist.sum() == 5 * 7 + 6 * 4 - 3
    assert np.array_equal(gpu["confusion"].hist, cpu["confusion"].hist)
    assert np.array_equal(gpu["no_label"], cpu["confusion"].hist)
    assert np.array_equal(gpu["no_label"], cpu["no_label"])
    for key in ("pixel_acc", "mean_acc", "mean_iu", "fw_iu"):
        assert gpu[key] == cpu[key], key
    assert gpu["loss"] == pytest.approx(cpu["loss"], rel=1e-5)
    assert gpu["predict"].shape == (2, 4, 5)
    assert np.array_equal(gpu["predict"], cpu["predict"])


# ----------------------------------------------------------------------------- the command
def test_cli_trains_on_cuda(tmp_path, capsys):
    """`minifcn train --device cuda` end to end on FCN-8s "micro": one iteration on an 8x8
    crop, a checkpoint that loads into a cpu net."""
    out = tmp_path / "run"
    rc = main(["train", "--device", "cuda", "--model", "fcn8s_micro", "--data", "synthetic",
               "--synthetic-size", "2", "--iters", "1", "--crop", "8", "8", "--val-split", "",
               "--out", str(out), "--no-progress"])
    assert rc == 0, capsys.readouterr().err
    assert "training done at iteration 1" in capsys.readouterr().out
    with open(out / "log.jsonl") as f:
        log = [json.loads(line) for line in f]
    assert log[-1]["iter"] == 1 and np.isfinite(log[-1]["loss"])
    from minifcn.models import fcn8s_micro
    net = fcn8s_micro(num_classes=5)
    info = load_checkpoint(out / "checkpoint.npz", net)
    assert info["iter"] == 1
    assert all(np.all(np.isfinite(v)) for v in net.params().values())
