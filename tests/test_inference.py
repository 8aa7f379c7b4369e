"""The two-line API (minifcn.load, model.predict) and what predict and eval read from a
self-describing checkpoint: images of every kind in, refusals by name, > 255 classes in
16-bit masks, a folder of images, outputs that cannot collide, memory checked up front."""
import numpy as np
import pytest
from PIL import Image

import minifcn
from minifcn import cli, inference, models, train

DESCRIPTION = {"name": "fcn8s_tiny", "num_classes": 5,
               "class_names": ["bg", "disc", "rect", "tri", "ring"],
               "preprocess": {"mean": [10.0, 20.0, 30.0], "channels": "BGR", "scale": 1.0}}


def _checkpoint(path, num_classes=5, model=DESCRIPTION, bias_class=None):
    net = models.build("fcn8s_tiny", num_classes=num_classes, loss=True)
    if bias_class is not None:           # one class wins everywhere the scores reach
        b = np.zeros(num_classes, np.float32)
        b[bias_class] = 5.0
        net.set_param("score_fr.bias", b)
    train.save_checkpoint(path, net, train.make_solver(net, "sgd", lr=1e-3), model=model)
    return path


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    return _checkpoint(tmp_path_factory.mktemp("ck") / "checkpoint.npz")


@pytest.fixture(scope="module")
def photo(tmp_path_factory):
    rgb = np.random.default_rng(0).integers(0, 256, (21, 26, 3), dtype=np.uint8)
    path = tmp_path_factory.mktemp("img") / "photo.png"
    Image.fromarray(rgb).save(path)
    return path, rgb


def test_two_lines_from_a_checkpoint_to_a_mask(ckpt, photo):
    path, rgb = photo
    model = minifcn.load(ckpt)
    assert model.num_classes == 5 and model.class_names == DESCRIPTION["class_names"]
    assert model.preprocess == DESCRIPTION["preprocess"]
    mask = model.predict(str(path))
    assert mask.shape == rgb.shape[:2] and mask.dtype == np.int64
    np.testing.assert_array_equal(model.predict(Image.open(path)), mask)
    np.testing.assert_array_equal(model.predict(rgb), mask)
    p = model.predict_proba(rgb)
    assert p.shape == (5,) + rgb.shape[:2]
    np.testing.assert_allclose(p.sum(axis=0), 1, atol=1e-5)
    np.testing.assert_array_equal(p.argmax(axis=0), mask)
    m2, p2 = model.predict(rgb, probabilities=True)
    np.testing.assert_array_equal(m2, mask)
    np.testing.assert_array_equal(p2, p)
    # the checkpoint's preprocessing is the one applied: BGR minus its mean
    x = model._input(rgb)[0]
    np.testing.assert_allclose(x[0], rgb[:, :, 2] - 10.0)
    np.testing.assert_allclose(x[2], rgb[:, :, 0] - 30.0)


@pytest.mark.parametrize("image,words", [
    (np.zeros((4, 5), np.uint8), "2 dimensions"),
    (np.zeros((4, 5, 4), np.uint8), "got 4"),
    (np.zeros((4, 5, 3), np.float32), "float32"),
    ([[1, 2, 3]], "list"),
])
def test_predict_refuses_other_inputs_by_name(image, words, ckpt):
    model = minifcn.load(ckpt)
    with pytest.raises((TypeError, ValueError), match=words):
        model.predict(image)


def test_load_says_what_is_missing_or_contradicts(ckpt, tmp_path):
    plain = tmp_path / "plain.npz"
    models.build("fcn8s_tiny", num_classes=5, loss=False).save(plain)
    with pytest.raises(ValueError, match="give model="):
        minifcn.load(plain)
    with pytest.raises(ValueError, match="give num_classes="):
        minifcn.load(plain, model="fcn8s_tiny")
    assert minifcn.load(plain, model="fcn8s_tiny", num_classes=5).num_classes == 5
    with pytest.raises(ValueError, match="num_classes 7 contradicts .* 5 classes"):
        minifcn.load(ckpt, num_classes=7)
    with pytest.raises(ValueError, match="model fcn8s contradicts"):
        minifcn.load(ckpt, model="fcn8s")


