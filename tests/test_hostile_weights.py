"""Hostile or broken weight files, through every verb that reads one and through the Python
API: each is refused with one line naming the file (and the array), exit 1, no traceback, no
output left behind."""
import json
import pickle
import zipfile

import numpy as np
import pytest
from PIL import Image

import minifcn
from minifcn import cli, models, train
from minifcn.files import BadFileError
from minifcn.weights import UnsafePickleError, load_weights

DESCRIPTION = {"name": "fcn8s_tiny", "num_classes": 5,
               "class_names": ["bg", "disc", "rect", "tri", "ring"],
               "preprocess": {"mean": [10.0, 20.0, 30.0], "channels": "BGR", "scale": 1.0}}


def checkpoint_arrays(num_classes=5, model=DESCRIPTION):
    """The arrays of a real training checkpoint of fcn8s_tiny (written by save_checkpoint)."""
    net = models.build("fcn8s_tiny", num_classes=num_classes, loss=True)
    return net, train.make_solver(net, "sgd", lr=1e-3), model


@pytest.fixture(scope="module")
def good(tmp_path_factory):
    path = tmp_path_factory.mktemp("good") / "checkpoint.npz"
    net, solver, model = checkpoint_arrays()
    train.save_checkpoint(path, net, solver, model=model)
    return path


def _with(good, tmp, name, **change):
    """A copy of the good checkpoint with some arrays replaced (None: removed)."""
    with np.load(good) as f:
        arrays = {k: f[k] for k in f.files}
    for k, v in change.items():
        k = k.replace("__", "/").replace("_DOT_", ".")
        if v is None:
            arrays.pop(k)
        else:
            arrays[k] = v
    path = tmp / name
    np.savez(path, **arrays)
    return path


def _malicious_pth(path):
    """A torch zip whose pickle calls os.system when unpickled by pickle's own loader."""
    class Evil:
        def __reduce__(self):
            import os
            return os.system, ("echo pwned",)
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("archive/data.pkl", pickle.dumps(Evil(), protocol=2))


