"""Legacy torch files (torch.save before 1.6: pytorch-fcn's fcn8s_from_caffe.pth and
vgg16_from_caffe.pth) read without torch; written by torch where it is installed, by hand
(pickle's own writer, never its loader) for the hostile cases."""
import io
import os
import pickle
import struct
from collections import OrderedDict

import numpy as np
import pytest

from minifcn import models
from minifcn.pth import MAGIC, PROTOCOL, TorchFileError, fcn_state_dict, load_legacy_state_dict
from minifcn.weights import UnsafePickleError, load_torch_state_dict, load_weights

try:
    import torch
except ImportError:                 # the torch-made files are skipped; the rest runs
    torch = None


# pickle opcodes by hand: a file can name any global without this test importing or touching it
def _u(s):
    data = s.encode()
    return b"X" + struct.pack("<I", len(data)) + data


def _i(n):
    return b"J" + struct.pack("<i", n)


def _glob(module, name):
    return b"c" + module.encode() + b"\n" + name.encode() + b"\n"


def _tuple(*items):
    return b"(" + b"".join(items) + b"t"


def _tensor(key, numel, offset, size, stride):
    pid = _tuple(_u("storage"), _glob("torch", "FloatStorage"), _u(key), _u("cpu"), _i(numel),
                 b"N")
    args = _tuple(pid + b"Q", _i(offset), _tuple(*map(_i, size)), _tuple(*map(_i, stride)),
                  b"\x89", _glob("collections", "OrderedDict") + b")R")
    return _glob("torch._utils", "_rebuild_tensor_v2") + args + b"R"


def legacy_file(path, entries, storages, magic=MAGIC, protocol=PROTOCOL, body=None):
    """A legacy torch file by hand: entries {name: (key, offset, size, stride)}, storages
    {key: float32 array}; body replaces the state dict's pickle."""
    buf = io.BytesIO()
    for v in (magic, protocol, {"protocol_version": protocol, "little_endian": True}):
        pickle.dump(v, buf, protocol=2)
    if body is None:
        body = b"\x80\x02}" + b"".join(
            _u(name) + _tensor(key, storages[key].size, off, size, stride) + b"s"
            for name, (key, off, size, stride) in entries.items()) + b"."
    buf.write(body)
    pickle.dump(sorted(storages), buf, protocol=2)
    for key in sorted(storages):
        buf.write(struct.pack("<q", storages[key].size) + storages[key].astype("<f4").tobytes())
    path.write_bytes(buf.getvalue())
    return str(path)


def test_a_hand_written_legacy_file_reads_with_strides(tmp_path):
    st = {"0": np.arange(12, dtype=np.float32)}
    path = legacy_file(tmp_path / "a.pth", {"w": ("0", 0, (3, 4), (4, 1)),
                                            "wt": ("0", 0, (4, 3), (1, 4)),
                                            "b": ("0", 2, (5,), (2,))}, st)
    sd = load_legacy_state_dict(path)
    np.testing.assert_array_equal(sd["w"], st["0"].reshape(3, 4))
    np.testing.assert_array_equal(sd["wt"], st["0"].reshape(3, 4).T)
    np.testing.assert_array_equal(sd["b"], st["0"][2:12:2])
    assert load_torch_state_dict(path).keys() == sd.keys()     # the one torch door


def test_hostile_legacy_files_are_refused_and_run_nothing(tmp_path):
    # a global that would run a command
    evil = b"\x80\x02" + _glob("os", "system") + _tuple(_u("touch pwned")) + b"R."
    with pytest.raises(UnsafePickleError, match="refused global os.system"):
        load_legacy_state_dict(legacy_file(tmp_path / "evil.pth", {}, {}, body=evil))
    assert not os.path.exists("pwned")
    st = {"0": np.arange(4, dtype=np.float32)}
    with pytest.raises(UnsafePickleError, match="reaches past its storage"):
        load_legacy_state_dict(legacy_file(tmp_path / "far.pth", {"w": ("0", 2, (4,), (1,))}, st))
    with pytest.raises(TorchFileError, match="wrong magic number"):
        load_legacy_state_dict(legacy_file(tmp_path / "m.pth", {}, {}, magic=1234))
    good = legacy_file(tmp_path / "g.pth", {"w": ("0", 0, (4,), (1,))}, st)
    data = open(good, "rb").read()
    for cut in (3, len(data) // 2, len(data) - 3):
        (tmp_path / "cut.pth").write_bytes(data[:cut])
        with pytest.raises(TorchFileError, match="cut.pth: (malformed or )?truncated"):
            load_legacy_state_dict(str(tmp_path / "cut.pth"))


@pytest.mark.skipif(torch is None, reason="PyTorch is optional")
@pytest.mark.parametrize("zip_format", [False, True])
def test_torch_written_pytorch_fcn_weights_load_into_fcn8s(tmp_path, zip_format):
    """A state dict with pytorch-fcn's FCN8s names (those of the reference's Caffe layers),
    saved by torch in the legacy and the zip format, fills minifcn's FCN-8s exactly."""
    net = models.fcn8s_micro(num_classes=3, loss=False)
    g = torch.Generator().manual_seed(0)
    sd = OrderedDict((k, torch.randn(tuple(v.shape), generator=g)) for k, v in net.params().items())
    path = tmp_path / "fcn8s_from_caffe.pth"
    torch.save(sd, path, _use_new_zipfile_serialization=zip_format)
    load_weights(net, str(path))
    for k, v in sd.items():
        np.testing.assert_array_equal(net.params()[k], v.numpy(), err_msg=k)


@pytest.mark.skipif(torch is None, reason="PyTorch is optional")
def test_a_torchvision_layout_vgg16_maps_onto_conv_names(tmp_path):
    sd = OrderedDict([("features.0.weight", torch.ones(4, 3, 3, 3)),
                      ("features.0.bias", torch.zeros(4)),
                      ("module.classifier.0.weight", torch.ones(2, 2))])
    torch.save(sd, tmp_path / "vgg.pth", _use_new_zipfile_serialization=False)
    names = fcn_state_dict(load_torch_state_dict(str(tmp_path / "vgg.pth")))
    assert list(names) == ["conv1_1.weight", "conv1_1.bias", "fc6.weight"]


def test_a_state_dict_that_does_not_fit_is_refused(tmp_path):
    st = {"0": np.zeros(5, np.float32)}
    path = legacy_file(tmp_path / "x.pth", {"conv1_1.weight": ("0", 0, (5,), (1,))}, st)
    with pytest.raises(ValueError, match="x.pth does not fit this net: conv1_1.weight"):
        load_weights(models.fcn8s_micro(num_classes=3, loss=False), path)
