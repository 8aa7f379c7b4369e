"""Pretrained weights without torch: the restricted unpickler, name mapping, surgery."""
import os
import pickle
import struct
import zipfile

import numpy as np
import pytest

from minifcn import layers as L
from minifcn import models
from minifcn.net import Net
from minifcn.weights import (UnsafePickleError, _fold_input, import_torchvision_vgg16,
                             load_torch_state_dict, torchvision_vgg16_names, transplant)


# ----------------------------------------------------------------------------- a torch zip
def _op_global(module, name):
    return b"c" + module.encode() + b"\n" + name.encode() + b"\n"


def _op_str(s):
    b = s.encode()
    return b"X" + struct.pack("<I", len(b)) + b


def _op_int(i):
    return b"J" + struct.pack("<i", i)


def _op_tuple(items):
    return b"(" + b"".join(items) + b"t"


_STORAGE = {np.dtype(np.float32): "FloatStorage", np.dtype(np.float64): "DoubleStorage",
            np.dtype(np.int64): "LongStorage", np.dtype(np.float16): "HalfStorage"}


def write_torch_zip(path, tensors, archive="archive"):
    """What torch.save(state_dict) writes, by hand: data.pkl (protocol 2) rebuilding each
    tensor with torch._utils._rebuild_tensor_v2 from a persistent storage id, and the raw
    little-endian storages as data/<key>. tensors: name -> (storage array, offset, size,
    stride); a storage passed twice (same object) is written once, as torch shares it."""
    keys, blobs = {}, {}
    pkl = b"\x80\x02" + _op_global("collections", "OrderedDict") + b")R("
    for name, (storage, offset, size, stride) in tensors.items():
        key = keys.setdefault(id(storage), str(len(keys)))
        blobs[key] = storage
        pid = _op_tuple([_op_str("storage"), _op_global("torch", _STORAGE[storage.dtype]),
                         _op_str(key), _op_str("cpu"), _op_int(storage.size)]) + b"Q"
        tensor = (_op_global("torch._utils", "_rebuild_tensor_v2")
                  + _op_tuple([pid, _op_int(offset), _op_tuple([_op_int(v) for v in size]),
                               _op_tuple([_op_int(v) for v in stride]), b"\x89",
                               _op_global("collections", "OrderedDict") + b")R"]) + b"R")
        pkl += _op_str(name) + tensor
    pkl += b"u."
    _write_zip(path, pkl, {k: v.astype(v.dtype.newbyteorder("<")).tobytes()
                           for k, v in blobs.items()}, archive)


def _write_zip(path, pkl, storages=None, archive="archive"):
    with zipfile.ZipFile(path, "w") as z:
        z.writestr(f"{archive}/data.pkl", pkl)
        z.writestr(f"{archive}/byteorder", "little")
        for key, raw in (storages or {}).items():
            z.writestr(f"{archive}/data/{key}", raw)
        z.writestr(f"{archive}/version", "3\n")


def test_hand_written_torch_file_round_trips(tmp_path):
    rng = np.random.default_rng(0)
    a = rng.standard_normal(12).astype(np.float32)
    b = np.arange(6, dtype=np.int64)
    h = rng.standard_normal(4).astype(np.float16)
    path = tmp_path / "w.pth"
    write_torch_zip(path, {
        "conv.weight": (a, 0, (3, 4), (4, 1)),
        "conv.weight_t": (a, 0, (4, 3), (1, 4)),          # a transposed view of a
        "tail": (a, 8, (2, 2), (2, 1)),                    # an offset into the storage
        "steps": (b, 0, (6,), (1,)),
        "half": (h, 0, (4,), (1,)),
        "scalar": (b, 5, (), ()),
    })
    sd = load_torch_state_dict(path)
    assert list(sd) == ["conv.weight", "conv.weight_t", "tail", "steps", "half", "scalar"]
    np.testing.assert_array_equal(sd["conv.weight"], a.reshape(3, 4))
    np.testing.assert_array_equal(sd["conv.weight_t"], a.reshape(3, 4).T)
    np.testing.assert_array_equal(sd["tail"], a[8:].reshape(2, 2))
    assert sd["steps"].dtype == np.int64 and sd["half"].dtype == np.float16
    assert sd["scalar"].shape == () and sd["scalar"] == 5
    sd["conv.weight"][0, 0] = 7                       # copies, not views of one buffer
    assert sd["conv.weight_t"][0, 0] != 7


def test_real_torch_round_trip(tmp_path):
    torch = pytest.importorskip("torch")
    sd = {"a.weight": torch.randn(5, 3, 3, 3), "b.bias": torch.arange(4, dtype=torch.float64),
          "c": torch.randn(4, 6).t(), "d": torch.randn(3).to(torch.bfloat16),
          "n": torch.tensor(3, dtype=torch.int64)}
    torch.save(sd, tmp_path / "t.pth")
    ours = load_torch_state_dict(tmp_path / "t.pth")
    for k, v in sd.items():
        np.testing.assert_array_equal(ours[k], v.float().numpy() if k == "d" else v.numpy())


