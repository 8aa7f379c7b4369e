"""The op sections: VGG16's convolutions and max-pools, FCN's upsampling deconvolutions and
the pixelwise softmax loss, each timed forward and forward+backward.

Each section is a pair: `<section>_ours(device, cfg)` times our minifcn.functional op on one of
our devices, `<section>_torch(torch, cfg)` the same shapes with PyTorch's op (in PyTorch's own
process). Both return (rows, None): the op sections have no per-layer table."""
from __future__ import annotations

import numpy as np

from .. import functional as F
from ..kernels.geometry import deconv_out
from ..layers import bilinear_weight
from .rows import row, total
from .timing import Ours, conv_flops, timeit

# VGG16's 13 convolutions as (name, C_in, C_out, downsampling) and its 5 pools.
VGG16_CONVS = [("conv1_1", 3, 64, 1), ("conv1_2", 64, 64, 1), ("conv2_1", 64, 128, 2),
               ("conv2_2", 128, 128, 2), ("conv3_1", 128, 256, 4), ("conv3_2", 256, 256, 4),
               ("conv3_3", 256, 256, 4), ("conv4_1", 256, 512, 8), ("conv4_2", 512, 512, 8),
               ("conv4_3", 512, 512, 8), ("conv5_1", 512, 512, 16), ("conv5_2", 512, 512, 16),
               ("conv5_3", 512, 512, 16)]
VGG16_POOLS = [("pool1", 64, 1), ("pool2", 128, 2), ("pool3", 256, 4), ("pool4", 512, 8),
               ("pool5", 512, 16)]


