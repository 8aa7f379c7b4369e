"""The net sections: whole FCNs, as a user runs them.

  fcn      FCN-8s forward (eval mode) and a training step (forward, backward, SGD update) at
           each size, and per-layer milliseconds of both at layer_size (like `caffe time`)
  tiny     the demo's training step: fcn8s_tiny
  patches  the paper's section 3.1: a classifier on each patch of an image vs its
           convolutionalized FCN on the whole image

Each section is a pair: `<section>_ours(device, cfg)` runs our Net on one of our devices,
`<section>_torch(torch, cfg)` the same net (built from ours, with our weights) in PyTorch ops
(torch_side.TorchNet). Both return (rows, the per-layer table or None)."""
from __future__ import annotations

import statistics

import numpy as np

from .ops import labels
from .rows import row
from .timing import Ours, timeit
from .torch_side import TorchNet


def build_fcn(cfg_fcn, loss=True, seed=0):
    from .. import models
    return models.fcn8s(cfg_fcn["classes"], loss=loss, backbone=cfg_fcn["backbone"], seed=seed)


def blob_shapes(net):
    """{blob: shape} of the arrays the last forward left in the net."""
    return {k: tuple(v.shape) for k, v in net.blobs.items() if hasattr(v, "shape")}


def net_flops(net, shapes):
    """Forward FLOPs of `net` given blob shapes {blob: shape}: what each layer says it costs
    (its flops(); the convolutions and deconvolutions count, the rest is 0)."""
    return sum(layer.flops(shapes.get(net.bottoms[name][0]), shapes.get(net.tops[name][0]))
               for name, layer in net.layers.items())


def train_step(net, solver, x, lab):
    """One training step, as the Trainer takes it: forward, then backward with each gradient
    applied as it is made (Solver.during_backward), each blob dropped once read."""
    net.train()
    net.forward(data=x, label=lab, keep=False)
    with solver.during_backward():
        net.backward(input_grads=False)


def torch_step(tn, opt, x, lab):
    """train_step's PyTorch twin on a TorchNet."""
    opt.zero_grad()
    tn.forward({"data": x, "label": lab}, train=True).backward()
    opt.step()


def torch_sgd(torch, tn, lr, momentum):
    """PyTorch's SGD on a TorchNet's trainable parameters (frozen ones have no gradient)."""
    return torch.optim.SGD([p for p in tn.params.values() if p.requires_grad], lr=lr,
                           momentum=momentum)


def time_steps(net, solver, x, lab, repeat, warmup, sync):
    """(timeit of training steps, `caffe time`: {"ms": {layer: [fwd, bwd] medians over the
    timed steps}, "shapes": {layer: its top's shape}})."""
    samples = []

    def step():
        train_step(net, solver, x, lab)
        samples.append({k: list(v) for k, v in net.timings.items()})
    t = timeit(step, repeat, warmup, sync)
    timed = samples[warmup:]
    ms = {n: [statistics.median(s[n][0] for s in timed) * 1e3,
              statistics.median(s[n][1] for s in timed) * 1e3] for n in timed[0]}
    net.forward(data=x, label=lab)           # backward dropped the blobs: their shapes again
    blobs = blob_shapes(net)
    shapes = {n: list(blobs[net.tops[n][0]]) for n in net.layers if net.tops[n][0] in blobs}
    return t, {"ms": ms, "shapes": shapes}


# ----------------------------------------------------------------------------- fcn
FCN_NOTE = "fwd: eval forward; fwdbwd: training step incl. SGD"


def fcn_ours(device, cfg):
    """FCN-8s forward (eval mode) and a training step at each size (the numpy reference at
    the first only); per-layer milliseconds at layer_size."""
    from ..train import SGD
    c = cfg["fcn"]
    sizes = c["sizes"][:1] if device == "numpy" else c["sizes"]
    net = build_fcn(c).to(device)
    solver = SGD(net, lr=1e-10, momentum=0.99)
    rng = np.random.default_rng(0)
    o = Ours(device)
    rows, layers = [], None
    for size in sizes:
        x = o.arr(rng.standard_normal((1, 3, size, size)).astype(np.float32))
        lab = o.arr(labels(rng, 1, size, c["classes"]))
        net.eval()
        net.forward(data=x, label=lab)
        fl = net_flops(net, blob_shapes(net))

        def forward():
            net.eval()
            return net.forward(data=x, until="score")
        fwd = timeit(forward, cfg["net_repeat"], 1, o.sync)
        tr, per_layer = time_steps(net, solver, x, lab, cfg["net_repeat"], 1, o.sync)
        rows.append(row("fcn", f"FCN-8s {size}x{size}", device, f"1x3x{size}x{size}", fwd, tr,
                        fl, 3.0, note=FCN_NOTE))
        if size == c["layer_size"]:
            layers = dict(per_layer, size=size, impl=device)
    return rows, layers


