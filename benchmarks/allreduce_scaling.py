"""Data-parallel FCN-8s past this machine: measure here, then model a cluster.

    python benchmarks/allreduce_scaling.py --json ar.json --markdown ar.md   # measure (minutes)
    python benchmarks/allreduce_scaling.py --from ar.json                   # the model again
    python benchmarks/allreduce_scaling.py --quick                          # tiny, seconds

The measurement is `minifcn bench --sections allreduce` (1 rank alone, then 2 ranks under the
mpich wheel's mpiexec). The model, for N nodes each running one rank of FCN-8s (VGG16, batch b
per rank, 500x500), summing float32 gradients with a ring Allreduce:

    G        = 4 bytes x the trainable parameters (derived from the net: 134.4 M, 537 MB)
    T_comm   = 2 (N-1)/N x G / link  +  2 (N-1) x latency        (ring: reduce-scatter + gather)
    no overlap:  T_step = T_fwd + T_bwd + T_update + T_comm
    overlap:     T_step = T_fwd + max(T_bwd, T_comm) + T_update  (buckets reduced as backward
                 makes them; FCN-8s's fc6, 77% of G, is made early in backward)
    speed-up(N)  = N x T_step(1) / T_step(N)                     (images/s over one node's)
    hides at b   = ceil(T_comm / T_bwd(b=1)): the per-rank batch whose backward covers T_comm

Assumptions: compute time grows linearly with the batch; the link is the bottleneck (no
contention, full duplex, one rank per node, no NIC offload needed: the CPU does the reduction);
latency 5 us a step; the Allreduce needs no copies beyond what we measured here (pack_ms).
Nodes modelled: this 2-core machine (its FCN-8s step measured idle, RESULTS.md; and as this run
measured it, under whatever load there was) and one H200 (86 ms forward, 259 ms
forward+backward+SGD: benchmarks/RESULTS.md, gpu_check)."""
from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

LINKS_GBIT = (10, 25, 100)
NODES = (2, 4, 8, 16, 32, 64)
LATENCY_S = 5e-6
CPU2 = {"name": "this 2-core machine per node, idle", "fwd": 1.42, "bwd": 4.40 - 1.42,
        "update": 0.0,
        "source": "RESULTS.md: the fcn section, FCN-8s 500x500 on 2 cores with the machine "
                  "otherwise idle: forward 1.42 s, training step 4.40 s (the SGD update "
                  "counted as backward)"}
H200 = {"name": "one H200 per node", "fwd": 0.086, "bwd": 0.259 - 0.086, "update": 0.0,
        "source": "RESULTS.md: gpu_check, FCN-8s 500x500 forward 86 ms, forward+backward+SGD "
                  "259 ms (the SGD update counted as backward)"}


def gradient_bytes():
    from minifcn import models
    net = models.fcn8s(21, materialize=False)
    return 4 * net.num_params(trainable_only=True)


def ring_seconds(nbytes, n, gbit_s, latency_s=LATENCY_S):
    """A ring Allreduce of nbytes over n nodes on gbit_s links."""
    if n <= 1:
        return 0.0
    return 2 * (n - 1) / n * nbytes / (gbit_s * 1e9 / 8) + 2 * (n - 1) * latency_s


def step_seconds(node, t_comm, overlap, batch=1):
    fwd, bwd = batch * node["fwd"], batch * node["bwd"]
    if overlap:
        return fwd + max(bwd, t_comm) + node["update"]
    return fwd + bwd + t_comm + node["update"]


def speedup(node, nbytes, n, gbit_s, overlap, batch=1):
    return n * step_seconds(node, 0.0, False, batch) / step_seconds(
        node, ring_seconds(nbytes, n, gbit_s), overlap, batch)


def hiding_batch(node, nbytes, n, gbit_s):
    return max(1, math.ceil(ring_seconds(nbytes, n, gbit_s) / node["bwd"]))


def node_from_rows(rows):
    """This machine as a node, as this run measured it: the 1-rank FCN-8s step (all cores)."""
    steps = [r for r in rows if r.get("op") == "fcn8s step" and r["impl"].startswith("1 x")]
    r = min(steps, key=lambda r: r["step_ms"]) if steps else None
    if r is None:
        return None
    fwd, bwd = r["fwd_ms"] / 1e3, r["bwd_ms"] / 1e3
    return {"name": "this machine per node, as measured in this run", "fwd": fwd, "bwd": bwd,
            "update": max(0.0, r["step_ms"] / 1e3 - fwd - bwd),
            "source": f"measured here: FCN-8s {r['shape']}, step {r['step_ms']:.0f} ms "
                      f"(forward {r['fwd_ms']:.0f}, backward {r['bwd_ms']:.0f})"}


def model_tables(nbytes, nodes):
    out = [f"Gradients: {nbytes / 1e6:.1f} MB a step (float32, derived from FCN-8s's "
           f"{nbytes // 4:,} trainable parameters). Ring Allreduce time at N = 64: " +
           ", ".join(f"{ring_seconds(nbytes, 64, g) * 1e3:.0f} ms at {g} Gb/s"
                     for g in LINKS_GBIT) + "."]
    for node in nodes:
        out += ["", f"**{node['name']}** ({node['source']}), batch 1 per rank: speed-up over "
                "one node, without / with overlap", ""]
        head = ["nodes"] + [f"{g} Gb/s" for g in LINKS_GBIT]
        out += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        for n in NODES:
            cells = [str(n)] + [f"{speedup(node, nbytes, n, g, False):.1f} / "
                                f"{speedup(node, nbytes, n, g, True):.1f}" for g in LINKS_GBIT]
            out.append("| " + " | ".join(cells) + " |")
        out += ["", "Per-rank batch at which the Allreduce hides under backward (overlap), "
                "and the speed-up with it:", ""]
        out += ["| nodes | " + " | ".join(f"{g} Gb/s" for g in LINKS_GBIT) + " |",
                "|---|---|---|---|"]
        for n in (2, 8, 64):
            cells = []
            for g in LINKS_GBIT:
                b = hiding_batch(node, nbytes, n, g)
                cells.append(f"b = {b} ({speedup(node, nbytes, n, g, True, b):.1f}x)")
            out.append(f"| {n} | " + " | ".join(cells) + " |")
    return "\n".join(out)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--from", dest="source", help="a JSON written by --json (no measuring)")
    ap.add_argument("--quick", action="store_true", help="tiny shapes (the model then uses "
                    "only the H200 node)")
    ap.add_argument("--json", help="write the measured rows and the machine here")
    ap.add_argument("--markdown", help="write the report here")
    a = ap.parse_args(argv)
    from minifcn.bench.report import markdown
    from minifcn.bench.sections import SECTIONS, settings
    from minifcn.bench.timing import format_machine, machine_info
    if a.source:
        saved = json.loads(Path(a.source).read_text())
    else:
        cfg = settings(a.quick)
        saved = {"machine": machine_info(), "rows": SECTIONS["allreduce"].alone(cfg),
                 "command": "python benchmarks/allreduce_scaling.py" + (" --quick" * a.quick)}
        if a.json:
            Path(a.json).write_text(json.dumps(saved, indent=1, default=float))
    nbytes = gradient_bytes()
    nodes = [n for n in (CPU2, node_from_rows(saved["rows"]), H200) if n]
    text = "\n".join([f"**Machine:** {format_machine(saved['machine'])}", "",
                      f"**Command:** `{saved['command']}`", "",
                      markdown(saved["rows"], SECTIONS["allreduce"].columns), "",
                      model_tables(nbytes, nodes)])
    print(text)
    if a.markdown:
        Path(a.markdown).write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
