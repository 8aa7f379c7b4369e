"""Merge several `minifcn bench --json` files into one report: sections are joined, and where
two files timed the same (op, implementation) each figure keeps its best (as `--rounds` does
within one run). For a full run done in chunks -- on a shared machine, where other work is
paused only a few minutes at a time -- or rounds repeated later.

    python benchmarks/merge.py a.json b.json ... --json all.json --markdown all.md
"""
import argparse
import json
import sys

from minifcn.bench.report import report, targets, write_json
from minifcn.bench.rows import best_of, layers_total_ms
from minifcn.bench.sections import SECTIONS
from minifcn.files import atomic_write_text


def merge(results):
    out = {"settings": results[0]["settings"], "devices": [], "sections": [], "rounds": 0,
           "machine": dict(results[0]["machine"])}
    out["machine"]["command"] = " ; ".join(r["machine"]["command"] for r in results)
    out["machine"]["seconds"] = sum(r["machine"].get("seconds", 0) for r in results)
    for r in results:
        for d in r["devices"]:
            if d not in out["devices"]:
                out["devices"].append(d)
        out["rounds"] += r.get("rounds", 1)
        if r["machine"].get("torch"):
            out["machine"]["torch"] = r["machine"]["torch"]
        for k in ("torch_mirror_check", "cuda_note", "torch_error"):
            if r.get(k) is not None:
                out[k] = r[k]
    for sec in SECTIONS:
        tables = [r[sec] for r in results if r.get(sec)]
        if tables:
            out["sections"].append(sec)
            out[sec] = best_of(tables)
    for key in ("fcn_layers", "fcn_layers_torch", "tiny_layers"):
        cands = [r[key] for r in results if r.get(key)]
        if cands:          # the fastest pass's per-layer table
            out[key] = min(cands, key=layers_total_ms)
    out["targets"] = targets(out)
    return out


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("files", nargs="+")
    ap.add_argument("--json")
    ap.add_argument("--markdown")
    a = ap.parse_args(argv)
    results = []
    for path in a.files:
        with open(path) as f:
            results.append(json.load(f))
    out = merge(results)
    text = report(out)
    print(text)
    if a.json:
        write_json(a.json, out)
    if a.markdown:
        atomic_write_text(a.markdown, text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
