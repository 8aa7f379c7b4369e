"""`minifcn bench --quick` runs end to end, so the benchmark command never rots: every
section, our devices, PyTorch beside us when it is installed, the JSON and the markdown.
Benchmarks are not timed tests: nothing here checks a speed, only that the figures exist."""
import importlib.util
import json

import pytest

from minifcn import bench, cli
from minifcn.bench import nets

HAS_TORCH = importlib.util.find_spec("torch") is not None


@pytest.fixture(scope="module")
def quick(tmp_path_factory):
    d = tmp_path_factory.mktemp("bench")
    js, md = d / "bench.json", d / "bench.md"
    rc = cli.main(["bench", "--quick", "--json", str(js), "--markdown", str(md)])
    return rc, json.loads(js.read_text()), md.read_text()


def test_quick_runs_every_section(quick):
    rc, res, md = quick
    assert rc == 0
    for sec in bench.SECTIONS:
        assert res[sec], f"section {sec} has no rows"
    for sec in ("convs", "pools", "deconvs", "loss", "fcn", "tiny"):
        for impl in ("cpu", "numpy"):
            rows = [r for r in res[sec] if r["impl"] == impl]
            assert rows, (sec, impl)
            assert all(r["fwd_ms"] > 0 for r in rows)
    convs = [r for r in res["convs"] if r["impl"] == "cpu"]
    assert [r["op"] for r in convs][-1] == "13 convs" and len(convs) == 14
    assert all(r["fwdbwd_gflops"] > 0 for r in convs)
    assert res["fcn_layers"]["ms"]["conv1_1"][0] > 0          # per-layer times (caffe time)
    speedup = next(r for r in res["patches"] if r["impl"] == "cpu" and "fwd_x" in r)
    assert speedup["fwd_x"] > 0 and speedup["fwdbwd_x"] > 0
    mem = next(r for r in res["memory"] if r["impl"] == "cpu")
    assert mem["peak_rss_mb"] > mem["peak_over_imports_mb"] > 0


def test_report_states_the_machine(quick):
    rc, res, md = quick
    m = res["machine"]
    assert m["cores"] >= 1 and m["numba_threads"] >= 1 and m["command"].startswith(
        "minifcn bench --quick")
    assert m["blas"] and m["blas"][0]["architecture"]        # the BLAS kernel in use
    assert "BLAS:" in md and "### Targets" in md and "| conv1_2 |" in md
    assert {t["target"] for t in res["targets"]} == {t[0] for t in bench.TARGETS}


def test_patch_stack_follows_the_fcn_stride():
    """The patches timed against the whole image: one per unit of the FCN's output, their
    corners its derived output stride apart (32, not typed in), each the classifier's input
    size, the image zero-padded past its edge."""
    import numpy as np
    from minifcn.coordmap import receptive_field
    _, fcn = nets.patch_nets(dict(kind="micro", patch=32))
    img = np.random.default_rng(0).standard_normal((1, 3, 70, 70)).astype(np.float32)
    out = fcn.eval().forward(data=img)
    stride = int(receptive_field(fcn, "fc8")[0][1])
    patches = nets.patch_stack(fcn, img, 32, out.shape[2:])
    gh, gw = out.shape[2:]
    assert stride == 32 and patches.shape == (gh * gw, 3, 32, 32)
    i, j = gh - 1, gw - 1                                     # the last patch: past the edge
    last = patches[i * gw + j]
    inside = img[0, :, i * stride:i * stride + 32, j * stride:j * stride + 32]
    assert np.array_equal(last[:, :inside.shape[1], :inside.shape[2]], inside)
    assert inside.shape[1:] != (32, 32) and not last[:, inside.shape[1]:].any()


@pytest.mark.skipif(not HAS_TORCH, reason="PyTorch is optional")
def test_torch_side_by_side(quick):
    rc, res, md = quick
    assert "torch_error" not in res
    assert res["torch_mirror_check"] < 1e-4                  # the same nets, the same numbers
    for sec in ("convs", "pools", "deconvs", "loss", "fcn", "patches", "tiny", "memory"):
        assert any(r["impl"] == "torch" for r in res[sec]), sec
    assert "cpu/torch f+b" in md


def test_cuda_quick_on_the_simulator(capsys):
    """conftest switches Numba's CUDA simulator on: the cuda device runs its tiny set."""
    rc = cli.main(["bench", "--quick", "--device", "cuda", "--no-torch", "--sections",
                   "convs", "pools", "loss"])
    out = capsys.readouterr().out
    assert rc == 0, out
    assert "cuda fwd ms" in out and "simulator" in out


def test_tables_and_targets():
    rows = [{"section": "convs", "op": "a", "impl": "cpu", "shape": "s", "fwd_ms": 2.0,
             "fwdbwd_ms": 6.0},
            {"section": "convs", "op": "a", "impl": "torch", "shape": "s", "fwd_ms": 4.0,
             "fwdbwd_ms": 12.0}]
    t = bench.side_by_side(rows, ["cpu", "torch"])
    assert "| a | s | 2.00 | 6.00 | 4.00 | 12.0 | 0.50 | 0.50 |" in t
    tot = bench.total(rows[:1], "all")
    assert tot["fwd_ms"] == 2.0 and tot["fwdbwd_ms"] == 6.0
    res = {"convs": [dict(rows[0], op="13 convs"), dict(rows[1], op="13 convs")]}
    got = {t["target"]: t for t in bench.targets(res)}
    assert got["VGG16 13 convs fwd+bwd vs PyTorch"]["measured"] == pytest.approx(0.5)
    assert got["VGG16 13 convs fwd+bwd vs PyTorch"]["met"] is True
    assert got["5 max-pools fwd+bwd, PyTorch / ours"]["met"] is None
