"""The run: `minifcn bench`'s arguments, each section in rounds (ours and PyTorch's
interleaved, each figure keeping its best round), the report printed and written."""
from __future__ import annotations

import argparse
import sys
import time

import numpy as np

from .. import DeviceUnavailable
from .. import functional as F
from .report import report, targets, write_json
from .rows import best_of, layers_total_ms
from .sections import SECTIONS, runs_on, settings, simulator_settings
from .timing import (cuda_ready, machine_info, restart_without_blas_env, set_threads,
                     sgemm_gflops)
from .torch_side import torch_available
from .workers import TorchProcess, worker_main
from ..cliargs import out_file, positive_int
from ..files import atomic_write_text


def add_arguments(p):
    p.add_argument("--quick", action="store_true",
                   help="tiny shapes, one or two runs each: seconds (for CI)")
    p.add_argument("--device", "--devices", dest="devices", nargs="+",
                   choices=["numpy", "cpu", "cuda"], default=None,
                   help="our devices to time (default: cpu and the numpy reference)")
    p.add_argument("--sections", nargs="+", choices=list(SECTIONS), default=None,
                   help=f"what to time (default all: {' '.join(SECTIONS)})")
    p.add_argument("--torch", dest="torch", action="store_true", default=None,
                   help="time PyTorch beside us (default: when it is installed)")
    p.add_argument("--no-torch", dest="torch", action="store_false",
                   help="do not time PyTorch")
    p.add_argument("--repeat", type=positive_int, default=None, help="timed runs per figure")
    p.add_argument("--rounds", type=positive_int, default=None,
                   help="rounds of each section, ours interleaved with PyTorch's, keeping "
                        "each figure's best (default 2; --quick 1)")
    p.add_argument("--threads", type=positive_int, default=None,
                   help="threads for Numba, BLAS and PyTorch (default: all cores)")
    p.add_argument("--json", metavar="PATH", type=out_file,
                   help="write every figure and the machine here")
    p.add_argument("--markdown", metavar="PATH", type=out_file,
                   help="write the report's tables here")
    p.add_argument("--worker", help=argparse.SUPPRESS)


def command_line(args):
    """The `minifcn bench` command that reproduces this run."""
    parts = ["minifcn", "bench"]
    if args.quick:
        parts.append("--quick")
    for flag, v in (("--device", args.devices), ("--sections", args.sections)):
        if v:
            parts += [flag] + list(v)
    if args.torch is not None:
        parts.append("--torch" if args.torch else "--no-torch")
    for flag, v in (("--repeat", args.repeat), ("--rounds", args.rounds),
                    ("--threads", args.threads),
                    ("--json", args.json), ("--markdown", args.markdown)):
        if v:
            parts += [flag, str(v)]
    return " ".join(parts)


def _log(s):
    print(s, file=sys.stderr, flush=True)


def _keep_fastest(results, key, layers):
    """results[key] becomes `layers` (a per-layer table) if it is the fastest so far."""
    old = results.get(key)
    if not old or layers_total_ms(layers) < layers_total_ms(old):
        results[key] = layers


def _start_torch(threads, results, info):
    """PyTorch's process, or None (and the reason in results) where it will not start."""
    _log("bench: PyTorch in a separate process")
    tp = TorchProcess(threads)
    if "error" in tp.hello:
        results["torch_error"] = tp.hello["error"]
        _log(f"bench: {tp.hello['error']}")
        tp.close()
        return None
    info["torch"] = tp.hello.get("info")
    results["torch_mirror_check"] = tp.hello.get("mirror_check")
    return tp


def _run_section(name, cfg, devices, rounds, sim, tp, results):
    """One section's rows, best of `rounds` (the numpy reference in the first only)."""
    s = SECTIONS[name]
    per_round = []
    for rnd in range(rounds):
        rows = []
        for device in devices:
            c = simulator_settings() if device == "cuda" and sim else cfg
            if not runs_on(s, device, c, sim) or (rnd > 0 and device == "numpy"):
                continue
            _log(f"bench: {name} on {device}")
            got, layers = s.ours(device, c)
            rows += s.totals(got)
            if layers and device == "cpu":
                _keep_fastest(results, s.layers, layers)
        if tp is not None:
            _log(f"bench: {name} on torch")
            out = tp.run(cfg, name)
            if "error" in out:
                results["torch_error"] = out["error"]
                _log(f"bench: PyTorch: {out['error']}")
            else:
                rows += s.totals(out.get(name, []))
                if out.get("layers", {}).get(name):
                    _keep_fastest(results, s.layers + "_torch", out["layers"][name])
        per_round.append(rows)
    return best_of(per_round)


def run(args):
    """Time everything asked for; returns the results dict (also what --json writes)."""
    cfg = settings(args.quick)
    if args.repeat:
        cfg["repeat"] = cfg["net_repeat"] = args.repeat
    rounds = args.rounds or (1 if args.quick else 2)
    sections = args.sections or list(SECTIONS)
    unknown = [s for s in sections if s not in SECTIONS]
    if unknown:
        raise ValueError(f"unknown section(s) {', '.join(unknown)}; choose from "
                         f"{', '.join(SECTIONS)}")
    devices = args.devices or ["cpu", "numpy"]
    with_torch = torch_available() if args.torch is None else args.torch
    if with_torch and not torch_available():
        raise ValueError("--torch: PyTorch is not installed here")
    if args.threads:
        set_threads(args.threads)
    F.relu(np.ones(4, np.float32), device="cpu")       # start Numba's threads (for the report)
    results = {"settings": cfg, "sections": sections, "devices": devices, "rounds": rounds}
    sim = False
    if "cuda" in devices:
        ok, sim = cuda_ready()
        if not ok:
            raise DeviceUnavailable("device 'cuda' is not available (no GPU; set "
                                    "NUMBA_ENABLE_CUDASIM=1 for the simulator)")
        if sim:
            results["cuda_note"] = "CUDA simulator: tiny op shapes only, times meaningless"
    info = machine_info()
    info["command"] = command_line(args)
    info["sgemm_gflops"] = sgemm_gflops(512 if args.quick else 2048)
    t_start = time.perf_counter()

    in_rounds = [s for s in sections if SECTIONS[s].alone is None]
    tp = _start_torch(args.threads, results, info) if with_torch and in_rounds else None
    try:
        for name in sections:
            alone = SECTIONS[name].alone
            if alone:                       # its own fresh processes, measured once
                results[name] = alone(cfg, with_torch) if "cpu" in devices else []
            else:
                results[name] = _run_section(name, cfg, devices, rounds, sim, tp, results)
    finally:
        if tp is not None:
            tp.close()
    info["seconds"] = time.perf_counter() - t_start
    results["machine"] = info
    results["targets"] = targets(results)
    return results


def main(args):
    """`minifcn bench`: run, print the report, write --json / --markdown. Returns 0."""
    if getattr(args, "worker", None):
        return worker_main(args.worker)
    results = run(args)
    text = report(results)
    print(text)
    if args.json:
        write_json(args.json, results)
    if args.markdown:
        atomic_write_text(args.markdown, text + "\n")
    return 0


def cli(argv=None):
    """`python -m minifcn.bench` (how the bench starts its worker processes)."""
    if argv is None:                # a command line (not a test calling in): a clean BLAS
        restart_without_blas_env()
    ap = argparse.ArgumentParser(prog="python -m minifcn.bench")
    add_arguments(ap)
    return main(ap.parse_args(argv))
