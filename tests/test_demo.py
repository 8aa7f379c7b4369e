"""`make demo` (minifcn.demo) on a tiny schedule: a fixed, seeded run gives the same weights
and scores bit for bit when run again, nearly the same with one thread (Numba and BLAS)
instead of two, and writes its pictures as PNGs."""
import json

import numpy as np
import numba
import pytest
from PIL import Image
from threadpoolctl import threadpool_limits

from minifcn import demo

TINY = ["--steps", "4", "--n-train", "6", "--n-val", "3", "--batch", "2", "--crop", "32",
        "--n-overlays", "2"]
PICTURES = ["curves.png", "confusion.png", "per_class_iu.png", "overlays/val_000.png",
            "overlays/val_001.png"]


def _run(out, capsys):
    assert demo.main([*TINY, "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    with np.load(out / "checkpoint.npz", allow_pickle=False) as f:
        weights = {k: f[k] for k in f.files if k.startswith("param/")}
    return weights, json.loads((out / "scores.json").read_text()), printed


@pytest.fixture(scope="module")
def first(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo")
    assert demo.main([*TINY, "--out", str(out)]) == 0
    with np.load(out / "checkpoint.npz", allow_pickle=False) as f:
        weights = {k: f[k] for k in f.files if k.startswith("param/")}
    return out, weights, json.loads((out / "scores.json").read_text())


def test_demo_is_bit_for_bit_repeatable(first, tmp_path, capsys):
    out, weights, scores = first
    again, scores2, printed = _run(tmp_path, capsys)
    assert "4 steps" in printed and "mean IU" in printed
    assert weights.keys() == again.keys() and len(weights) > 10
    for k in weights:
        assert np.array_equal(weights[k], again[k]), k
    assert scores == scores2
    log = [json.loads(line) for line in open(out / "log.jsonl")]
    val = [r for r in log if "val_mean_iu" in r]
    # validated during the run (every 4 // 6 -> 1 step from step 2 on) and at its last step
    assert val and val[-1]["iter"] == 4 and val[-1]["val_mean_iu"] == scores["mean_iu"]


def test_demo_with_one_thread_is_within_001(first, tmp_path, capsys):
    _, weights, scores = first
    before = numba.get_num_threads()
    numba.set_num_threads(1)
    try:
        with threadpool_limits(1):
            one, scores1, _ = _run(tmp_path, capsys)
    finally:
        numba.set_num_threads(before)
    assert abs(scores1["mean_iu"] - scores["mean_iu"]) <= 0.01
    # only the order of float sums differs: the weights agree closely (not exactly; Adam
    # scales a near-zero gradient up, so a rounding difference can move one weight by ~lr)
    for k in weights:
        diff = np.linalg.norm(one[k] - weights[k])
        assert diff <= 1e-3 * np.linalg.norm(weights[k]) + 1e-6, k


def test_demo_writes_pictures_and_scores(first):
    out, _, scores = first
    for name in PICTURES:
        with Image.open(out / name) as im:
            assert im.format == "PNG" and min(im.size) >= 200, name
            im.verify()
    assert set(scores) >= {"pixel_acc", "mean_acc", "mean_iu", "fw_iu", "per_class_iu",
                           "confusion"}
    assert list(scores["per_class_iu"]) == ["background", "disc", "rectangle", "triangle",
                                            "ring"]
    hist = np.array(scores["confusion"])
    assert hist.shape == (5, 5) and hist.sum() > 0
    assert scores["pixel_acc"] == pytest.approx(np.trace(hist) / hist.sum())


def test_demo_minutes_flag_is_gone(capsys):
    with pytest.raises(SystemExit) as e:
        demo.main(["--minutes", "2"])
    assert e.value.code == 2 and "fixed, seeded schedule" in capsys.readouterr().err