def fcn_torch(torch, cfg):
    """The same FCN-8s in PyTorch: eval forward (per-layer forward ms at layer_size) and a
    training step with PyTorch's SGD."""
    c = cfg["fcn"]
    tn = TorchNet(torch, build_fcn(c))
    opt = torch_sgd(torch, tn, lr=1e-10, momentum=0.99)
    rng = np.random.default_rng(0)
    rows, layers = [], None
    for size in c["sizes"]:
        x = torch.from_numpy(rng.standard_normal((1, 3, size, size)).astype(np.float32))
        lab = torch.from_numpy(labels(rng, 1, size, c["classes"]).astype(np.int64))
        samples = []

        def fwd():
            with torch.no_grad():
                tn.forward({"data": x}, train=False, until="score", time_layers=True)
            samples.append(dict(tn.timings))
        f = timeit(fwd, cfg["net_repeat"], 1)
        s = timeit(lambda: torch_step(tn, opt, x, lab), cfg["net_repeat"], 1)
        rows.append(row("fcn", f"FCN-8s {size}x{size}", "torch", f"1x3x{size}x{size}", f, s,
                        note=FCN_NOTE))
        if size == c["layer_size"]:
            layers = {"size": size, "impl": "torch",
                      "ms": {k: [statistics.median(sm[k] for sm in samples) * 1e3, None]
                             for k in samples[0]}}
    return rows, layers


# ----------------------------------------------------------------------------- tiny (demo)
def _tiny_data(rng, t):
    x = rng.standard_normal((t["batch"], 3, t["size"], t["size"])).astype(np.float32)
    return x, labels(rng, t["batch"], t["size"], t["classes"])


def tiny_ours(device, cfg):
    """The demo's training step (fcn8s_tiny, SGD), with its per-layer milliseconds."""
    from .. import models
    from ..train import SGD
    t = cfg["tiny"]
    net = models.fcn8s_tiny(t["classes"], seed=0).to(device)
    solver = SGD(net, lr=1e-3, momentum=0.9)
    o = Ours(device)
    x, lab = (o.arr(a) for a in _tiny_data(np.random.default_rng(0), t))
    tr, per_layer = time_steps(net, solver, x, lab, cfg["repeat"] * 2, 2, o.sync)
    return [row("tiny", "fcn8s_tiny step", device, f"{t['batch']}x3x{t['size']}x{t['size']}",
                tr, tr, note="training step: forward, backward, SGD update")], \
        dict(per_layer, impl=device)


def tiny_torch(torch, cfg):
    from .. import models
    t = cfg["tiny"]
    tn = TorchNet(torch, models.fcn8s_tiny(t["classes"], seed=0))
    opt = torch_sgd(torch, tn, lr=1e-3, momentum=0.9)
    x, lab = _tiny_data(np.random.default_rng(0), t)
    x, lab = torch.from_numpy(x), torch.from_numpy(lab.astype(np.int64))
    tr = timeit(lambda: torch_step(tn, opt, x, lab), cfg["repeat"] * 2, 2)
    return [row("tiny", "fcn8s_tiny step", "torch", f"{t['batch']}x3x{t['size']}x{t['size']}",
                tr, tr, note="the same net in PyTorch ops")], None


# ----------------------------------------------------------------------------- patches (3.1)
def patch_nets(p):
    """(classifier, the convolutionalized FCN sharing its weights)."""
    from .. import models
    if p["kind"] == "alexnet":
        clf = models.alexnet(num_classes=1000)
    else:
        clf = models.vgg_classifier("micro", num_classes=10, input_size=p["patch"])
    return clf, models.convolutionalize(clf, copy_params=False)


def patch_stack(fcn, img, patch, fcn_out):
    """(N, 3, patch, patch): the patch the classifier runs on for each unit of the FCN's
    fcn_out output grid, their corners the FCN's output stride apart (derived from its
    coordinate maps: 32 for AlexNet), the image zero-padded on the bottom/right where the last
    patches hang over its edge."""
    from ..coordmap import receptive_field
    (_, sh, _), (_, sw, _) = receptive_field(fcn, fcn.outputs[0])
    grid = [(i * int(sh), j * int(sw)) for i in range(fcn_out[0]) for j in range(fcn_out[1])]
    H, W = img.shape[2:]
    padded = np.zeros((1, 3, max(H, grid[-1][0] + patch), max(W, grid[-1][1] + patch)),
                      img.dtype)
    padded[:, :, :H, :W] = img
    return np.concatenate([padded[:, :, i:i + patch, j:j + patch] for i, j in grid])


