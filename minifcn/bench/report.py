"""The report: markdown tables (our devices side by side with PyTorch), `caffe time`
per-layer tables, the targets and whether they are met, and the JSON file."""
from __future__ import annotations

import json

from ..files import atomic_write_text
from .sections import SECTIONS, Section
from .timing import format_machine

TORCH = "torch"


def _fmt(v, nd=2):
    if v is None or v == "":
        return ""
    if isinstance(v, float):
        if v >= 100:
            return f"{v:.0f}"
        if v >= 10:
            return f"{v:.1f}"
        return f"{v:.{nd}f}"
    return str(v)


def _div(a, b):
    return a / b if a is not None and b else None


def markdown(rows, columns=("op", "impl", "shape", "fwd_ms", "fwdbwd_ms", "fwd_gflops",
                            "fwdbwd_gflops")):
    """A plain table of rows (every column some row has)."""
    cols = [c for c in columns if any(c in r for r in rows)]
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for r in rows:
        lines.append("| " + " | ".join(_fmt(r.get(c)) for c in cols) + " |")
    return "\n".join(lines)


def side_by_side(rows, impls, ours="cpu", ref=TORCH, gflops=True, labels=None):
    """One line per op, each implementation's fwd and fwd+bwd ms in columns, then our time
    over the reference's (below 1: we are faster). labels: {impl: column title}."""
    labels = labels or {}
    ops = list(dict.fromkeys(r["op"] for r in rows))
    by = {(r["op"], r["impl"]): r for r in rows}
    impls = [i for i in impls if any(r["impl"] == i for r in rows)]
    head = ["op", "shape"]
    has_gf = {i: gflops and any("fwdbwd_gflops" in by.get((o, i), {}) for o in ops)
              for i in impls}
    for i in impls:
        lab = labels.get(i, i)
        head += [f"{lab} fwd ms", f"{lab} f+b ms"] + ([f"{lab} f+b GFLOP/s"] if has_gf[i]
                                                       else [])
    ratio = ours in impls and ref in impls
    if ratio:
        head += [f"{ours}/{ref} fwd", f"{ours}/{ref} f+b"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for o in ops:
        shape = next((by[(o, i)].get("shape", "") for i in impls if (o, i) in by), "")
        cells = [o, shape]
        for i in impls:
            r = by.get((o, i), {})
            cells += [_fmt(r.get("fwd_ms")), _fmt(r.get("fwdbwd_ms"))]
            if has_gf[i]:
                cells.append(_fmt(r.get("fwdbwd_gflops")))
        if ratio:
            a, b = by.get((o, ours), {}), by.get((o, ref), {})
            cells += [_fmt(_div(a.get("fwd_ms"), b.get("fwd_ms"))),
                      _fmt(_div(a.get("fwdbwd_ms"), b.get("fwdbwd_ms")))]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def layer_table(ours, ref=None, top=None):
    """`caffe time`: per-layer forward and backward ms of our net, PyTorch's forward beside."""
    ms = ours["ms"]
    names = list(ms)
    tot_f = sum(v[0] for v in ms.values())
    tot_b = sum(v[1] for v in ms.values())
    order = sorted(names, key=lambda n: -(ms[n][0] + ms[n][1]))[:top] if top else names
    head = ["layer", "top shape", "fwd ms", "bwd ms", "% of step"]
    if ref:
        head.append("torch fwd ms")
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for n in order:
        f, b = ms[n]
        shape = "x".join(map(str, ours.get("shapes", {}).get(n, [])))
        cells = [n, shape, _fmt(f), _fmt(b), _fmt(100 * (f + b) / max(1e-9, tot_f + tot_b), 1)]
        if ref:
            cells.append(_fmt((ref["ms"].get(n) or [None])[0]))
        lines.append("| " + " | ".join(cells) + " |")
    cells = ["total", "", _fmt(tot_f), _fmt(tot_b), "100"]
    if ref:
        cells.append(_fmt(sum(v[0] for v in ref["ms"].values())))
    lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


# ----------------------------------------------------------------------------- targets
TARGETS = [
    # (name, section, op, column, goal, kind): kind "ratio" = ours/torch <= goal,
    # "speedup" = torch/ours >= goal, "x" = a measured speed-up >= goal
    ("VGG16 13 convs fwd+bwd vs PyTorch", "convs", "13 convs", "fwdbwd_ms", 1.0, "ratio"),
    ("5 max-pools fwd+bwd, PyTorch / ours", "pools", "5 pools", "fwdbwd_ms", 10.0, "speedup"),
    ("k64 s32 upsampling fwd+bwd, PyTorch / ours", "deconvs", "k64 s32 (3 sizes)",
     "fwdbwd_ms", 5.0, "speedup"),
    ("FCN-8s forward 500x500 vs PyTorch", "fcn", "FCN-8s 500x500", "fwd_ms", 0.75, "ratio"),
    ("FCN-8s training step 500x500 vs PyTorch", "fcn", "FCN-8s 500x500", "fwdbwd_ms", 0.8,
     "ratio"),
    ("FCN-8s step peak memory vs PyTorch", "memory", None, "peak_over_imports_mb", 0.7,
     "ratio"),
    ("fcn8s_tiny training step vs PyTorch", "tiny", "fcn8s_tiny step", "fwdbwd_ms", 0.8,
     "ratio"),
    ("whole image vs patches, forward", "patches", "speed-up (patches / whole)", "fwd_x", 10.0,
     "x"),
    ("whole image vs patches, forward+backward", "patches", "speed-up (patches / whole)",
     "fwdbwd_x", 10.0, "x"),
]


def targets(results, ours="cpu"):
    """Each target with its measured figure and whether it is met."""
    out = []
    for name, sec, op, col, goal, kind in TARGETS:
        rows = results.get(sec, [])
        pick = lambda impl: next((r for r in rows if r.get("impl") == impl and  # noqa: E731
                                  (op is None or r["op"] == op) and col in r), None)
        a, b = pick(ours), pick(TORCH)
        goal_s = f"<= {goal:g}x" if kind == "ratio" else f">= {goal:g}x"
        if not a or (kind != "x" and not b):
            out.append({"target": name, "goal": goal_s, "measured": None, "met": None,
                        "note": "needs PyTorch" if a else "not measured"})
            continue
        value = a[col] if kind == "x" else a[col] / b[col] if kind == "ratio" else \
            b[col] / a[col]
        ok = value <= goal if kind == "ratio" else value >= goal
        out.append({"target": name, "goal": goal_s, "measured": value, "met": ok})
    if results.get("settings", {}).get("quick"):
        for t in out:
            t["note"] = "--quick: tiny shapes, not the target's"
    return out


def targets_table(ts):
    lines = ["| target | goal | measured | met |", "|---|---|---|---|"]
    for t in ts:
        m = "" if t["measured"] is None else f"{t['measured']:.2f}x"
        met = {True: "yes", False: "no", None: "-"}[t["met"]]
        if t.get("note"):
            met += f" ({t['note']})"
        lines.append(f"| {t['target']} | {t.get('goal', '')} | {m} | {met} |")
    return "\n".join(lines)


# ----------------------------------------------------------------------------- the report
def _section_table(results, s, rows, impls):
    if s.columns:
        return [markdown(rows, s.columns)]
    labels = {}
    if s.numpy_small and "numpy" in results["devices"]:
        n = results["settings"]["numpy_size"]
        labels["numpy"] = f"numpy ({n}x{n})"
    out = [side_by_side(rows, impls, labels=labels)]
    notes = sorted({r["note"] for r in rows if r.get("note")})
    if notes:
        out.append("\n" + "; ".join(notes))
    return out


def report(results):
    """The markdown report: machine, then one table per section, then the targets."""
    info = results["machine"]
    impls = list(results["devices"]) + [TORCH]
    out = [f"**Machine:** {format_machine(info)}", "",
           f"**Command:** `{info.get('command', '')}` ({info.get('seconds', 0):.0f} s)"]
    if results.get("cuda_note"):
        out.append(f"\n_{results['cuda_note']}_")
    if results.get("torch_error"):
        out.append(f"\n_PyTorch: {results['torch_error']}_")
    if results.get("torch_mirror_check") is not None:
        out.append(f"\nPyTorch runs in its own process, on the same nets (built from ours, "
                   f"our weights; scores agree to {results['torch_mirror_check']:.1e} "
                   f"relative).")
    for name in results["sections"]:
        rows = results.get(name) or []
        if not rows:
            continue
        s = SECTIONS.get(name) or Section(name)      # a section of an older JSON file
        out += ["", f"### {s.title}", ""]
        out += _section_table(results, s, rows, impls)
        if s.layers and results.get(s.layers):
            lay = results[s.layers]
            out += ["", s.layers_caption.format(**lay), "",
                    layer_table(lay, results.get(s.layers + "_torch"), top=s.layers_top)]
    out += ["", "### Targets", "", targets_table(results["targets"])]
    return "\n".join(out)


def write_json(path, payload):
    atomic_write_text(path, json.dumps(payload, indent=1, default=float))