def vgg_convs_spec(size, width_div):
    """(name, C_in, C_out, H) of VGG16's convs at `size`, channels divided by width_div."""
    return [(name, cin if cin == 3 else max(1, cin // width_div), max(1, cout // width_div),
             -(-size // down)) for name, cin, cout, down in VGG16_CONVS]


def labels(rng, n, h, classes):
    """(n, h, h) int32 labels, the top tenth of the rows void (255), as in the reference."""
    lab = rng.integers(0, classes, (n, h, h)).astype(np.int32)
    lab[:, :max(1, h // 10)] = 255
    return lab


def _torch_tensor(torch, a, grad=False):
    return torch.from_numpy(np.ascontiguousarray(a)).requires_grad_(grad)


# ----------------------------------------------------------------------------- convs
def convs_ours(device, cfg):
    """VGG16's 13 convolutions: forward and forward+backward (dx and dw; conv1_1 has no dx,
    as in a real net: its input is the image). The numpy reference runs once, at the smaller
    numpy_size; cfg["conv_names"] (the CUDA simulator's set) picks some convs."""
    numpy = device == "numpy"
    size = cfg["numpy_size"] if numpy else cfg["size"]
    names = None if numpy else cfg.get("conv_names")
    rng = np.random.default_rng(0)
    o = Ours(device)
    rows = []
    for name, cin, cout, h in vgg_convs_spec(size, cfg["width_div"]):
        if names and name not in names:
            continue
        x = o.arr(rng.standard_normal((1, cin, h, h)).astype(np.float32))
        w = o.arr((rng.standard_normal((cout, cin, 3, 3)) * 0.05).astype(np.float32))
        b = o.arr(np.zeros(cout, np.float32))
        dy = o.arr(np.ones((1, cout, h, h), np.float32))
        need_dx = name != "conv1_1"
        warm = 0 if numpy else cfg["warmup"]
        rep = 1 if numpy else cfg["repeat"]
        fwd = timeit(lambda: F.conv2d(x, w, b, pad=1, device=device), rep, warm, o.sync)
        both = timeit(lambda: (F.conv2d(x, w, b, pad=1, device=device), F.conv2d_backward(
            dy, x, w, pad=1, need_dx=need_dx, device=device)), rep, warm, o.sync)
        fl = conv_flops(1, cin, cout, h, h, 3, 3)
        rows.append(row("convs", name, device, f"1x{cin}x{h}x{h} -> {cout}", fwd, both, fl,
                        3.0 if need_dx else 2.0,
                        note=f"numpy reference at {size}x{size}" if numpy else ""))
    return rows, None


def convs_torch(torch, cfg):
    fn = torch.nn.functional
    rng = np.random.default_rng(0)
    rows = []
    for name, cin, cout, h in vgg_convs_spec(cfg["size"], cfg["width_div"]):
        need_dx = name != "conv1_1"
        x = _torch_tensor(torch, rng.standard_normal((1, cin, h, h)).astype(np.float32),
                          need_dx)
        w = _torch_tensor(torch, (rng.standard_normal((cout, cin, 3, 3)) * 0.05).astype(
            np.float32), True)
        b = _torch_tensor(torch, np.zeros(cout, np.float32), True)
        dy = torch.ones(1, cout, h, h)

        def fwd():
            with torch.no_grad():
                return fn.conv2d(x, w, b, padding=1)

        def both():
            fn.conv2d(x, w, b, padding=1).backward(dy)
        fl = conv_flops(1, cin, cout, h, h, 3, 3)
        rows.append(row("convs", name, "torch", f"1x{cin}x{h}x{h} -> {cout}",
                        timeit(fwd, cfg["repeat"], cfg["warmup"]),
                        timeit(both, cfg["repeat"], cfg["warmup"]), fl,
                        3.0 if need_dx else 2.0))
    return rows, None


def convs_totals(rows):
    """All 13 convs (or as many as were timed) added up."""
    return rows + [total(rows, "13 convs" if len(rows) == 13 else f"{len(rows)} convs")] \
        if rows else rows


# ----------------------------------------------------------------------------- pools
def _pools_spec(size, width_div):
    """(name, C, H) of VGG16's max-pools at `size`."""
    return [(name, max(1, c // width_div), -(-size // down)) for name, c, down in VGG16_POOLS]


def pools_ours(device, cfg):
    """VGG16's five 2x2 stride-2 max-pools (the numpy reference at numpy_size)."""
    size = cfg["numpy_size"] if device == "numpy" else cfg["size"]
    rng = np.random.default_rng(0)
    o = Ours(device)
    rows = []
    for name, c, h in _pools_spec(size, cfg["width_div"]):
        x = o.arr(rng.standard_normal((1, c, h, h)).astype(np.float32))
        y, _ = F.max_pool2d(x, 2, 2, device=device)
        dy = o.arr(np.ones(y.shape, np.float32))

        def both():
            _, arg = F.max_pool2d(x, 2, 2, device=device)
            return F.max_pool2d_backward(dy, arg, x.shape, device=device)
        fwd = timeit(lambda: F.max_pool2d(x, 2, 2, device=device), cfg["repeat"] * 2,
                     cfg["warmup"], o.sync)
        rows.append(row("pools", name, device, f"1x{c}x{h}x{h}", fwd,
                        timeit(both, cfg["repeat"] * 2, cfg["warmup"], o.sync)))
    return rows, None


def pools_torch(torch, cfg):
    fn = torch.nn.functional
    rng = np.random.default_rng(0)
    rows = []
    for name, c, h in _pools_spec(cfg["size"], cfg["width_div"]):
        x = _torch_tensor(torch, rng.standard_normal((1, c, h, h)).astype(np.float32), True)
        dy = torch.ones(1, c, -(-h // 2), -(-h // 2))

        def fwd():
            with torch.no_grad():
                return fn.max_pool2d(x, 2, 2, ceil_mode=True)

        def both():
            fn.max_pool2d(x, 2, 2, ceil_mode=True).backward(dy)
        rows.append(row("pools", name, "torch", f"1x{c}x{h}x{h}",
                        timeit(fwd, cfg["repeat"] * 2, cfg["warmup"]),
                        timeit(both, cfg["repeat"] * 2, cfg["warmup"])))
    return rows, None


def pools_totals(rows):
    return rows + [total(rows, "5 pools")] if rows else rows


# ----------------------------------------------------------------------------- deconvs
def _bilinear(c, k):
    return bilinear_weight(c, c, k).astype(np.float32)


def _deconv_shape(c, k, s, h, frozen):
    return f"1x{c}x{h}x{h} k{k} s{s}{' frozen' if frozen else ''}"


def deconvs_ours(device, cfg):
    """FCN's upsampling: a bilinear weight (diagonal across channels). Frozen ones (the final
    upsampling) need dx only; learnable ones (FCN-8s's 2x) dx and dw. GFLOP/s counts the dense
    product, as PyTorch computes it."""
    rng = np.random.default_rng(0)
    o = Ours(device)
    rows = []
    for name, c, k, s, h, frozen in cfg["deconvs"]:
        x = o.arr(rng.standard_normal((1, c, h, h)).astype(np.float32))
        w = o.arr(_bilinear(c, k))
        ho = deconv_out(h, k, s, 0)
        dy = o.arr(np.ones((1, c, ho, ho), np.float32))
        fwd = timeit(lambda: F.conv_transpose2d(x, w, None, s, 0, device=device),
                     cfg["repeat"], cfg["warmup"], o.sync)
        both = timeit(lambda: (F.conv_transpose2d(x, w, None, s, 0, device=device),
                               F.conv_transpose2d_backward(dy, x, w, s, 0, need_dw=not frozen,
                                                           device=device)),
                      cfg["repeat"], cfg["warmup"], o.sync)
        rows.append(row("deconvs", name, device, _deconv_shape(c, k, s, h, frozen), fwd, both,
                        conv_flops(1, c, c, h, h, k, k), 2.0 if frozen else 3.0))
    return rows, None


def deconvs_torch(torch, cfg):
    fn = torch.nn.functional
    rng = np.random.default_rng(0)
    rows = []
    for name, c, k, s, h, frozen in cfg["deconvs"]:
        x = _torch_tensor(torch, rng.standard_normal((1, c, h, h)).astype(np.float32), True)
        w = _torch_tensor(torch, _bilinear(c, k), not frozen)
        ho = deconv_out(h, k, s, 0)
        dy = torch.ones(1, c, ho, ho)

        def fwd():
            with torch.no_grad():
                return fn.conv_transpose2d(x, w, None, s)

        def both():
            fn.conv_transpose2d(x, w, None, s).backward(dy)
        rows.append(row("deconvs", name, "torch", _deconv_shape(c, k, s, h, frozen),
                        timeit(fwd, cfg["repeat"], cfg["warmup"]),
                        timeit(both, cfg["repeat"], cfg["warmup"]),
                        conv_flops(1, c, c, h, h, k, k), 2.0 if frozen else 3.0))
    return rows, None


def deconvs_totals(rows):
    """The three sizes of FCN-32s's k64 s32 upsampling added up (when more than one ran)."""
    k64 = [x for x in rows if "k64 s32" in x["shape"]]
    return rows + ([total(k64, "k64 s32 (3 sizes)")] if len(k64) > 1 else [])


# ----------------------------------------------------------------------------- loss
def loss_ours(device, cfg):
    """The pixelwise softmax loss (a tenth of the pixels void). Our op returns the loss and
    its gradient in one call: its forward is its forward+backward."""
    c, h = cfg["loss"]
    rng = np.random.default_rng(0)
    o = Ours(device)
    scores = o.arr(rng.standard_normal((1, c, h, h)).astype(np.float32))
    lab = rng.integers(0, c, (1, h, h)).astype(np.int32)
    lab[:, :h // 10] = 255
    lab = o.arr(lab)
    t = timeit(lambda: F.softmax_cross_entropy(scores, lab, device=device), cfg["repeat"],
               cfg["warmup"], o.sync)
    return [row("loss", "softmax loss", device, f"1x{c}x{h}x{h}", t, t,
                note="loss and gradient in one pass")], None


def loss_torch(torch, cfg):
    fn = torch.nn.functional
    c, h = cfg["loss"]
    rng = np.random.default_rng(0)
    s = _torch_tensor(torch, rng.standard_normal((1, c, h, h)).astype(np.float32), True)
    lab = torch.from_numpy(labels(rng, 1, h, c).astype(np.int64))

    def fwd():
        with torch.no_grad():
            return fn.cross_entropy(s, lab, ignore_index=255)

    def both():
        fn.cross_entropy(s, lab, ignore_index=255).backward()
    return [row("loss", "softmax loss", "torch", f"1x{c}x{h}x{h}",
                timeit(fwd, cfg["repeat"], cfg["warmup"]),
                timeit(both, cfg["repeat"], cfg["warmup"]))], None