def _patch_rows(impl, p, n, out_hw, res):
    """The patches / whole-image rows and the speed-up row, from res {"patches": (fwd, both),
    "whole": (fwd, both)}."""
    return [row("patches", f"{n} patches of {p['patch']}x{p['patch']}", impl,
                f"{n}x3x{p['patch']}x{p['patch']}", *res["patches"]),
            row("patches", f"whole image {p['image']}x{p['image']}", impl,
                f"1x3x{p['image']}x{p['image']} -> {out_hw[0]}x{out_hw[1]}", *res["whole"]),
            {"section": "patches", "op": "speed-up (patches / whole)", "impl": impl,
             "shape": f"{out_hw[0]}x{out_hw[1]} grid",
             "fwd_x": res["patches"][0]["median"] / res["whole"][0]["median"],
             "fwdbwd_x": res["patches"][1]["median"] / res["whole"][1]["median"]}]


def patches_ours(device, cfg):
    """The classifier on every patch (in batches) vs the FCN on the whole image, forward and
    forward+backward; and the ratio of their forward arithmetic, what the FLOPs allow."""
    p = cfg["patches"]
    clf, fcn = patch_nets(p)
    clf.to(device).eval()
    fcn.to(device).eval()
    rng = np.random.default_rng(0)
    o = Ours(device)
    img = rng.standard_normal((1, 3, p["image"], p["image"])).astype(np.float32)
    out = fcn.forward(data=o.arr(img))
    patches = patch_stack(fcn, img, p["patch"], out.shape[2:])
    batches = [o.arr(patches[k:k + p["batch"]]) for k in range(0, len(patches), p["batch"])]
    whole = o.arr(img)
    d_out = o.arr(np.ones(out.shape, np.float32))
    d_clf = [o.arr(np.ones((len(b_),) + tuple(out.shape[1:2]) + (1, 1), np.float32))
             for b_ in batches]

    def run_patches(backward):
        for b_, d in zip(batches, d_clf):
            clf.forward(data=b_)
            if backward:
                clf.backward(grads={"fc8": d}, input_grads=False)

    def run_whole(backward):
        fcn.forward(data=whole)
        if backward:
            fcn.backward(grads={"fc8": d_out}, input_grads=False)
    rep = cfg["net_repeat"]
    res = {name: (timeit(lambda: fn(False), rep, 1, o.sync),
                  timeit(lambda: fn(True), rep, 1, o.sync))
           for name, fn in (("patches", run_patches), ("whole", run_whole))}
    rows = _patch_rows(device, p, len(patches), out.shape[2:], res)
    # what the arithmetic allows: forward multiply-adds of the two (the fully connected layers
    # do the same work either way: 100 patches or a 10x10 grid)
    clf.forward(data=batches[0])
    f_p = net_flops(clf, blob_shapes(clf)) * len(patches) / len(batches[0])
    fcn.forward(data=whole)
    f_w = net_flops(fcn, blob_shapes(fcn))
    rows.append({"section": "patches", "op": "FLOP ratio (patches / whole)", "impl": device,
                 "shape": f"{f_p / 1e9:.0f} / {f_w / 1e9:.1f} GFLOP", "fwd_x": f_p / f_w,
                 "fwdbwd_x": f_p / f_w})
    return rows, None


def patches_torch(torch, cfg):
    p = cfg["patches"]
    clf, fcn = patch_nets(p)
    tc, tf = TorchNet(torch, clf), TorchNet(torch, fcn)
    img = np.random.default_rng(0).standard_normal((1, 3, p["image"], p["image"])).astype(
        np.float32)
    with torch.no_grad():
        out = tf.forward({"data": torch.from_numpy(img)}, train=False)
    patches = torch.from_numpy(patch_stack(fcn, img, p["patch"], out.shape[2:]))
    whole = torch.from_numpy(img)

    def run(net, data, backward, batch):
        for k in range(0, data.shape[0], batch):
            if backward:
                y = net.forward({"data": data[k:k + batch]}, train=False)
                y.backward(torch.ones_like(y))
            else:
                with torch.no_grad():
                    net.forward({"data": data[k:k + batch]}, train=False)
    rep = cfg["net_repeat"]
    res = {name: (timeit(lambda: run(net, data, False, batch), rep, 1),
                  timeit(lambda: run(net, data, True, batch), rep, 1))
           for name, net, data, batch in (("patches", tc, patches, p["batch"]),
                                          ("whole", tf, whole, 1))}
    return _patch_rows("torch", p, len(patches), out.shape[2:], res), None