def test_forward_bytes_is_what_a_forward_pass_keeps(ckpt):
    model = minifcn.load(ckpt)
    rgb = np.zeros((33, 41, 3), np.uint8)
    model.net.forward(data=model._input(rgb), until="score")      # keep-all
    kept = sum(v.nbytes for v in model.net.blobs.values())
    params = sum(v.nbytes for v in model.net.params().values())
    assert inference.forward_bytes(model.net, (33, 41)) == kept + params


def test_a_model_holds_no_activations_between_images(ckpt, photo):
    """predict's forward drops each blob once read and then what the layers saved for a
    backward (none follows): the same mask as a keep-all forward, and nothing left behind
    but the image and the scores; a backward then asks for a forward."""
    _, rgb = photo
    model = minifcn.load(ckpt)
    mask = model.predict(rgb)
    net = model.net
    assert set(net.blobs) == {"data", "score"}
    assert all(getattr(layer, k, None) is None for layer in net.layers.values()
               for k in layer.saved)
    with pytest.raises(ValueError, match="needs forward again"):
        net.backward({"score": np.ones_like(net.blobs["score"])})
    scores = net.forward(data=model._input(rgb), until="score")
    np.testing.assert_array_equal(scores.argmax(axis=1)[0], mask)


def run(argv, capsys):
    code = cli.main(argv)
    out = capsys.readouterr()
    return code, out.out, out.err


def _one_line(code, err, *words):
    assert code != 0 and len(err.strip().splitlines()) == 1 and "Traceback" not in err, err
    for w in words:
        assert w in err, (w, err)


def test_an_image_too_big_for_memory_is_refused_with_the_estimate(ckpt, photo, tmp_path,
                                                                 monkeypatch, capsys):
    path, _ = photo
    need = inference.forward_bytes(minifcn.load(ckpt).net, (21, 26))
    monkeypatch.setattr(inference, "available_bytes", lambda device: need - 1)
    code, _, err = run(["predict", "--weights", str(ckpt), str(path), "--out",
                        str(tmp_path / "o")], capsys)
    _one_line(code, err, str(path), "26x21", "GiB", "more than")
    assert not (tmp_path / "o").exists()
    monkeypatch.setattr(inference, "available_bytes", lambda device: need)
    assert minifcn.load(ckpt).predict(str(path)).shape == (21, 26)


def test_predict_and_eval_read_the_checkpoint(ckpt, photo, tmp_path, capsys):
    path, _ = photo
    code, out, err = run(["predict", "--weights", str(ckpt), str(path), "--out",
                          str(tmp_path / "o")], capsys)       # no --model, no --num-classes
    assert code == 0, err
    mask = np.asarray(Image.open(tmp_path / "o" / "photo.png"))
    np.testing.assert_array_equal(mask, minifcn.load(ckpt).predict(str(path)))
    code, out, err = run(["eval", "--weights", str(ckpt), "--synthetic-size", "4"], capsys)
    assert code == 0 and "mean IU" in out and "ring" in out, err    # its class names
    code, _, err = run(["eval", "--weights", str(ckpt), "--num-classes", "6",
                        "--synthetic-size", "4"], capsys)
    _one_line(code, err, "--num-classes 6", str(ckpt), "5 classes")
    code, _, err = run(["predict", "--weights", str(ckpt), "--model", "fcn16s_tiny",
                        str(path), "--out", str(tmp_path / "p")], capsys)
    _one_line(code, err, "--model fcn16s_tiny", str(ckpt))
    assert not (tmp_path / "p").exists()