# ----------------------------------------------------------------------------- malicious files
class _Evil:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


@pytest.mark.parametrize("payload", ["system", "eval", "getattr"])
def test_a_malicious_pickle_is_refused_and_nothing_runs(tmp_path, payload):
    marker = tmp_path / "pwned"
    if payload == "system":
        pkl = pickle.dumps({"w": _Evil(marker)}, protocol=2)
        refused = os.system.__module__ + ".system"             # posix.system
    elif payload == "eval":
        pkl = (b"\x80\x02" + _op_global("builtins", "eval")
               + _op_tuple([_op_str(f"open({str(marker)!r}, 'w')")]) + b"R.")
        refused = "builtins.eval"
    else:      # a global that is not ours, reached through an allowed module's name
        pkl = b"\x80\x02" + _op_global("torch._utils", "_load_from_bytes") + b")R."
        refused = "torch._utils._load_from_bytes"
    path = tmp_path / "evil.pth"
    _write_zip(path, pkl)
    with pytest.raises(UnsafePickleError) as e:
        load_torch_state_dict(path)
    assert f"refused global {refused}" in str(e.value) and str(path) in str(e.value)
    assert not marker.exists()


def test_the_pickle_cannot_tamper_with_what_it_is_given(tmp_path):
    # BUILD on the storage type we hand out, to change its dtype for later loads
    pkl = (b"\x80\x02" + _op_global("torch", "FloatStorage")
           + b"(N}" + _op_str("dtype") + _op_str("object") + b"s" + b"tb.")
    _write_zip(tmp_path / "t.pth", pkl)
    with pytest.raises(UnsafePickleError):
        load_torch_state_dict(tmp_path / "t.pth")
    # a tensor that reaches past its storage
    a = np.zeros(4, np.float32)
    write_torch_zip(tmp_path / "big.pth", {"w": (a, 2, (4,), (1,))})
    with pytest.raises(UnsafePickleError, match="past its storage"):
        load_torch_state_dict(tmp_path / "big.pth")


def test_legacy_and_non_state_dict_files_are_refused(tmp_path):
    (tmp_path / "old.pth").write_bytes(pickle.dumps({"w": 1}))
    with pytest.raises(ValueError, match=r"not a torch file \(wrong magic number\)"):
        load_torch_state_dict(tmp_path / "old.pth")
    _write_zip(tmp_path / "list.pth", pickle.dumps([1, 2], protocol=2))
    with pytest.raises(ValueError, match="not a state dict"):
        load_torch_state_dict(tmp_path / "list.pth")


# ----------------------------------------------------------------------------- name mapping
def test_torchvision_names_are_derived_from_the_vgg16_layout():
    names = torchvision_vgg16_names()
    assert names["features.0.weight"] == "conv1_1.weight"
    assert names["features.2.bias"] == "conv1_2.bias"
    assert names["features.5.weight"] == "conv2_1.weight"
    assert names["features.28.weight"] == "conv5_3.weight"
    assert names["classifier.0.weight"] == "fc6.weight"
    assert names["classifier.6.bias"] == "fc8.bias"
    assert len(names) == 2 * 16


def _fake_torchvision_vgg16():
    """Every torchvision VGG16 tensor, lazily: a constant per tensor (no memory)."""
    clf = models.vgg16(init="zeros")
    ours = {v: k for k, v in torchvision_vgg16_names().items()}
    return {ours[k]: np.broadcast_to(np.float32(i + 1), v.shape)
            for i, (k, v) in enumerate(clf.params().items())}, clf


def test_import_torchvision_vgg16_into_the_classifier_and_fcn8s():
    sd, clf = _fake_torchvision_vgg16()
    report = import_torchvision_vgg16(clf, sd, input="torchvision")
    assert len(report.copied) == 32 and not report.unmatched and not report.unused
    assert clf.params()["conv3_2.bias"][0] == sd["features.12.bias"][0]
    fcn = models.fcn8s(init="zeros")
    report = import_torchvision_vgg16(fcn, sd)
    assert ("fc6.weight", (4096, 25088), (4096, 512, 7, 7)) in report.reshaped
    assert {k for k, _, _ in report.reshaped} == {"fc6.weight", "fc7.weight"}
    assert {k for k, _ in report.unmatched} == {"score_fr.weight", "score_fr.bias",
                                                "score_pool4.weight", "score_pool4.bias",
                                                "score_pool3.weight", "score_pool3.bias",
                                                "upscore2.weight", "upscore_pool4.weight",
                                                "upscore8.weight"}
    assert set(report.unused) == {"fc8.weight", "fc8.bias"}
    assert fcn.params()["fc7.weight"].shape == (4096, 4096, 1, 1)
    with pytest.raises(ValueError, match="not a torchvision VGG16"):
        import_torchvision_vgg16(fcn, {"features.0.weight": sd["features.0.weight"]})


