"""`make demo` (engine version): build a small FCN-like net with a skip and a crop, run
forward and backward on random data, print per-layer timings and a float64 gradient check."""
import numpy as np

from . import layers as L
from .gradcheck import check_net
from .net import Net


def small_fcn(num_classes=4, seed=0):
    net = Net(inputs=["data", "label"], name="small_fcn")
    net.add("conv1", L.Conv(3, 16, 3, pad=5, seed=seed), "data")
    net.add("relu1", L.ReLU(), "conv1", "conv1")
    net.add("pool1", L.MaxPool(2), "conv1")
    net.add("conv2", L.Conv(16, 32, 3, pad=1, seed=seed + 1), "pool1")
    net.add("relu2", L.ReLU(), "conv2", "conv2")
    net.add("pool2", L.MaxPool(2), "conv2")
    net.add("fc", L.Conv(32, 32, 3, seed=seed + 2), "pool2")
    net.add("relu3", L.ReLU(), "fc", "fc")
    net.add("score", L.Conv(32, num_classes, 1, seed=seed + 3), "fc")
    net.add("upscore2", L.Deconv(num_classes, num_classes, 4, 2), "score")
    net.add("score_pool1", L.Conv(16, num_classes, 1, seed=seed + 4), "pool1")
    net.add("score_pool1c", L.Crop(), ["score_pool1", "upscore2"])
    net.add("fuse", L.Sum(), ["upscore2", "score_pool1c"])
    net.add("upscore", L.Deconv(num_classes, num_classes, 4, 2).freeze(), "fuse")
    net.add("score_final", L.Crop(), ["upscore", "data"])
    net.add("loss", L.SoftmaxLoss(), ["score_final", "label"])
    return net


def main():
    rng = np.random.default_rng(0)
    net = small_fcn()
    print(net.summary())
    print("\nderived crop offsets:", {n: layer.offset for n, layer in net.layers.items()
                                      if isinstance(layer, L.Crop)})
    x = rng.standard_normal((4, 3, 64, 80)).astype(np.float32)
    y = rng.integers(0, 4, (4, 64, 80))
    for _ in range(2):                       # the first pass compiles the Numba kernels
        loss = net.forward(data=x, label=y)
        net.backward(input_grads=False)
    print(f"\nloss {loss:.4f}; per-layer ms on the cpu device (batch 4, 64x80):")
    for name, (f, b) in net.timings.items():
        print(f"  {name:14s} forward {f * 1e3:7.2f}   backward {b * 1e3:7.2f}")
    net64 = small_fcn().astype(np.float64).eval()
    for key, v in net64.params().items():     # biases off zero: keeps ReLUs off their kink
        if key.endswith("bias"):
            net64.set_param(key, rng.uniform(0.1, 0.3, v.shape))
    errors = check_net(net64, {"data": x[:1, :, :20, :24].astype(np.float64),
                               "label": y[:1, :20, :24]}, n_probe=5)
    print(f"\nfloat64 gradient check, max relative error {max(errors.values()):.2e} "
          f"over {len(errors)} arrays: {'OK' if max(errors.values()) < 1e-6 else 'FAILED'}")


if __name__ == "__main__":
    main()
