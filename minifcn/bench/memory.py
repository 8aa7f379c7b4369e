"""The memory section: peak memory of an FCN-8s training step, ours and PyTorch's, each
measured in a fresh process (workers.run_worker), after a first step has made the solver's
buffers. Linux: the peak is VmHWM, reset before the step where the kernel allows it."""
from __future__ import annotations

import numpy as np

from .. import functional as F
from .nets import build_fcn, torch_sgd, torch_step, train_step
from .ops import labels
from .torch_side import TorchNet, import_torch

MB = 1 << 20


def _vm(field):
    """A /proc/self/status figure in bytes (VmRSS, VmHWM), None where there is none."""
    try:
        with open("/proc/self/status") as f:
            for ln in f:
                if ln.startswith(field + ":"):
                    return int(ln.split()[1]) * 1024
    except OSError:
        pass
    return None


def _reset_peak():
    """Reset VmHWM (Linux >= 4.0); False where it cannot be."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def _step_data(c):
    rng = np.random.default_rng(0)
    x = rng.standard_normal((1, 3, c["size"], c["size"])).astype(np.float32)
    return x, labels(rng, 1, c["size"], c["classes"])


def worker_ours(cfg):
    """In a fresh process: RSS after imports, peak RSS of one training step (after a first
    step has made the solver's buffers), and tracemalloc's peak of numpy allocations."""
    import tracemalloc
    from ..train import SGD
    c = cfg["memory"]
    F.relu(np.ones(4, np.float32), device="cpu")          # libraries and threads up
    base = _vm("VmRSS")
    net = build_fcn(dict(c, sizes=[c["size"]])).to("cpu")
    solver = SGD(net, lr=1e-10, momentum=0.99)
    x, lab = _step_data(c)
    train_step(net, solver, x, lab)
    before = _vm("VmRSS")
    reset = _reset_peak()
    tracemalloc.start()
    train_step(net, solver, x, lab)
    _, traced_peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    return {"rss_after_imports": base, "rss_before_step": before, "peak_rss": _vm("VmHWM"),
            "peak_reset": reset, "numpy_traced_peak": traced_peak}


def worker_torch(cfg):
    """The same in PyTorch (the net built from ours, ours then freed)."""
    torch = import_torch()
    c = cfg["memory"]
    torch.ones(4).relu()
    base = _vm("VmRSS")
    net = build_fcn(dict(c, sizes=[c["size"]]))
    tn = TorchNet(torch, net)
    opt = torch_sgd(torch, tn, lr=1e-10, momentum=0.99)
    x, lab = _step_data(c)
    x, lab = torch.from_numpy(x), torch.from_numpy(lab.astype(np.int64))
    del net
    torch_step(tn, opt, x, lab)
    before = _vm("VmRSS")
    reset = _reset_peak()
    torch_step(tn, opt, x, lab)
    return {"rss_after_imports": base, "rss_before_step": before, "peak_rss": _vm("VmHWM"),
            "peak_reset": reset}


def memory_rows(cfg, with_torch):
    """The section's rows: one fresh process for ours ("cpu"), one for PyTorch's."""
    from .workers import run_worker
    m = cfg["memory"]
    rows = []
    for impl in ["cpu"] + (["torch"] if with_torch else []):
        res = run_worker("memory-" + impl, cfg)
        if "error" in res:
            rows.append({"section": "memory", "op": "training step", "impl": impl,
                         "note": res["error"]})
            continue
        r = {"section": "memory", "op": f"FCN-8s step {m['size']}x{m['size']}", "impl": impl,
             "shape": m["backbone"], "peak_rss_mb": res["peak_rss"] / MB,
             "peak_over_imports_mb": (res["peak_rss"] - res["rss_after_imports"]) / MB,
             "rss_after_imports_mb": res["rss_after_imports"] / MB,
             "rss_before_step_mb": res["rss_before_step"] / MB}
        if res.get("numpy_traced_peak"):
            r["numpy_traced_peak_mb"] = res["numpy_traced_peak"] / MB
        if not res.get("peak_reset"):
            r["note"] = "peak over the whole process (VmHWM could not be reset)"
        rows.append(r)
    return rows