def test_folding_torchvision_preprocessing_into_conv1_1():
    from minifcn.data import VOC_MEAN_BGR, preprocess
    rng = np.random.default_rng(0)
    img = rng.integers(0, 256, (9, 9, 3), dtype=np.uint8)
    w = rng.standard_normal((4, 3, 3, 3)).astype(np.float32)
    b = rng.standard_normal(4).astype(np.float32)
    x_tv = ((img / 255.0 - (0.485, 0.456, 0.406)) / (0.229, 0.224, 0.225)).transpose(2, 0, 1)
    x_caffe = preprocess(img)
    w2, b2 = _fold_input(w, b, VOC_MEAN_BGR)
    conv = L.Conv(3, 4, 3, dtype=np.float64)
    conv.params.update(weight=w.astype(np.float64), bias=b.astype(np.float64))
    want = conv.forward(x_tv[None].astype(np.float64))[0]
    conv.params.update(weight=w2.astype(np.float64), bias=b2.astype(np.float64))
    got = conv.forward(x_caffe[None].astype(np.float64))[0]
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-4)


# ----------------------------------------------------------------------------- surgery
def test_transplant_classifier_into_fcn_is_convolutionalize():
    clf = models.vgg_classifier("micro", num_classes=5, input_size=64, seed=1)
    fcn = models.fcn32s(5, backbone="micro", init="zeros", fc6_kernel=2, fc6_pad=0,
                        first_pad=1)
    report = transplant(fcn, clf)
    assert {k for k, _, _ in report.reshaped} == {"fc6.weight", "fc7.weight"}
    assert {k for k, _ in report.unmatched} == {"score_fr.weight", "score_fr.bias",
                                                "upscore.weight"}
    assert set(report.unused) == {"fc8.weight", "fc8.bias"}
    conv = models.convolutionalize(clf)
    for k in ["conv1_1.weight", "fc6.weight", "fc7.bias"]:
        np.testing.assert_array_equal(fcn.params()[k], conv.params()[k])
    assert "reshaped  fc6.weight: (16, 64) -> (16, 16, 2, 2)" in str(report)


def test_transplant_reports_size_mismatches_and_takes_dicts():
    a = Net(["data"])
    a.add("c", L.Conv(3, 4, 3, init="zeros"), "data")
    report = transplant(a, {"c.weight": np.ones((2, 3, 3, 3)), "c.bias": np.ones(4),
                            "x.weight": np.ones(1)})
    assert report.copied == ["c.bias"]
    assert report.unmatched == [("c.weight", "source (2, 3, 3, 3) vs net (4, 3, 3, 3)")]
    assert report.unused == ["x.weight"]
    assert not a.params()["c.weight"].any()                  # left as it was


def test_torch_vgg_layout_round_trip_gives_the_same_scores(tmp_path):
    """A torch net laid out as torchvision's VGG16 (features / classifier Sequentials, the
    same module indices), small widths: saved by torch, loaded without it, imported by name,
    it computes what torch computes."""
    torch = pytest.importorskip("torch")
    nn = torch.nn
    widths, fc = (4, 8, 8, 16, 16), 12
    cfg = models.get_backbone("vgg16", widths=widths, fc_width=fc, dropout=0.0)
    mods, c = [], 3
    for w, d in zip(cfg.widths, cfg.depths):
        for _ in range(d):
            mods += [nn.Conv2d(c, w, 3, padding=1), nn.ReLU()]
            c = w
        mods.append(nn.MaxPool2d(2, 2))
    features = nn.Sequential(*mods)
    classifier = nn.Sequential(nn.Linear(16 * 2 * 2, fc), nn.ReLU(), nn.Dropout(),
                               nn.Linear(fc, fc), nn.ReLU(), nn.Dropout(), nn.Linear(fc, 10))
    tnet = nn.Module()
    tnet.features, tnet.classifier = features, classifier
    tnet.eval()
    torch.save(tnet.state_dict(), tmp_path / "vgg.pth")
    net = models.vgg_classifier(cfg, num_classes=10, input_size=64, dtype=np.float32).eval()
    report = import_torchvision_vgg16(net, tmp_path / "vgg.pth", input="torchvision")
    assert not report.unmatched and not report.unused
    x = np.random.default_rng(0).standard_normal((1, 3, 64, 64)).astype(np.float32)
    with torch.no_grad():
        want = classifier(torch.flatten(features(torch.from_numpy(x)), 1)).numpy()
    np.testing.assert_allclose(net.forward(data=x)[:, :, 0, 0], want, rtol=1e-4, atol=1e-5)
