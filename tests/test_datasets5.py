"""The paper's section-5 datasets in their released layouts (synthetic copies written by
minifcn.datasets), read as the reference's data layers read them, and training / scoring
from the reference's prototxts and solvers on each layout."""
import os
import shutil

import numpy as np
import pytest
import scipy.io
from PIL import Image

from minifcn import cli
from minifcn.caffe import read_net
from minifcn.caffe.solver import read_solver
from minifcn.data import DatasetError, preprocess, synthetic_splits, write_voc
from minifcn.datasets import (NYUD, NYUD_MEAN_HHA, NYUD_MEAN_LOGD, SIFTFLOW_MEAN, PASCALContext,
                              SIFTFlow, TopsLoader, from_data_layer, write_nyud,
                              write_pascalcontext, write_siftflow)

HERE = os.path.dirname(os.path.abspath(__file__))
FIXTURES = os.path.join(HERE, "fixtures", "caffe")
SUB = "spatial_envelope_256x256_static_8outdoorcategories"


def test_siftflow_reads_as_its_data_layer(tmp_path):
    ids = write_siftflow(tmp_path, {"trainval": 2}, size=(9, 11))
    ds = SIFTFlow(tmp_path, "trainval")
    item = ds[1]
    img = np.asarray(Image.open(tmp_path / "Images" / SUB / f"{ids['trainval'][1]}.jpg"))
    np.testing.assert_allclose(item["data"], preprocess(img, SIFTFLOW_MEAN))
    S = scipy.io.loadmat(tmp_path / "SemanticLabels" / SUB / f"{ids['trainval'][1]}.mat")["S"]
    G = scipy.io.loadmat(tmp_path / "GeoLabels" / SUB / f"{ids['trainval'][1]}.mat")["S"]
    np.testing.assert_array_equal(item["sem"], np.where(S == 0, 255, S - 1))
    np.testing.assert_array_equal(item["geo"], np.where(G <= 0, 255, G - 1))
    assert item["sem"].dtype == np.uint8 and set(np.unique(item["geo"])) <= {0, 1, 2, 255}


def test_nyud_reads_color_depth_hha_and_labels(tmp_path):
    ids = write_nyud(tmp_path, {"test": 1}, size=(7, 8))["test"]
    item = NYUD(tmp_path, "test", ("color", "depth", "hha", "label"))[0]
    d = np.asarray(Image.open(tmp_path / "data" / "depth" / f"img_{ids[0]}.png"), np.float32)
    np.testing.assert_allclose(item["depth"][0], np.log(d) - NYUD_MEAN_LOGD, rtol=1e-6)
    hha = np.asarray(Image.open(tmp_path / "data" / "hha" / f"img_{ids[0]}.png"), np.float32)
    np.testing.assert_allclose(item["hha"], (hha - NYUD_MEAN_HHA).transpose(2, 0, 1), rtol=1e-5)
    seg = scipy.io.loadmat(tmp_path / "segmentation" / f"img_{ids[0]}.mat")["segmentation"]
    np.testing.assert_array_equal(item["label"], np.where(seg == 0, 255, seg - 1))
    assert item["color"].shape == (3, 7, 8) and item["depth"].shape == (1, 7, 8)
    zero = np.zeros((7, 8), np.uint16)
    Image.fromarray(zero).save(tmp_path / "data" / "depth" / f"img_{ids[0]}.png")
    with pytest.raises(DatasetError, match=r"img_0000.png: depth must be one positive channel"):
        NYUD(tmp_path, "test", ("depth",))[0]


def test_pascal_context_maps_the_400_labels_onto_59_by_name(tmp_path):
    ids = write_pascalcontext(tmp_path / "voc", tmp_path / "ctx", {"val": 1}, size=(6, 7))
    ds = PASCALContext(tmp_path / "voc", tmp_path / "ctx", "val")
    names = {}
    for line in (tmp_path / "ctx" / "labels.txt").read_text().splitlines():
        i, name = line.split(": ")
        names[int(i)] = name
    raw = scipy.io.loadmat(tmp_path / "ctx" / "trainval" / f"{ids['val'][0]}.mat")["LabelMap"]
    label = ds[0]["label"]
    renamed = {"table": "diningtable", "bedclothes": "bedcloth", "cloth": "clothes"}
    for r, t in zip(raw.ravel(), label.ravel()):
        name = renamed.get(names[int(r)], names[int(r)])
        assert t == (ds.class_names["label"].index(name) if not name.startswith("thing") else 0)
    assert ds.num_classes["label"] == 60 and label.max() < 60


def test_a_data_layer_opens_its_dataset_from_the_prototxts_folder(tmp_path):
    shutil.copytree(os.path.join(FIXTURES, "siftflow-fcn32s"), tmp_path / "net")
    write_siftflow(tmp_path / "data" / "sift-flow", {"trainval": 2, "test": 1})
    net = read_net(str(tmp_path / "net" / "trainval.prototxt"), materialize=False)
    (layer,) = net.caffe.data_layers
    assert layer.params == {"siftflow_dir": "../data/sift-flow", "split": "trainval",
                            "seed": 1337}
    ds = from_data_layer(layer, tmp_path / "net")
    assert len(ds) == 2 and ds.tops == ("data", "sem", "geo")
    batch = TopsLoader(ds, seed=0).next_batch()
    assert batch["data"].dtype == np.float32 and batch["sem"].dtype == np.int32
    assert batch["data"].shape[:2] == (1, 3) and batch["geo"].shape[0] == 1
    with pytest.raises(DatasetError, match=r"elsewhere/test.txt: split file not found"):
        from_data_layer(read_net(str(tmp_path / "net" / "test.prototxt"),
                                 materialize=False).caffe.data_layers[0], root=tmp_path / "elsewhere")