def make_bad(kind, good, tmp):
    """(path, words the one-line error must hold besides the path)."""
    raw = good.read_bytes()
    path = tmp / f"{kind}.npz"
    if kind == "empty":
        path.write_bytes(b"")
        return path, ["empty"]
    if kind == "truncated":
        path.write_bytes(raw[: len(raw) // 2])
        return path, ["damaged or truncated"]
    if kind == "bitflip":                      # a byte inside the largest stored array
        with zipfile.ZipFile(good) as zf:
            big = max(zf.infolist(), key=lambda i: i.file_size)
        at = big.header_offset + 30 + len(big.filename) + big.file_size - 7
        flipped = bytearray(raw)
        flipped[at] ^= 0x10
        path.write_bytes(bytes(flipped))
        return path, ["CRC"]
    if kind == "text":
        path.write_text("these are not weights\n")
        return path, ["text"]
    if kind == "npy":
        with open(path, "wb") as f:
            np.save(f, np.zeros(3, np.float32))
        return path, [".npy"]
    if kind == "object":
        np.savez(path, **{"conv1_1.weight": np.array([{"a": 1}], dtype=object)})
        return path, ["conv1_1.weight", "pickle"]
    if kind == "string":
        return _with(good, tmp, "string.npz", param__score_fr_DOT_weight=np.array(["x"])), \
            ["param/score_fr.weight", "<U1"]
    if kind == "info_empty":
        return _with(good, tmp, "ie.npz", info=np.array("{}")), ["'info'", "'iter'"]
    if kind == "info_list":
        return _with(good, tmp, "il.npz", info=np.array("[1, 2]")), ["'info'", "list"]
    if kind == "info_garbage":
        return _with(good, tmp, "ig.npz", info=np.frombuffer(b"\xff\xfe\x00garbage", np.uint8)), \
            ["'info'", "uint8"]
    if kind == "info_bad_model":
        info = json.loads(str(np.load(good)["info"]))
        info["model"]["num_classes"] = "five"
        return _with(good, tmp, "im.npz", info=np.array(json.dumps(info))), ["num_classes"]
    if kind == "all_nan":
        with np.load(good) as f:
            w = f["param/score_fr.weight"]
        return _with(good, tmp, "nan.npz", param__score_fr_DOT_weight=np.full_like(w, np.nan)), \
            ["param/score_fr.weight", "non-finite"]
    if kind == "one_inf":
        with np.load(good) as f:
            b = f["param/conv1_1.bias"].copy()
        b[0] = np.inf
        return _with(good, tmp, "inf.npz", param__conv1_1_DOT_bias=b), \
            ["param/conv1_1.bias", "1 non-finite"]
    if kind == "pth":
        path = tmp / "evil.pth"
        _malicious_pth(path)
        return path, ["refused global", "system"]
    if kind == "caffemodel":
        path = tmp / "bad.caffemodel"
        path.write_bytes(b"\x0a\xff\xff")              # field 1, a length that runs off the end
        return path, ["byte"]
    raise AssertionError(kind)


KINDS = ["empty", "truncated", "bitflip", "text", "npy", "object", "string", "info_empty",
         "info_list", "info_garbage", "info_bad_model", "all_nan", "one_inf", "pth",
         "caffemodel"]
CHECKPOINT_ONLY = {"info_empty", "info_list", "info_garbage", "info_bad_model"}


@pytest.fixture(scope="module")
def bad_files(good, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("bad")
    return {k: make_bad(k, good, tmp) for k in KINDS}


@pytest.fixture(scope="module")
def image(tmp_path_factory):
    path = tmp_path_factory.mktemp("img") / "photo.png"
    Image.fromarray(np.full((20, 24, 3), 90, np.uint8)).save(path)
    return path


def _verbs(path, out, image):
    tiny = ["--synthetic-size", "4", "--batch", "2", "--crop", "32", "32", "--iters", "1",
            "--no-progress", "--out", str(out)]
    yield "train --weights", ["train", *tiny, "--weights", str(path)]
    yield "train --resume", ["train", *tiny, "--resume", str(path)]
    yield "eval", ["eval", "--model", "fcn8s_tiny", "--weights", str(path), "--synthetic-size", "4", "--overlays",
                   str(out)]
    yield "predict", ["predict", "--model", "fcn8s_tiny", "--num-classes", "5", "--weights",
                      str(path), str(image), "--out", str(out)]
    yield "convert", ["convert", str(path), str(out / "w.npz"), "--model", "fcn8s_tiny",
                      "--num-classes", "5"]


def _refused(argv, path, words, out, capsys):
    code = cli.main(argv)
    err = capsys.readouterr().err
    assert code == 1, err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err, err
    assert str(path) in err, err
    for w in words:
        assert w in err, (w, err)
    assert not out.exists() or not any(out.iterdir()), list(out.iterdir())


# Every verb reads weights through one door (weights.load_weights, train.load_checkpoint,
# both on files.read_npz): a few kinds through each verb, every kind through predict and eval
# (the cheapest verbs) and through the Python API below.
@pytest.mark.parametrize("kind", ["truncated", "bitflip", "info_garbage", "all_nan", "pth"])
def test_every_verb_refuses_a_bad_weights_file_in_one_line(kind, bad_files, image, tmp_path,
                                                           capsys):
    path, words = bad_files[kind]
    for verb, argv in _verbs(path, tmp_path / "out", image):
        said = words
        if kind == "pth" and verb == "train --resume":
            said = ["not an .npz", ".pth"]         # a zip, but no checkpoint: nothing unpickled
        _refused(argv, path, said, tmp_path / "out", capsys)


@pytest.mark.parametrize("kind", KINDS)
def test_predict_and_eval_refuse_every_kind_of_bad_file(kind, bad_files, image, tmp_path,
                                                        capsys):
    path, words = bad_files[kind]
    for verb, argv in list(_verbs(path, tmp_path / "out", image))[2:4]:
        _refused(argv, path, words, tmp_path / "out", capsys)


@pytest.mark.parametrize("kind", KINDS)
def test_the_python_api_refuses_a_bad_weights_file(kind, bad_files):
    path, words = bad_files[kind]
    net = models.build("fcn8s_tiny", num_classes=5, loss=False)
    expected = UnsafePickleError if kind == "pth" else ValueError
    with pytest.raises(expected) as e:
        load_weights(net, path)
    assert str(path) in str(e.value) and all(w in str(e.value) for w in words), str(e.value)
    with pytest.raises(ValueError) as e:
        minifcn.load(path, model="fcn8s_tiny", num_classes=5)
    assert str(path) in str(e.value)
    if kind not in CHECKPOINT_ONLY | {"pth", "caffemodel"}:
        with pytest.raises(BadFileError):
            net.load(path)                      # Net.load reads through the same check


def test_net_load_on_a_training_checkpoint_says_what_to_call(good):
    net = models.build("fcn8s_tiny", num_classes=5, loss=False)
    with pytest.raises(BadFileError) as e:
        net.load(good)
    assert str(good) in str(e.value) and "minifcn.load(path)" in str(e.value)
    assert "load_weights(net, path)" in str(e.value)
    load_weights(net, good)                     # what it says works
    with np.load(good) as f:
        np.testing.assert_array_equal(net.params()["score_fr.weight"],
                                      f["param/score_fr.weight"])


def test_a_good_checkpoint_describes_itself(good):
    assert train.describe(good) == DESCRIPTION
    plain = good.parent / "plain.npz"
    net = models.build("fcn8s_tiny", num_classes=5, loss=False)
    net.save(plain)
    assert train.describe(plain) == {}


@pytest.mark.parametrize("kind", ["pth", "empty", "text"])
def test_train_vgg16_refuses_a_bad_torch_file(kind, bad_files, tmp_path, capsys):
    path, words = bad_files[kind]
    argv = ["train", "--model", "fcn32s_tiny", "--synthetic-size", "4", "--iters", "1",
            "--no-progress", "--out", str(tmp_path / "out"), "--vgg16", str(path)]
    _refused(argv, path, words if kind != "text" else ["torch"], tmp_path / "out", capsys)