def test_predict_never_defaults_the_class_count(tmp_path, photo, capsys):
    path, _ = photo
    plain = tmp_path / "plain.npz"
    models.build("fcn8s_tiny", num_classes=5, loss=False).save(plain)
    code, _, err = run(["predict", "--model", "fcn8s_tiny", "--weights", str(plain),
                        str(path), "--out", str(tmp_path / "o")], capsys)
    _one_line(code, err, "--num-classes", str(plain))
    assert not (tmp_path / "o").exists()


def test_more_than_255_classes_write_16_bit_masks(tmp_path, photo, capsys):
    path, rgb = photo
    ck = _checkpoint(tmp_path / "c.npz", 300, {"name": "fcn8s_tiny", "num_classes": 300},
                     bias_class=299)
    code, out, err = run(["predict", "--weights", str(ck), str(path), "--out",
                          str(tmp_path / "o")], capsys)
    assert code == 0, err
    mask = Image.open(tmp_path / "o" / "photo.png")
    assert mask.mode.startswith("I;16")
    got = np.asarray(mask)
    np.testing.assert_array_equal(got, minifcn.load(ck).predict(rgb))
    assert got.max() == 299                     # would be 43 in a uint8 mask


def test_a_folder_of_images_and_colliding_stems(ckpt, tmp_path, capsys):
    rgb = np.full((12, 14, 3), 50, np.uint8)
    for sub, names in (("a", ["x.png", "y.jpg"]), ("b", ["x.png"])):
        (tmp_path / sub).mkdir()
        for n in names:
            Image.fromarray(rgb).save(tmp_path / sub / n)
    (tmp_path / "a" / "notes.txt").write_text("not an image")
    code, out, err = run(["predict", "--weights", str(ckpt), str(tmp_path / "a"), "--out",
                          str(tmp_path / "o")], capsys)
    assert code == 0, err
    assert sorted(p.name for p in (tmp_path / "o").glob("*.png")) == \
        ["x.png", "x_overlay.png", "y.png", "y_overlay.png"]
    code, _, err = run(["predict", "--weights", str(ckpt), str(tmp_path / "a"),
                        str(tmp_path / "b" / "x.png"), "--out", str(tmp_path / "o2")], capsys)
    _one_line(code, err, "a/x.png", "b/x.png", "both write")
    assert not (tmp_path / "o2").exists()
    (tmp_path / "empty").mkdir()
    code, _, err = run(["predict", "--weights", str(ckpt), str(tmp_path / "empty"), "--out",
                        str(tmp_path / "o3")], capsys)
    _one_line(code, err, "holds no image files")


def test_the_output_folder_is_checked_before_work(ckpt, photo, tmp_path, capsys):
    path, _ = photo
    (tmp_path / "file").write_text("x")
    code, _, err = run(["predict", "--weights", str(ckpt), str(path), "--out",
                        str(tmp_path / "file")], capsys)
    _one_line(code, err, "--out", "is a file")


def test_bad_images_through_predict_are_one_line(ckpt, tmp_path, monkeypatch, capsys):
    bomb = tmp_path / "bomb.png"
    Image.new("L", (15, 15)).save(bomb)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)
    code, _, err = run(["predict", "--weights", str(ckpt), str(bomb), "--out",
                        str(tmp_path / "o")], capsys)
    _one_line(code, err, str(bomb), "decompression bomb")
    assert not (tmp_path / "o").exists()


def test_training_writes_a_self_describing_checkpoint(tmp_path, capsys):
    code, _, err = run(["train", "--synthetic-size", "4", "--batch", "2", "--crop", "32", "32",
                        "--iters", "1", "--val-split", "", "--no-progress", "--out",
                        str(tmp_path)], capsys)
    assert code == 0, err
    d = train.describe(tmp_path / "checkpoint.npz")
    assert d["name"] == "fcn8s_tiny" and d["num_classes"] == 5
    assert d["class_names"][0] == "background" and len(d["class_names"]) == 5
    assert d["preprocess"]["channels"] == "BGR" and len(d["preprocess"]["mean"]) == 3