# ----------------------------------------------------------------------------- training
def _layout(tmp_path, folders):
    for f in folders:
        shutil.copytree(os.path.join(FIXTURES, f), tmp_path / f)
    data = tmp_path / "data"
    write_siftflow(data / "sift-flow", classes=7)
    write_nyud(data / "nyud", classes=7)
    write_pascalcontext(data / "pascal", data / "pascal-context", classes=7)
    train, val = synthetic_splits(3, 2, size=(24, 30))
    write_voc(train, data / "pascal" / "VOC2011", "train")
    write_voc(val, data / "pascal" / "VOC2011", "seg11valid")
    return tmp_path


@pytest.fixture(scope="module")
def layout(tmp_path_factory):
    return _layout(tmp_path_factory.mktemp("layout"), [
        "siftflow-fcn16s", "nyud-fcn32s-color", "nyud-fcn32s-color-d", "nyud-fcn32s-color-hha",
        "pascalcontext-fcn8s", "voc-fcn32s"])


def _train(layout, folder, *extra):
    out = layout / "runs" / folder
    rc = cli.main(["train", "--solver", str(layout / folder / "solver.prototxt"), "--iters", "2",
                   "--max-channels", "8", "--out", str(out), "--no-progress", *extra])
    return rc, out


@pytest.mark.parametrize("folder", ["siftflow-fcn16s", "nyud-fcn32s-color-d",
                                    "pascalcontext-fcn8s"])
def test_two_iterations_from_the_solver_on_each_layout(layout, folder, capsys):
    rc, out = _train(layout, folder)
    text = capsys.readouterr()
    assert rc == 0, text.err
    assert "training done at iteration 2" in text.out and (out / "checkpoint.npz").is_file()
    with np.load(out / "checkpoint.npz") as f:
        assert "param/conv1_1.weight" in f.files or "param/conv1_1_bgrd.weight" in f.files
    assert read_solver(str(layout / folder / "solver.prototxt")).lr(5) == \
        pytest.approx({"siftflow-fcn16s": 1e-12, "nyud-fcn32s-color-d": 1e-10,
                       "pascalcontext-fcn8s": 1e-14}[folder])


def test_voc_solver_with_base_weights_and_the_surgery(layout, capsys, tmp_path):
    """voc-fcn32s's solver on its val net's VOC layout (--prototxt), from base weights: the
    transplant report, bilinear 'up' layers, then training."""
    net = read_net(str(layout / "voc-fcn32s" / "val.prototxt"), max_channels=8)
    base = tmp_path / "base.npz"
    net.save(str(base))
    rc, out = _train(layout, "voc-fcn32s", "--prototxt", str(layout / "voc-fcn32s" / "val.prototxt"),
                     "--weights", str(base))
    text = capsys.readouterr().out
    assert rc == 0 and "transplanted" in text and "bilinear interpolation in upscore" in text


def test_nyud_late_fusion_transplants_two_trunks_by_suffix(layout, capsys, tmp_path):
    """color-hha's solve.py: the colour net's weights into the *color trunk, the HHA net's
    into the *hha trunk (here both from one trained colour net, different per trunk)."""
    rc, out = _train(layout, "nyud-fcn32s-color")
    assert rc == 0
    ckpt = out / "checkpoint.npz"
    rc, out2 = _train(layout, "nyud-fcn32s-color-hha", "--weights", f"{ckpt}:color",
                      "--weights", f"{ckpt}:hha", "--iters", "1")
    text = capsys.readouterr().out
    assert rc == 0 and "suffix 'color'" in text and "suffix 'hha'" in text
    with np.load(ckpt) as a:
        w = a["param/conv3_1.weight"]
    with np.load(out2 / "checkpoint.npz") as b:          # lr 1e-10: a step barely moves it
        np.testing.assert_allclose(b["param/conv3_1color.weight"], w, atol=1e-6)
        np.testing.assert_allclose(b["param/conv3_1hha.weight"], w, atol=1e-6)


def test_eval_reports_what_each_paper_table_reports(layout, capsys):
    rc, out = _train(layout, "siftflow-fcn16s")
    assert rc == 0
    capsys.readouterr()
    rc = cli.main(["eval", "--prototxt", str(layout / "siftflow-fcn16s" / "test.prototxt"),
                   "--weights", str(out / "checkpoint.npz"), "--max-channels", "8"])
    text = capsys.readouterr().out
    assert rc == 0
    sem = next(line for line in text.splitlines() if line.startswith("sem:"))
    geo = next(line for line in text.splitlines() if line.startswith("geo:"))
    for metric in ("pixel acc", "mean acc", "mean IU", "f.w. IU"):
        assert metric in sem
    assert "pixel acc" in geo and "mean IU" not in geo           # table 5: geometric accuracy
