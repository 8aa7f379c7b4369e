"""Each convolution of the tiny training step (fcn8s_tiny, batch 8, 64x64) on its own, ours
through minifcn.functional against torch.nn.functional (when installed) in a second process
(PyTorch's OpenMP runtime would slow Numba's threads in ours): forward, then backward alone
(ours conv2d_backward; PyTorch's forward+backward less its forward), milliseconds, median of 30.
    python benchmarks/tiny_convs.py
Figures: benchmarks/RESULTS.md, "Issue 13, the activations" (the tiny step)."""
import json
import subprocess
import sys
import time

import numpy as np


def median_ms(fn, n=30):
    for _ in range(3):
        fn()
    ts = []
    for _ in range(n):
        t = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t)
    return float(np.median(ts) * 1e3)


def ours():
    """[{name, x, w, stride, pad, fwd, bwd}] for every Conv of the tiny step."""
    from minifcn import functional as F
    from minifcn import layers as L
    from minifcn import models
    from minifcn.bench.nets import _tiny_data
    net = models.fcn8s_tiny(5, seed=0).to("cpu")
    x, lab = _tiny_data(np.random.default_rng(0), dict(batch=8, size=64, classes=5))
    net.train()
    net.forward(data=x, label=lab)
    rows = []
    for name, layer in net.layers.items():
        if type(layer) is not L.Conv:
            continue
        xb, w, b, geo = layer.x, layer.params["weight"], layer.params.get("bias"), layer._geometry()
        y = F.conv2d(xb, w, b, **geo)
        d = np.random.default_rng(1).standard_normal(y.shape).astype(np.float32)
        need_dx = net.bottoms[name][0] != "data"          # as the step: no image gradient
        rows.append(dict(name=name, x=list(xb.shape), w=list(w.shape), stride=geo["stride"],
                         pad=geo["pad"], need_dx=need_dx,
                         fwd=median_ms(lambda: F.conv2d(xb, w, b, **geo)),
                         bwd=median_ms(lambda: F.conv2d_backward(d, xb, w, **geo,
                                                                 need_dx=need_dx))))
    return rows


def torch_side(rows):
    import torch
    torch.set_num_threads(2)
    for r in rows:
        x = torch.randn(*r["x"], requires_grad=r["need_dx"])
        w = torch.randn(*r["w"], requires_grad=True)
        b = torch.zeros(r["w"][0], requires_grad=True)
        d = torch.randn_like(torch.nn.functional.conv2d(x, w, b, r["stride"], r["pad"]))

        def fwd():
            return torch.nn.functional.conv2d(x, w, b, r["stride"], r["pad"])

        def step():
            fwd().backward(d)
        r["torch_fwd"] = median_ms(lambda: fwd().detach())
        r["torch_bwd"] = median_ms(step) - r["torch_fwd"]
    return rows


if __name__ == "__main__":
    if sys.argv[1:] == ["torch"]:
        print(json.dumps(torch_side(json.loads(sys.stdin.read()))))
        sys.exit()
    rows = ours()
    from minifcn.bench.workers import user_env     # without our OMP settings
    run = subprocess.run([sys.executable, __file__, "torch"], input=json.dumps(rows),
                         capture_output=True, text=True, env=user_env())
    if run.returncode == 0:
        rows = json.loads(run.stdout)
    else:
        print("PyTorch not measured:", run.stderr.strip().splitlines()[-1])
    keys = [k for k in ("fwd", "bwd", "torch_fwd", "torch_bwd") if k in rows[0]]
    total = dict(name="total", x=[], w=[], **{k: sum(r[k] for r in rows) for k in keys})
    print("| conv | x | w | " + " | ".join(k.replace("_", " ") + " ms" for k in keys) + " |")
    print("|---" * (3 + len(keys)) + "|")
    for r in rows + [total]:
        shapes = ["x".join(map(str, r[k])) for k in ("x", "w")]
        print(f"| {r['name']} | " + " | ".join(shapes + [f"{r[k]:.2f}" for k in keys]) + " |")
