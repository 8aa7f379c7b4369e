"""The bench's other processes. PyTorch always runs in a process of its own, so that neither
library's thread pools nor environment (OMP_WAIT_POLICY, thread counts) touch the other's
(user_env: each gets the environment as the user gave it):

  TorchProcess   a long-lived PyTorch process timing one section per request (JSON lines on
                 its stdin / stdout), so that its rounds interleave with ours
  run_worker     a fresh process for one measurement (the memory section's, each side's own;
                 the allreduce section's, alone and as the ranks of an mpiexec)
  worker_main    what those processes run: `python -m minifcn.bench --worker SPEC`
"""
from __future__ import annotations

import json
import os
import subprocess
import sys

from . import allreduce, memory
from .sections import SECTIONS
from .torch_side import import_torch, mirror_check, torch_info

WORKER = [sys.executable, "-m", "minifcn.bench", "--worker"]


def user_env():
    """This process's environment without what minifcn's cpu kernels set for Numba's threads
    (kernels/cpu/__init__.py: SET_BY_US), for a worker: a PyTorch process's own libgomp would
    read OMP_WAIT_POLICY=PASSIVE too (its tiny step took 49-60 ms so against 32-41 ms as it
    comes: 2-core dev machine, 2026-12-04), and ours sets them again itself. A value the user
    set is kept."""
    ours = getattr(sys.modules.get("minifcn.kernels.cpu"), "SET_BY_US", {})
    return {k: v for k, v in os.environ.items() if ours.get(k) != v}


class TorchProcess:
    """PyTorch in its own long-lived process; hello is its first message: {"info": ...,
    "mirror_check": ...} or {"error": ...}."""

    def __init__(self, threads=None):
        self.p = subprocess.Popen(WORKER + [json.dumps({"kind": "torch-loop",
                                                        "threads": threads})],
                                  stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                                  env=user_env())
        self.hello = self._read()

    def _read(self):
        for line in self.p.stdout:
            if line.startswith("{"):
                return json.loads(line)
        err = f"exited with status {self.p.wait()}"
        return {"error": f"the PyTorch worker {err} (run it alone to see its traceback)"}

    def run(self, cfg, section):
        """PyTorch's figures of one section: {section: rows, "layers": {section: table}}."""
        self.p.stdin.write(json.dumps({"cfg": cfg, "sections": [section]}) + "\n")
        self.p.stdin.flush()
        return self._read()

    def close(self):
        try:
            self.p.stdin.close()
            self.p.wait(timeout=30)
        except Exception:                  # noqa: BLE001 -- it is only a helper process
            self.p.kill()


def torch_worker(cfg, sections, threads=None, check=True):
    """Everything PyTorch is timed on, in this (separate) process: each section's torch side.
    Returns {section: rows, "layers": {section: per-layer table}, "info": ...}."""
    torch = import_torch()
    if threads:
        torch.set_num_threads(threads)
    out = {"info": torch_info(), "layers": {}}
    if check:
        out["mirror_check"] = mirror_check(torch)
    for name in sections:
        out[name], layers = SECTIONS[name].torch(torch, cfg)
        if layers:
            out["layers"][name] = layers
    return out


def _torch_loop(threads):
    torch = import_torch()
    if threads:
        torch.set_num_threads(threads)
    print(json.dumps({"info": torch_info(), "mirror_check": mirror_check(torch)}), flush=True)
    for line in sys.stdin:
        req = json.loads(line)
        try:
            out = torch_worker(req["cfg"], req["sections"], threads, check=False)
        except Exception as e:             # noqa: BLE001 -- reported in the bench's output
            out = {"error": f"{type(e).__name__}: {e}"}
        print(json.dumps(out, default=float), flush=True)


def run_worker(kind, cfg, sections=(), threads=None, timeout=900, prefix=(), env=None):
    """Run a worker (torch timings, or a memory measurement) in a fresh Python process
    (prefix: a launcher, as ["mpiexec", "-n", "2"]); its result comes back as JSON on the
    last line of its stdout."""
    spec = json.dumps({"kind": kind, "cfg": cfg, "sections": list(sections),
                       "threads": threads})
    try:
        p = subprocess.run(list(prefix) + WORKER + [spec], capture_output=True, text=True,
                           timeout=timeout, env=user_env() if env is None else env)
    except subprocess.TimeoutExpired:
        return {"error": f"{kind} worker timed out after {timeout} s"}
    lines = [ln for ln in p.stdout.splitlines() if ln.startswith("{")]
    if p.returncode != 0 or not lines:
        tail = (p.stderr or p.stdout).strip().splitlines()[-1:] or ["no output"]
        return {"error": f"{kind} worker failed: {tail[0]}"}
    return json.loads(lines[-1])


ONE_SHOT = {"memory-cpu": memory.worker_ours, "memory-torch": memory.worker_torch}


def worker_main(spec):
    """The entry point of a worker process: spec is run_worker's (or TorchProcess's) JSON."""
    spec = json.loads(spec)
    kind, cfg = spec["kind"], spec.get("cfg")
    if kind == "torch-loop":
        _torch_loop(spec.get("threads"))
        return 0
    if kind == "torch":
        result = torch_worker(cfg, spec["sections"], spec.get("threads"))
    elif kind in ONE_SHOT:
        result = ONE_SHOT[kind](cfg)
    elif kind == "allreduce":             # one of several ranks: rank 0 alone answers
        result = allreduce.worker(cfg, spec.get("threads"))
    else:
        raise SystemExit(f"unknown worker {kind!r}")
    if result is not None:
        print(json.dumps(result, default=float))
    return 0
