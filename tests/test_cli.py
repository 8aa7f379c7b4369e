"""The minifcn command and the training examples, on tiny settings: every verb runs, and
every mistake is one line on stderr with a non-zero exit, before any work starts."""
import json
import runpy
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from minifcn import cli
from minifcn.data import SyntheticShapes, write_voc

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
BASE = ["--model", "fcn8s_tiny", "--synthetic-size", "8", "--batch", "2", "--crop", "32", "32",
        "--no-progress"]
TINY_TRAIN = BASE + ["--iters", "3", "--val-interval", "3"]


def run(argv, capsys):
    code = cli.main(argv)
    out = capsys.readouterr()
    return code, out.out, out.err


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A checkpoint of fcn8s_tiny after 3 iterations on 8 synthetic images."""
    out = tmp_path_factory.mktemp("run")
    assert cli.main(["train", *TINY_TRAIN, "--out", str(out)]) == 0
    return out


@pytest.fixture(scope="module")
def voc(tmp_path_factory):
    root = tmp_path_factory.mktemp("voc")
    write_voc(SyntheticShapes(4, seed=1, size=(40, 48)), root, "train")
    write_voc(SyntheticShapes(2, seed=2, size=(40, 48)), root, "val")
    return root


def test_train_writes_outputs_and_resumes(trained, capsys):
    for name in ("checkpoint.npz", "log.jsonl", "curves.png"):
        assert (trained / name).exists(), name
    assert not (trained / "train.lock").exists()             # released at the end
    records = [json.loads(line) for line in open(trained / "log.jsonl")]
    assert any("val_mean_iu" in r for r in records) and records[-1]["iter"] == 3
    code, out, _ = run(["train", *BASE, "--iters", "5", "--val-interval", "5", "--out",
                        str(trained), "--resume"], capsys)
    assert code == 0 and "resumed from" in out and "at iteration 3" in out
    assert "mean IU" in out and "iteration 5" in out


def test_eval_and_predict(trained, tmp_path, capsys):
    code, out, _ = run(["eval", "--num-classes", "5", "--weights",
                        str(trained / "checkpoint.npz"), "--synthetic-size", "8",
                        "--overlays", str(tmp_path / "ov"), "--n-overlays", "2"], capsys)
    assert code == 0 and "mean IU" in out and "f.w. IU" in out
    assert len(list((tmp_path / "ov").glob("*.png"))) == 2
    images = []
    for i, size in enumerate([(37, 53), (64, 40)]):           # any size in
        path = tmp_path / f"img{i}.png"
        Image.fromarray(SyntheticShapes(1, seed=i, size=64)[0][0][:size[0], :size[1]]).save(path)
        images.append(str(path))
    code, out, _ = run(["predict", "--weights", str(trained / "checkpoint.npz"), "--out",
                        str(tmp_path / "pred"), *images], capsys)
    assert code == 0
    mask = Image.open(tmp_path / "pred" / "img0.png")
    assert mask.mode == "P" and mask.size == (53, 37)          # same size out, palette PNG
    assert (tmp_path / "pred" / "img1_overlay.png").exists()


def test_predict_reports_images_per_second(trained, tmp_path, capsys):
    images = []
    for i, size in enumerate([(37, 53), (40, 40), (37, 53)]):
        path = tmp_path / f"m{i}.png"
        Image.fromarray(SyntheticShapes(1, seed=i, size=64)[0][0][:size[0], :size[1]]).save(path)
        images.append(str(path))
    code, out, _ = run(["predict", "--weights", str(trained / "checkpoint.npz"), "--out",
                        str(tmp_path / "p"), *images], capsys)
    assert code == 0 and "3 images in" in out and "images/s" in out


def test_train_with_workers_logs_the_same_losses(trained, tmp_path, capsys):
    code, _, _ = run(["train", *TINY_TRAIN, "--workers", "2", "--out", str(tmp_path)], capsys)
    assert code == 0
    logs = [[r.get("loss") for r in map(json.loads, open(d / "log.jsonl")) if "loss" in r]
            for d in (trained, tmp_path)]
    n = min(map(len, logs))            # the fixture's run may have been resumed further
    assert n and logs[0][:n] == logs[1][:n]


def test_train_on_a_voc_directory(voc, tmp_path, capsys):
    code, out, err = run(["train", "--data", str(voc), "--num-classes", "5", "--iters", "2",
                          "--val-interval", "2", "--no-progress", "--out", str(tmp_path)],
                         capsys)
    assert code == 0, err
    assert "mean IU" in out


def test_rf_verb(capsys):
    code, out, _ = run(["rf", "fcn8s", "--size", "500", "500"], capsys)
    assert code == 0
    score_fr = next(line for line in out.splitlines() if line.startswith("score_fr "))
    assert " 404 " in score_fr and " 32 " in score_fr
    assert "offset 31" in out and "offset 9" in out and "offset 5" in out


@pytest.mark.parametrize("argv,code,words", [
    (["train", "--iters", "0"], 2, ["minifcn train: error: argument --iters: must be >= 1"]),
    (["train", "--model", "nope"], 2, ["unknown model 'nope'"]),
    (["train", "--bogus"], 2, ["unrecognized arguments: --bogus"]),
    (["train", "--data", "/no/such/dir"], 1, ["/no/such/dir", "does not exist"]),
    (["eval", "--weights", "/no/such.npz"], 1, ["/no/such.npz"]),
    (["predict", "--weights", "x.npz", "/no/img.png"], 1, ["/no/img.png"]),
    (["train", "--device", "tpu"], 2, ["invalid choice: 'tpu'"]),
    ([], 2, ["required"]),
])
def test_mistakes_are_one_line(argv, code, words, capsys):
    got, out, err = run(argv, capsys)
    assert got == code
    assert len(err.strip().splitlines()) == 1, err
    for w in words:
        assert w in err, err


def test_bad_dataset_is_refused_before_training(voc, tmp_path, capsys):
    bad = tmp_path / "bad"
    import shutil
    shutil.copytree(voc, bad)
    label = next((bad / "SegmentationClass").glob("*.png"))
    arr = np.array(Image.open(label))
    arr[0, 0] = 9                                                   # a class that does not exist
    img = Image.fromarray(arr, mode="P")
    img.putpalette(Image.open(label).getpalette())
    img.save(label)
    code, out, err = run(["train", "--data", str(bad), "--num-classes", "5", "--out",
                          str(tmp_path / "run")], capsys)
    assert code == 1 and label.name in err and "9" in err
    assert not (tmp_path / "run").exists()                         # nothing was started


def test_console_script_help():
    for verb in ("train", "eval", "predict", "rf", "bench"):
        r = subprocess.run([sys.executable, "-m", "minifcn.cli", verb, "--help"],
                           capture_output=True, text=True, timeout=60)
        assert r.returncode == 0 and "usage: minifcn" in r.stdout, r.stderr


# ----------------------------------------------------------------------------- examples
def example(name):
    return runpy.run_path(str(EXAMPLES / f"{name}.py"), run_name="example")["main"]


def test_example_train_synthetic_evaluate_predict(tmp_path):
    scores = example("train_synthetic")(["--iters", "2", "--batch", "2", "--crop", "32",
                                         "--n-train", "4", "--n-val", "2", "--out",
                                         str(tmp_path)])
    assert 0 <= scores["mean_iu"] <= 1
    ckpt = str(tmp_path / "checkpoint.npz")
    scores = example("evaluate")(["--weights", ckpt])
    assert scores["confusion"].hist.sum() > 0
    img = tmp_path / "x.png"
    Image.fromarray(SyntheticShapes(1, seed=5, size=48)[0][0][:33, :41]).save(img)
    masks = example("predict")([str(img), "--weights", ckpt, "--out", str(tmp_path / "p")])
    assert masks[str(img)].shape == (33, 41)


def test_example_staged_voc_recipe(voc, tmp_path):
    scores = example("train_voc_staged")(["--data", str(voc), "--num-classes", "5",
                                          "--backbone", "tiny", "--iters", "1", "--out",
                                          str(tmp_path)])
    assert {"fcn32s", "fcn16s", "fcn8s"} <= {p.name for p in tmp_path.iterdir()}
    assert 0 <= scores["mean_iu"] <= 1
