"""`make demo` (minifcn.demo) on a tiny schedule: a fixed, seeded run gives the same weights
and scores bit for bit when run again and with one thread instead of two, and writes its
pictures as PNGs."""
import json

import numpy as np
import numba
import pytest
from PIL import Image
from threadpoolctl import threadpool_limits

from minifcn import demo, train

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
    # validated during the run (every 4 // 5 -> 1 step from step 2 on) and at its last step
    assert val and val[-1]["iter"] == 4 and val[-1]["val_mean_iu"] == scores["mean_iu"]


@pytest.mark.parametrize("blas_threads", [1, None])
def test_demo_with_one_numba_thread_is_bit_for_bit(first, tmp_path, capsys, blas_threads):
    """Small ops run on one thread of each pool whatever the counts (kernels/cpu/threads.py),
    so the tiny net's float sums, and with them the seeded result, do not depend on them.
    blas_threads=None keeps OpenBLAS's own count: the case that once split small GEMMs."""
    _, weights, scores = first
    before = numba.get_num_threads()
    numba.set_num_threads(1)
    try:
        with threadpool_limits(blas_threads):
            one, scores1, _ = _run(tmp_path, capsys)
    finally:
        numba.set_num_threads(before)
    assert scores1 == scores
    for k in weights:
        assert np.array_equal(one[k], weights[k]), k


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
    # the checkpoint names its model and classes, so `minifcn eval --weights` needs no more
    info = train.describe(str(out / "checkpoint.npz"))
    assert info["name"] == "fcn8s_tiny" and info["num_classes"] == 5
    assert info["class_names"] == list(scores["per_class_iu"])


def test_demo_minutes_flag_is_gone(capsys):
    with pytest.raises(SystemExit) as e:
        demo.main(["--minutes", "2"])
    assert e.value.code == 2 and "fixed, seeded schedule" in capsys.readouterr().err
