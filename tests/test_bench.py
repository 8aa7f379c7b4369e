"""`minifcn bench --quick` runs end to end, so the benchmark command never rots: every
section, our devices, PyTorch beside us when it is installed, the JSON and the markdown.
Benchmarks are not timed tests: nothing here checks a speed, only that the figures exist."""
import importlib.util
import json

import pytest

from minifcn import bench, cli
from minifcn import layers as L
from minifcn.bench import nets, ops, sections

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
    from minifcn.kernels.cpu import SET_BY_US                 # ours, not in PyTorch's process
    tenv = res["machine"]["torch"]["env"]
    assert not any(tenv.get(k) == v for k, v in SET_BY_US.items())


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


# ----------------------------------------------------------------------------- the section table
def _bench_parser_action(dest):
    sub = next(a for a in cli.make_parser()._actions if a.dest == "verb")
    return next(a for a in sub.choices["bench"]._actions if a.dest == dest)


def test_sections_flag_is_the_section_table():
    """--sections offers exactly the table's sections, in its order, and its help names them;
    each section has both sides (ours and PyTorch's) or runs alone in fresh processes."""
    act = _bench_parser_action("sections")
    assert list(act.choices) == list(bench.SECTIONS)
    assert " ".join(bench.SECTIONS) in act.help
    for name, s in bench.SECTIONS.items():
        assert s.title and s.doc, name
        assert (s.ours and s.torch) or s.alone, name
        assert f"  {name} " in bench.__doc__, f"the package docstring does not list {name}"
        assert s.numpy in ("always", "quick", "never"), name
        assert not s.layers or s.layers_caption, name


def test_run_refuses_an_unknown_section():
    import argparse
    args = argparse.Namespace(quick=True, repeat=None, rounds=None, sections=["convz"],
                              devices=None, torch=False, threads=None, json=None, markdown=None)
    with pytest.raises(ValueError, match="unknown section.*convz.*choose from convs, pools"):
        bench.run(args)


def test_numpy_and_the_simulator_take_part_where_the_table_says():
    quick, full = sections.settings(True), sections.settings(False)
    fcn, patches = bench.SECTIONS["fcn"], bench.SECTIONS["patches"]
    assert sections.runs_on(fcn, "numpy", quick) and not sections.runs_on(fcn, "numpy", full)
    assert not sections.runs_on(patches, "numpy", quick)
    assert sections.runs_on(bench.SECTIONS["convs"], "cuda", quick, simulator=True)
    assert not sections.runs_on(fcn, "cuda", quick, simulator=True)
    assert sections.runs_on(fcn, "cuda", full, simulator=False)


# ----------------------------------------------------------------------------- layers' twins, FLOPs
def test_a_layer_type_without_a_twin_says_which():
    class Odd(L.Layer):
        pass
    with pytest.raises(NotImplementedError, match="Odd layer has no PyTorch twin"):
        Odd().torch_twin(None)
    assert Odd().flops((1, 3, 8, 8), (1, 3, 8, 8)) == 0.0


