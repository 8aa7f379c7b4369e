"""Section 3.2, "Shift-and-stitch is filter rarefaction": a net with a stride-f layer gives
one output per f pixels; two ways to get dense output from the same weights.

    python examples/shift_and_stitch.py                 # stride 2, a 31 x 31 input
    python examples/shift_and_stitch.py --stride 3 --size 40 --pool

  shift-and-stitch  run the net on f x f shifted copies of the input, interlace the outputs
  rarefaction       stride 1 in the strided layer, every later filter dilated by f
                    (the paper's f'_ij = f_{i/s, j/s}: taps f apart, zeros between)
Both give the same f-times denser map; the plain net's output is one of its f x f phases.
The strided layer is a convolution (or, with --pool, a max pooling); the layers after it are
convolutions, as this engine has no dilated pooling.
"""
import argparse
import time

import numpy as np

import minifcn
from minifcn import layers as L
from minifcn.net import Net
from minifcn.stitch import rarefy, shift_and_stitch, stitch_size


def build(f, pool, seed):
    """conv 3x3 -> ReLU -> strided conv (or max pool) -> two 3x3 convs (pad 1) -> score."""
    rng = np.random.default_rng(seed)
    net = Net(["data"], name="strided")
    net.add("conv1", L.Conv(3, 8, 3, dtype=np.float64, seed=seed), "data")
    net.add("relu1", L.ReLU(), "conv1", "conv1")
    if pool:
        net.add("down", L.MaxPool(f + 1, f), "conv1")
    else:
        net.add("down", L.Conv(8, 8, f + 1, stride=f, dtype=np.float64, seed=seed + 1), "conv1")
    net.add("conv2", L.Conv(8, 8, 3, pad=1, dtype=np.float64, seed=seed + 2), "down")
    net.add("relu2", L.ReLU(), "conv2", "conv2")
    net.add("conv3", L.Conv(8, 8, 3, pad=1, dtype=np.float64, seed=seed + 3), "conv2")
    net.add("relu3", L.ReLU(), "conv3", "conv3")
    net.add("score", L.Conv(8, 2, 1, dtype=np.float64, seed=seed + 4), "conv3")
    for layer in net.layers.values():
        if "bias" in layer.params:
            layer.params["bias"][:] = rng.uniform(0.05, 0.2, layer.params["bias"].shape)
    return net


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--stride", type=int, default=2, help="the strided layer's stride f")
    p.add_argument("--size", type=int, default=31, help="input size (nearest exact one used)")
    p.add_argument("--pool", action="store_true", help="stride in a max pooling, not a conv")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="numpy", choices=minifcn.DEVICES)
    a = p.parse_args(argv)
    minifcn.set_device(a.device)
    f = a.stride

    net = build(f, a.pool, a.seed)
    H, W = stitch_size(net, "down", a.size)
    x = np.random.default_rng(a.seed).standard_normal((1, 3, H, W))
    plain = net.forward(data=x[:, :, :H - f + 1, :W - f + 1])

    t0 = time.perf_counter()
    stitched = shift_and_stitch(net, x, f)
    t_stitch = time.perf_counter() - t0
    dense = rarefy(net, "down")
    t0 = time.perf_counter()
    rarefied = dense.forward(data=x)
    t_rare = time.perf_counter() - t0

    print(f"input {H}x{W} (exact size nearest {a.size}), strided layer "
          f"{'max pool' if a.pool else 'conv'} k{f + 1} s{f}")
    print(f"  plain net         : {plain.shape[2]}x{plain.shape[3]} outputs, one per {f} px")
    print(f"  shift-and-stitch  : {stitched.shape[2]}x{stitched.shape[3]}, {f * f} runs on "
          f"shifted inputs, {t_stitch * 1e3:.1f} ms")
    dil = ", ".join(f"{n} dilation {dense.layers[n].dilation[0]} pad {dense.layers[n].pad[0]}"
                    for n in ("conv2", "conv3"))
    print(f"  rarefied net      : {rarefied.shape[2]}x{rarefied.shape[3]}, one run "
          f"({dil}), {t_rare * 1e3:.1f} ms")
    err = float(np.abs(stitched - rarefied).max())
    phase = float(np.abs(stitched[:, :, ::f, ::f] - plain).max())
    print(f"  stitched vs rarefied: max |difference| {err:.1e}; plain net = phase (0, 0) of "
          f"the stitched map: {phase:.1e}")
    return {"err": err, "phase_err": phase, "shape": stitched.shape}


if __name__ == "__main__":
    main()
