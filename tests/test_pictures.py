"""Pictures drawn with matplotlib (minifcn.viz), eval's --json and --plots, and what
`minifcn train` does with --seed and its final validation."""
import json

import numpy as np
import pytest
from PIL import Image

from minifcn import cli, train, viz
from minifcn.data import SHAPE_CLASSES, SyntheticShapes

BASE = ["--model", "fcn8s_tiny", "--synthetic-size", "8", "--batch", "2", "--crop", "32", "32",
        "--no-progress"]


def _png(path, min_side=200):
    with Image.open(path) as im:
        assert im.format == "PNG" and min(im.size) >= min_side, (path, im.size)
        im.verify()
        return im.size


def _colour(path, rgb):
    """How many pixels have this colour (a curve's: matplotlib's tab:blue, tab:orange)."""
    a = np.asarray(Image.open(path).convert("RGB")).astype(int)
    return int((np.abs(a - rgb).sum(-1) < 30).sum())


def test_curves_draw_every_panel(tmp_path):
    hist = [{"iter": i, "loss": 2.0 / i, "lr": 1e-3 * (1 - i / 40)} for i in range(10, 41, 10)]
    viz.save_curves(hist, tmp_path / "no_val.png")
    hist.append({"iter": 40, "val_loss": 0.5, "val_mean_iu": 0.6})       # one validation
    viz.save_curves(hist, tmp_path / "one_val.png")
    assert _png(tmp_path / "one_val.png") == _png(tmp_path / "no_val.png")
    for rgb in ((31, 119, 180), (255, 127, 14)):      # val mean IU, val loss: the point shows
        assert _colour(tmp_path / "no_val.png", rgb) == 0
        assert _colour(tmp_path / "one_val.png", rgb) > 20
    assert _colour(tmp_path / "no_val.png", (214, 39, 40)) > 100      # training loss curve


def test_overlay_confusion_and_class_iu(tmp_path):
    img, label = SyntheticShapes(1, seed=3, num_classes=5)[0]
    pred = np.where(label == 255, 0, label)
    viz.save_overlay(img, pred, tmp_path / "o.png", truth=label, class_names=SHAPE_CLASSES[:5])
    viz.save_overlay(img, pred, tmp_path / "p.png")                      # predict: 2 panels
    w3, _ = _png(tmp_path / "o.png")
    w2, _ = _png(tmp_path / "p.png")
    assert w3 > w2
    hist = np.arange(25).reshape(5, 5)
    viz.save_confusion(hist, tmp_path / "c.png", SHAPE_CLASSES[:5])
    viz.save_class_iu([0.9, np.nan, 0.5, 0.1, 0.3], tmp_path / "i.png")
    _png(tmp_path / "c.png")
    _png(tmp_path / "i.png")
    assert not list(tmp_path.glob(".*.tmp"))                             # written atomically


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    out = tmp_path_factory.mktemp("run")
    assert cli.main(["train", *BASE, "--iters", "2", "--val-interval", "2", "--out",
                     str(out)]) == 0
    return out


def test_eval_json_and_plots(trained, tmp_path, capsys):
    js, plots = tmp_path / "sub" / "scores.json", tmp_path / "plots"
    assert cli.main(["eval", "--num-classes", "5", "--weights", str(trained / "checkpoint.npz"),
                     "--synthetic-size", "8", "--json", str(js), "--plots", str(plots)]) == 0
    printed = capsys.readouterr().out
    s = json.loads(js.read_text())
    hist = np.array(s["confusion"])
    assert hist.shape == (5, 5) and hist.sum() > 0
    assert list(s["per_class_iu"]) == list(SHAPE_CLASSES[:5]) == s["class_names"]
    assert s["pixel_acc"] == pytest.approx(np.trace(hist) / hist.sum())
    with np.errstate(invalid="ignore"):             # a class never seen: 0/0, left out
        iu = np.diag(hist) / (hist.sum(0) + hist.sum(1) - np.diag(hist))
    assert s["mean_iu"] == pytest.approx(np.nanmean(iu))
    assert f"{100 * s['mean_iu']:6.1f}" in printed                   # the table's number
    _png(plots / "confusion.png")
    _png(plots / "per_class_iu.png")


def test_eval_json_and_plots_paths_checked_before_evaluating(trained, tmp_path, capsys, monkeypatch):
    calls = []
    monkeypatch.setattr(train, "evaluate", lambda *a, **k: calls.append(1))
    blocker = tmp_path / "a_file"
    blocker.write_text("x")
    for flag, path in (("--json", blocker / "s.json"), ("--json", tmp_path),
                       ("--plots", blocker)):
        code = cli.main(["eval", "--num-classes", "5", "--weights",
                         str(trained / "checkpoint.npz"), "--synthetic-size", "8", flag,
                         str(path)])
        err = capsys.readouterr().err
        assert code == 2 and flag in err and str(path) in err and "Traceback" not in err
    assert calls == []                                  # refused before any evaluation


def _weights(out):
    with np.load(out / "checkpoint.npz", allow_pickle=False) as f:
        return {k: f[k] for k in f.files if k.startswith("param/")}


def test_seed_reaches_weight_initialisation(tmp_path):
    runs = {}
    for name, seed in (("a", 5), ("b", 5), ("c", 6)):
        assert cli.main(["train", *BASE, "--iters", "1", "--val-split", "", "--lr", "1e-30",
                         "--seed", str(seed), "--out", str(tmp_path / name)]) == 0
        runs[name] = _weights(tmp_path / name)
    # lr 1e-30: the checkpoint holds the initial weights (to float32 rounding)
    assert all(np.array_equal(runs["a"][k], runs["b"][k]) for k in runs["a"])
    w = "param/conv1_1.weight"
    assert w in runs["a"] and not np.allclose(runs["a"][w], runs["c"][w])


def test_train_validates_once_at_the_end(tmp_path, monkeypatch, capsys):
    calls, real = [], train.evaluate

    def counting(*args, **kw):
        calls.append(1)
        return real(*args, **kw)
    monkeypatch.setattr(train, "evaluate", counting)
    assert cli.main(["train", *BASE, "--iters", "4", "--val-interval", "2", "--out",
                     str(tmp_path)]) == 0
    assert len(calls) == 2                              # at steps 2 and 4, not again after
    assert "mean IU" in capsys.readouterr().out