def test_net_flops_of_vgg16_is_its_well_known_15_5_gmacs():
    """Counted from what each layer says (Conv / InnerProduct / Deconv .flops): VGG16 at
    224x224 is 15.47 G multiply-adds, 13 convolutions and 3 fully connected layers."""
    from minifcn import models
    from minifcn.coordmap import blob_shapes
    net = models.vgg16(materialize=False)
    shapes = {b: (1,) + tuple(s) for b, s in blob_shapes(net, (224, 224)).items()}
    convs = sum(2 * (224 // d) ** 2 * ci * co * 9 for _, ci, co, d in ops.VGG16_CONVS)
    fcs = 2 * (512 * 7 * 7 * 4096 + 4096 * 4096 + 4096 * 1000)
    assert nets.net_flops(net, shapes) == pytest.approx(convs + fcs)
    assert nets.net_flops(net, shapes) / 2 == pytest.approx(15.47e9, rel=2e-3)


def _model_nets():
    from minifcn import models
    out = {name: build(materialize=False) for name, build in models.MODELS.items()}
    out["alexnet convolutionalized"] = models.convolutionalize(out["alexnet"],
                                                               copy_params=False)
    return out


@pytest.mark.skipif(not HAS_TORCH, reason="PyTorch is optional")
def test_every_layer_type_the_models_use_has_a_torch_twin():
    import torch
    types = {}
    for name, net in _model_nets().items():
        for layer in net.layers.values():
            types.setdefault(type(layer).__name__, layer)
    assert {"Conv", "InnerProduct", "Deconv", "MaxPool", "ReLU", "Dropout", "Crop", "Sum",
            "Scale", "LRN", "SoftmaxLoss"} <= set(types)
    for name, layer in types.items():
        assert callable(layer.torch_twin(torch)), name


def _twin_cases():
    """(layer, bottom shapes) for each layer type, geometry that is not the default."""
    return [
        ("conv", L.Conv(4, 6, 3, stride=2, pad=1, dilation=2, groups=2, seed=0), [(2, 4, 9, 9)]),
        ("fc", L.InnerProduct((3, 4, 4), 5, seed=0), [(2, 3, 4, 4)]),
        ("deconv", L.Deconv(3, 3, 4, stride=2, pad=1, bias=True), [(1, 3, 5, 5)]),
        ("maxpool", L.MaxPool(3, 2), [(1, 2, 8, 8)]),          # ceil mode: 4x4, not 3x3
        ("avgpool", L.AvgPool(2, 2, pad=1), [(1, 2, 7, 7)]),
        ("relu", L.ReLU(), [(1, 2, 4, 4)]),
        ("leaky relu", L.ReLU(0.1), [(1, 2, 4, 4)]),
        ("dropout (eval)", L.Dropout(0.5, seed=0), [(1, 2, 4, 4)]),
        ("crop", L.Crop((1, 2)), [(1, 2, 8, 9), (1, 2, 5, 5)]),
        ("sum", L.Sum([1.0, -0.5]), [(1, 2, 4, 4), (1, 2, 4, 4)]),
        ("scale", L.Scale(0.01), [(1, 2, 4, 4)]),
        ("lrn", L.LRN(5, 1e-2, 0.75, 2.0), [(1, 7, 3, 3)]),
        ("loss valid", L.SoftmaxLoss(), [(2, 4, 3, 3), "labels"]),
        ("loss batch", L.SoftmaxLoss(normalize="batch", loss_weight=2.0),
         [(2, 4, 3, 3), "labels"]),
        ("loss none", L.SoftmaxLoss(normalize="none"), [(2, 4, 3, 3), "labels"]),
    ]


@pytest.mark.skipif(not HAS_TORCH, reason="PyTorch is optional")
@pytest.mark.parametrize("case", range(len(_twin_cases())), ids=[c[0] for c in _twin_cases()])
def test_torch_twin_computes_what_the_layer_computes(case):
    """Each twin against our layer's forward (numpy reference device, eval mode)."""
    import numpy as np
    import torch
    _, layer, shapes = _twin_cases()[case]
    rng = np.random.default_rng(case)
    xs = []
    for s in shapes:
        if s == "labels":
            lab = rng.integers(0, xs[0].shape[1], (xs[0].shape[0],) + xs[0].shape[2:])
            lab[0, 0, :] = 255
            xs.append(lab.astype(np.int32))
        else:
            xs.append(rng.standard_normal(s).astype(np.float32))
    layer.to("numpy")
    layer.training = False
    ours = layer.forward(*xs)[0]
    params = {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in layer.params.items()}
    tx = [torch.from_numpy(x.astype(np.int64) if x.dtype == np.int32 else x) for x in xs]
    with torch.no_grad():
        theirs = layer.torch_twin(torch)(tx, params, False, False).numpy()
    assert np.shape(theirs) == np.shape(ours)
    np.testing.assert_allclose(theirs, ours, rtol=1e-4, atol=1e-5)


def test_quick_allreduce_section_ran_on_one_and_two_ranks(quick):
    """The data-parallel section really ran under mpiexec (not a note that it could not)."""
    rc, res, md = quick
    rows = res["allreduce"]
    assert not [r for r in rows if r["op"] == "data parallel"], rows
    assert any(r["impl"] == "mpi4py, one buffer" and r["gb_s"] > 0 for r in rows)
    assert any(r["impl"].startswith("ours,") and r["gb_s"] > 0 for r in rows)
    steps = {r["impl"] for r in rows if r.get("step_ms")}
    assert any(i.startswith("1 x") for i in steps) and any(i.startswith("2 x") for i in steps)
    assert any("wait_ms" in r for r in rows)


def test_bench_restarts_without_a_forced_openblas_kernel(tmp_path):
    """OPENBLAS_CORETYPE is read when numpy loads OpenBLAS: the bench command restarts itself
    without it, measures with the kernel OpenBLAS picks for this CPU and says what it unset;
    MINIFCN_BENCH_KEEP_BLAS_ENV=1 keeps it (and the report says it was in effect)."""
    import os
    import subprocess
    import sys
    from threadpoolctl import threadpool_info
    native = {i["architecture"] for i in threadpool_info() if i.get("internal_api") == "openblas"}
    if not native or "OPENBLAS_CORETYPE" in os.environ:
        pytest.skip("numpy's BLAS is not OpenBLAS, or this shell forces its kernel already")
    forced = "Prescott"            # OpenBLAS's oldest x86-64 kernel, never the native pick
    for keep in ("0", "1"):
        js = tmp_path / f"keep{keep}.json"
        env = dict(os.environ, OPENBLAS_CORETYPE=forced, MINIFCN_BENCH_KEEP_BLAS_ENV=keep)
        subprocess.run([sys.executable, "-m", "minifcn.bench", "--quick", "--no-torch",
                        "--device", "cpu", "--sections", "pools", "--json", str(js)],
                       env=env, check=True, capture_output=True, timeout=300)
        m = json.loads(js.read_text())["machine"]
        arch = {b["architecture"] for b in m["blas"]}
        if keep == "0":
            assert arch == native and forced not in arch
            assert m["env"]["unset by the bench"] == f"OPENBLAS_CORETYPE={forced}"
        else:
            assert arch and not arch & native      # OpenBLAS's own name for it may differ
            assert m["env"]["OPENBLAS_CORETYPE"].startswith(forced + " (kept")
