"""A figure's row: what one timing becomes in the results (and the JSON), the summary row of
several, and the rows of several rounds merged."""
from __future__ import annotations


def row(section, op, impl, shape, fwd, both=None, flops=None, bwd_factor=3.0, note=""):
    """One figure: forward (and forward+backward) milliseconds from timeit results, every run
    kept, and GFLOP/s where the arithmetic is known (backward costs bwd_factor - 1 forwards)."""
    r = {"section": section, "op": op, "impl": impl, "shape": shape,
         "fwd_ms": fwd["median"] * 1e3, "fwd_runs_ms": [t * 1e3 for t in fwd["runs"]]}
    if both is not None:
        r["fwdbwd_ms"] = both["median"] * 1e3
        r["fwdbwd_runs_ms"] = [t * 1e3 for t in both["runs"]]
    if flops:
        r["gflop"] = flops / 1e9
        r["fwd_gflops"] = flops / fwd["median"] / 1e9
        if both is not None:
            r["fwdbwd_gflops"] = bwd_factor * flops / both["median"] / 1e9
            r["bwd_factor"] = bwd_factor
    if note:
        r["note"] = note
    return r


def total(rows, label):
    """A summary row adding up the ms (and overall GFLOP/s where flops are known)."""
    out = {"section": rows[0]["section"], "op": label, "impl": rows[0]["impl"], "shape": "",
           "fwd_ms": sum(r["fwd_ms"] for r in rows)}
    if all("fwdbwd_ms" in r for r in rows):
        out["fwdbwd_ms"] = sum(r["fwdbwd_ms"] for r in rows)
    if all("gflop" in r for r in rows):
        gf = sum(r["gflop"] for r in rows)
        out["gflop"] = gf
        out["fwd_gflops"] = gf / (out["fwd_ms"] / 1e3)
        if "fwdbwd_ms" in out and all("bwd_factor" in r for r in rows):
            work = sum(r["gflop"] * r["bwd_factor"] for r in rows)
            out["fwdbwd_gflops"] = work / (out["fwdbwd_ms"] / 1e3)
            out["bwd_factor"] = work / gf
    return out


def best_of(rounds):
    """Rows of several rounds merged: each (op, impl) keeps its fastest round's figures.
    This host slows down under sustained load and recovers when idle, by as much as 1.6x;
    interleaving our rounds with PyTorch's and keeping each side's best keeps the two sides'
    figures from different speed phases."""
    merged = {}
    for rows in rounds:
        for r in rows:
            key = (r["op"], r["impl"])
            if key not in merged:
                merged[key] = dict(r)
                continue
            m = merged[key]
            for col in ("fwd_ms", "fwdbwd_ms"):
                if col in r and r[col] < m.get(col, float("inf")):
                    m[col] = r[col]
                    m[col.replace("_ms", "_runs_ms")] = r.get(col.replace("_ms", "_runs_ms"))
            for col in ("fwd_x", "fwdbwd_x"):
                if col in r:
                    m[col] = max(m.get(col, 0.0), r[col])
            m["rounds"] = m.get("rounds", 1) + 1
    out = list(merged.values())
    for r in out:
        if "gflop" in r:
            r["fwd_gflops"] = r["gflop"] / (r["fwd_ms"] / 1e3)
            if "fwdbwd_ms" in r and r.get("fwdbwd_gflops"):
                factor = r.get("bwd_factor", 3.0)
                r["fwdbwd_gflops"] = factor * r["gflop"] / (r["fwdbwd_ms"] / 1e3)
    return out


def layers_total_ms(layers):
    """The whole step of a per-layer table ({"ms": {layer: [fwd, bwd]}}), for picking the
    fastest round's table; PyTorch's tables have no backward column (None)."""
    return sum(v or 0 for ms in layers["ms"].values() for v in ms)
