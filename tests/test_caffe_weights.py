"""Caffe .caffemodel files: written by an independent encoder (protobuf's own classes, built
from tests/caffe_proto.py) and read by minifcn, written by minifcn and read back by protobuf;
legacy spellings; truncated and malformed files; the --weights door and `minifcn predict`."""
import os

import numpy as np
import pytest

from minifcn import cli, models
from minifcn.caffe import read_net
from minifcn.caffe.caffemodel import CaffeModelError, read_blobs, read_weights, write_weights
from minifcn.weights import load_weights, read_params, weights_format

cp = pytest.importorskip("caffe_proto")
HERE = os.path.dirname(os.path.abspath(__file__))
DEPLOY = os.path.join(HERE, "fixtures", "caffe", "voc-fcn8s", "deploy.prototxt")


def _deploy(width=4):
    return read_net(DEPLOY, max_channels=width)


def encode(net, rng, packed=True, legacy=False, v1=False, double=False, skip=()):
    """A NetParameter holding random blobs for every parameter of `net` (protobuf's encoder);
    returns (bytes, {key: array})."""
    M = cp.messages(packed)
    msg, want = M["NetParameter"](name="x"), {}
    for name, layer in net.layers.items():
        if not layer.params or name in skip:
            continue
        lyr = msg.layers.add(name=name, type="CONVOLUTION") if v1 else \
            msg.layer.add(name=name, type="Convolution")
        for p, v in layer.params.items():
            a = rng.standard_normal(v.shape).astype(np.float64 if double else np.float32)
            want[f"{name}.{p}"] = a
            b = lyr.blobs.add()
            if legacy:
                shape4 = (1,) * (4 - a.ndim) + a.shape
                b.num, b.channels, b.height, b.width = shape4
            else:
                b.shape.dim.extend(a.shape)
            (b.double_data if double else b.data).extend(a.ravel().tolist())
    return msg.SerializeToString(), want


@pytest.mark.parametrize("kind", ["packed", "unpacked", "legacy-dims", "v1", "double"])
def test_a_caffemodel_from_protobuf_loads_with_every_value_equal(tmp_path, rng, kind):
    net = _deploy()
    data, want = encode(net, rng, packed=kind != "unpacked", legacy=kind == "legacy-dims",
                        v1=kind == "v1", double=kind == "double")
    path = tmp_path / "w.caffemodel"
    path.write_bytes(data)
    report = read_weights(net, str(path), strict=True)
    assert not report.missing and not report.unexpected
    if kind == "legacy-dims":           # (1, 1, 1, n) biases and (1, 1, out, in)-style shapes
        assert report.reshaped and all(k.endswith(".bias") for k, _, _ in report.reshaped)
    else:
        assert len(report.copied) == len(want)
    for key, a in want.items():
        np.testing.assert_array_equal(net.params()[key], a.astype(np.float32), err_msg=key)


def test_write_weights_is_read_back_by_protobuf_and_by_us(tmp_path, rng):
    net = _deploy()
    data, want = encode(net, rng)
    (tmp_path / "a.caffemodel").write_bytes(data)
    read_weights(net, str(tmp_path / "a.caffemodel"))
    out = tmp_path / "b.caffemodel"
    write_weights(net, str(out))
    msg = cp.messages()["NetParameter"]()
    msg.ParseFromString(out.read_bytes())
    got = {f"{lyr.name}.{p}": np.array(b.data, np.float32).reshape(tuple(b.shape.dim))
           for lyr in msg.layer for p, b in zip(("weight", "bias"), lyr.blobs)}
    assert got.keys() == want.keys()
    for k in want:
        np.testing.assert_array_equal(got[k], want[k])
    assert [lyr.type for lyr in msg.layer][:2] == ["Convolution", "Convolution"]
    assert {lyr.type for lyr in msg.layer if "up" in lyr.name} == {"Deconvolution"}
    fresh = _deploy()
    read_weights(fresh, str(out), strict=True)
    for k in want:
        np.testing.assert_array_equal(fresh.params()[k], want[k])


def test_reference_names_load_into_minifcns_own_fcn8s(tmp_path, rng):
    """A caffemodel written for the reference's deploy net loads into models.fcn8s: the
    layers have the reference's names (the point of the naming)."""
    ours = models.fcn8s_micro(num_classes=3, loss=False)
    msg = cp.messages()["NetParameter"]()
    for name, layer in ours.layers.items():
        if layer.params:
            lyr = msg.layer.add(name=name)
            for v in layer.params.values():
                b = lyr.blobs.add()
                b.shape.dim.extend(v.shape)
                b.data.extend(rng.standard_normal(v.size).astype(np.float32).tolist())
    msg.layer.add(name="accuracy_unrelated").blobs.add().data.extend([1.0])
    (tmp_path / "m.caffemodel").write_bytes(msg.SerializeToString())
    report = load_weights(ours, str(tmp_path / "m.caffemodel"))
    assert report.unexpected == ["accuracy_unrelated.0"] and not report.missing


def test_scale_constants_and_per_channel_deconvolutions(tmp_path):
    net = read_net(os.path.join(HERE, "fixtures", "caffe", "voc-fcn8s-atonce", "val.prototxt"),
                   max_channels=4)
    msg = cp.messages()["NetParameter"]()
    lyr = msg.layer.add(name="scale_pool4", type="Scale")
    lyr.blobs.add(data=[0.01] * 4).shape.dim.extend([4])
    (tmp_path / "s.caffemodel").write_bytes(msg.SerializeToString())
    assert "scale_pool4.scale" in read_weights(net, str(tmp_path / "s.caffemodel")).copied
    msg.layer[0].blobs[0].data[1] = 0.5
    (tmp_path / "s.caffemodel").write_bytes(msg.SerializeToString())
    with pytest.raises(CaffeModelError, match="Scale is the constant 0.01"):
        read_weights(net, str(tmp_path / "s.caffemodel"))


def test_missing_layers_are_reported_or_refused(tmp_path, rng):
    net = _deploy()
    data, _ = encode(net, rng, skip=("score_pool3",))
    (tmp_path / "p.caffemodel").write_bytes(data)
    report = read_weights(net, str(tmp_path / "p.caffemodel"))
    assert report.missing == ["score_pool3.weight", "score_pool3.bias"]
    with pytest.raises(CaffeModelError, match="nothing for 2 parameter"):
        read_weights(net, str(tmp_path / "p.caffemodel"), strict=True)
    wide = _deploy(width=5)
    with pytest.raises(CaffeModelError, match=r"layer 'conv1_1' blob 0 \(weight\) has shape "
                                              r"\(4, 3, 3, 3\); the net's is \(5, 3, 3, 3\)"):
        read_weights(wide, str(tmp_path / "p.caffemodel"))


def test_truncated_and_malformed_files_are_refused_with_the_byte_offset(tmp_path, rng):
    net = _deploy(width=2)
    data, _ = encode(net, rng)
    path = tmp_path / "t.caffemodel"
    for cut in (1, 7, len(data) // 3, len(data) - 1):
        path.write_bytes(data[:cut])
        with pytest.raises(CaffeModelError, match=r"t.caffemodel: byte \d+: .*truncated"):
            read_blobs(str(path))
    path.write_bytes(b"")
    with pytest.raises(CaffeModelError, match="empty"):
        read_blobs(str(path))
    path.write_bytes(b"\xff" * 12)
    with pytest.raises(CaffeModelError, match="byte 0: malformed varint"):
        read_blobs(str(path))
    path.write_bytes(b"\x0b\x00")                         # wire type 3: a group
    with pytest.raises(CaffeModelError, match="wire type 3"):
        read_blobs(str(path))
    path.write_bytes(b"\xa5\x06\x00\x00\x80\x3f")          # layer (100) as a 32-bit value
    with pytest.raises(CaffeModelError, match=r"field layer\[0\] \(100\) has wire type 32-bit"):
        read_blobs(str(path))
    # a blob whose shape needs more values than it holds
    msg = cp.messages()["NetParameter"]()
    b = msg.layer.add(name="conv1_1").blobs.add(data=[1.0, 2.0])
    b.shape.dim.extend([2, 2])
    path.write_bytes(msg.SerializeToString())
    with pytest.raises(CaffeModelError, match=r"blobs\[0\]: shape \(2, 2\) needs 4 values"):
        read_blobs(str(path))


def test_one_door_tells_formats_apart_by_content(tmp_path, rng):
    net = _deploy(width=2)
    data, want = encode(net, rng)
    (tmp_path / "weights.bin").write_bytes(data)          # no telling extension
    assert weights_format(str(tmp_path / "weights.bin")) == "caffemodel"
    params = read_params(str(tmp_path / "weights.bin"))
    assert set(params) == set(want)
    net.save(str(tmp_path / "w.npz"))
    assert weights_format(str(tmp_path / "w.npz")) == "npz"
    with pytest.raises(FileNotFoundError):
        weights_format(str(tmp_path / "nope.caffemodel"))


def test_predict_and_convert_from_the_command_line(tmp_path, rng, capsys):
    from PIL import Image
    net = _deploy(width=4)
    data, _ = encode(net, rng)
    model = tmp_path / "x.caffemodel"
    model.write_bytes(data)
    img = tmp_path / "img.jpg"
    Image.fromarray(rng.integers(0, 255, (23, 31, 3), dtype=np.uint8)).save(img)
    rc = cli.main(["predict", "--prototxt", DEPLOY, "--max-channels", "4", "--weights",
                   str(model), str(img), "--out", str(tmp_path / "out")])
    out = capsys.readouterr()
    assert rc == 0, out.err
    assert "img.jpg: 31x23" in out.out and (tmp_path / "out" / "img.png").is_file()
    mask = np.asarray(Image.open(tmp_path / "out" / "img.png"))
    assert mask.shape == (23, 31)
    rc = cli.main(["convert", str(model), str(tmp_path / "x.npz"), "--prototxt", DEPLOY,
                   "--max-channels", "4"])
    assert rc == 0, capsys.readouterr().err
    with np.load(tmp_path / "x.npz") as f:
        np.testing.assert_array_equal(f["conv1_1.weight"], read_params(str(model))["conv1_1.weight"])
    rc = cli.main(["predict", "--prototxt", DEPLOY, "--max-channels", "5", "--weights",
                   str(model), str(img), "--out", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert rc == 1 and err.count("\n") == 1 and "x.caffemodel: layer 'conv1_1'" in err
