"""Caffe prototxts: the text format, read_net on minifcn's copies of every reference net
(tests/fixtures/caffe, written by make_prototxts.py), crops, and files that are refused."""
import glob
import importlib.util
import math
import os
import warnings

import numpy as np
import pytest

from minifcn import layers as L
from minifcn.caffe import PrototxtError, parse, parse_file, read_net
from minifcn.coordmap import blob_shapes, receptive_field
from minifcn.gradcheck import check_net
from minifcn.net import Net

HERE = os.path.dirname(os.path.abspath(__file__))
FIXTURES = os.path.join(HERE, "fixtures", "caffe")
NETS = sorted(p for p in glob.glob(os.path.join(FIXTURES, "*", "*.prototxt"))
              if not p.endswith("solver.prototxt"))
SOLVERS = sorted(glob.glob(os.path.join(FIXTURES, "*", "solver.prototxt")))
TRAIN_NETS = [p for p in NETS if os.path.basename(p) in ("train.prototxt", "trainval.prototxt",
                                                          "deploy.prototxt")]


def rel(p):
    return os.path.relpath(p, FIXTURES)


def write(tmp_path, text, name="net.prototxt"):
    p = tmp_path / name
    p.write_text(text)
    return str(p)


# ----------------------------------------------------------------------------- the fixtures
def test_the_fixtures_are_what_their_generator_writes(tmp_path):
    spec = importlib.util.spec_from_file_location("make_prototxts",
                                                  os.path.join(FIXTURES, "make_prototxts.py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    files = mod.files()
    assert len(files) == len(NETS) + len(SOLVERS) == 46
    for relpath, text in files.items():
        with open(os.path.join(FIXTURES, relpath)) as f:
            assert f.read() == text, relpath


def _same(a, b):
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, list):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    if isinstance(a, float) or isinstance(b, float):
        return math.isclose(a, b, rel_tol=1e-6)          # protobuf keeps floats in float32
    return a == b


@pytest.mark.parametrize("path", NETS + SOLVERS, ids=rel)
def test_our_text_parser_agrees_with_protobufs_on_every_fixture(path):
    """google.protobuf.text_format, with message classes built from an independent copy of
    caffe.proto's numbers (tests/caffe_proto.py), parses each file to the same tree."""
    cp = pytest.importorskip("caffe_proto")
    from google.protobuf import text_format
    typ = "SolverParameter" if path.endswith("solver.prototxt") else "NetParameter"
    theirs = cp.messages()[typ]()
    with open(path) as f:
        text_format.Parse(f.read(), theirs)
    assert _same(parse_file(path, typ).to_dict(), cp.to_dict(theirs))


# the offsets the reference generated (fcn-paper-facts.md), per head kind
FACTS = {"32s": {"score": 19}, "16s": {"score_pool4c": 5, "score": 27},
         "8s": {"score_pool4c": 5, "score_pool3c": 9, "score": 31}}


@pytest.mark.parametrize("path", NETS, ids=rel)
def test_every_reference_net_builds_with_the_files_crop_offsets(path):
    """Full size, nothing allocated: every crop minifcn derives equals the file's offset, and
    the sizes at 500 x 500 are the reference's (upscore8 568, score 500)."""
    with warnings.catch_warnings():
        warnings.simplefilter("error")                 # no crop may disagree
        net = read_net(path, materialize=False)
    crops = net.caffe.crops
    assert crops and all(c["derived"] == c["file"] == c["used"] for c in crops)
    folder = rel(path).split(os.sep)[0]
    kind = "alexnet" if "alexnet" in folder else folder.split("fcn")[1].split("-")[0]
    for c in crops:
        base = c["layer"].replace("_sem", "").replace("_geo", "")
        want = 18 if kind == "alexnet" else FACTS[kind][base]
        assert c["derived"] == (want, want), c
    if folder.endswith(("color-d", "color-hha")):
        return      # two image inputs: sizes are derived from one; checked by running instead
    shapes = blob_shapes(net, (500, 500), input_blob="data", channels=3)
    for score, _ in [(net.bottoms[n][0], None) for n, lyr in net.layers.items() if lyr.is_loss] \
            or [("score", None)]:
        assert shapes[score][1:] == (500, 500)
    if kind == "8s":
        assert shapes["upscore8" + ("_sem" if "siftflow" in folder else "")][1:] == (568, 568)
    if "alexnet" not in folder and "color-hha" not in folder:
        fr = "score_fr_sem" if "siftflow" in folder else "score_fr"
        assert receptive_field(net, fr)[0][:2] == (404, 32)


def _inputs(net, size, rng):
    out = {}
    for name in net.inputs:
        c = net.caffe.input_shapes.get(name, (0, {"depth": 1}.get(name, 3)))[1]
        if net.layers and any(name in net.bottoms[n][1:2] for n, lyr in net.layers.items()
                              if lyr.is_loss):
            out[name] = rng.integers(0, 3, (1,) + size)      # 3: the fewest classes (geo)
        else:
            out[name] = rng.standard_normal((1, c) + size).astype(np.float32)
    return out


@pytest.mark.parametrize("path", TRAIN_NETS, ids=rel)
def test_every_reference_net_runs_forward_and_backward_at_two_sizes(path, rng):
    """Each net at max_channels=4 (every width capped, all the geometry kept): the scores
    have the input's size, and backward reaches every trainable parameter."""
    net = read_net(path, max_channels=4, seed=1)
    for p in net.params().values():
        p[...] = np.random.default_rng(0).standard_normal(p.shape).astype(np.float32) * 0.1
    for size in ((21, 27), (34, 30)):
        inputs = _inputs(net, size, rng)
        net.forward(**inputs)
        scores = [net.bottoms[n][0] for n, lyr in net.layers.items() if lyr.is_loss] or ["score"]
        for s in scores:
            assert net.blobs[s].shape[2:] == size
        if not any(lyr.is_loss for lyr in net.layers.values()):
            continue
        net.backward(input_grads=False)
        for key, g in net.grads().items():
            layer, _, p = key.rpartition(".")
            if net.layers[layer].trainable(p):
                assert g is not None and g.shape == net.params()[key].shape, key


def test_concat_and_silence_layers_gradients(rng):
    """The two layer types the reference nets add, checked in float64 (centred differences)."""
    net = Net(["a", "b", "label"])
    net.add("cat", L.Concat(), ["a", "b"])
    net.add("conv", L.Conv(5, 3, 3, pad=1, dtype=np.float64, seed=0), "cat")
    net.add("quiet", L.Silence(), ["b"], tops=[])
    net.add("loss", L.SoftmaxLoss(), ["conv", "label"])
    assert net.outputs == ["loss"]                      # Silence keeps b from being an output
    inputs = dict(a=rng.standard_normal((2, 2, 5, 6)), b=rng.standard_normal((2, 3, 5, 6)),
                  label=rng.integers(0, 3, (2, 5, 6)))
    for dev in ("numpy", "cpu"):
        errors = check_net(net.to(dev), inputs)
        assert max(errors.values()) < 1e-6, (dev, errors)
    assert L.Concat().out_shape((2, 4, 5), (3, 4, 5)) == (5, 4, 5)
    with pytest.raises(ValueError, match="only the channels may differ"):
        from minifcn import functional as F
        F.concat([np.zeros((1, 2, 3, 3)), np.zeros((1, 2, 3, 4))])


# ----------------------------------------------------------------------------- the text format
def test_text_format_reads_what_protobuf_writes():
    msg = parse("""
        name: 'a\\'b\\n\\x41\\101' "c"   # a comment
        input: "data" input_dim: [1, 3, 0x10, 010]
        layer < name: "x" type: "ReLU" bottom: "data"; top: "data",
          relu_param { negative_slope: -1.5e-1f } >
        layer: { name: "y" type: "Pooling" pooling_param { pool: AVE kernel_size: 2 } }
        force_backward: true
    """)
    assert msg.get("name") == "a'b\nAAc"
    assert msg.all("input_dim") == [1, 3, 16, 8]
    layers = msg.all("layer")
    assert [l.get("name") for l in layers] == ["x", "y"]
    assert layers[0].get("relu_param").get("negative_slope") == pytest.approx(-0.15)
    assert layers[1].get("pooling_param").get("pool") == "AVE"
    assert msg.get("force_backward") is True


@pytest.mark.parametrize("text, message", [
    ('layer { name: "x" typo: 1 }', r":1:19: LayerParameter has no field named 'typo'"),
    ('layer {\n  name: "x"\n  transform_param { }\n}',
     r":3:3: field 'transform_param' of LayerParameter is not supported"),
    ('name: "a"\nname: "b"', r":2:1: NetParameter.name is not repeated but is given twice"),
    ('layer { name: "x" pooling_param { pool: MEDIAN } }',
     r"MEDIAN is not a value of enum PoolMethod"),
    ('layer { name: x }', r"expected a quoted string, got 'x'"),
    ('layer { name: "x" convolution_param { num_output: -1 } }', r"-1 is out of range"),
    ('layer { name: "x" convolution_param { num_output: 1.5 } }', r"expected an integer"),
    ('layer { name: "unterminated }', r":1:15: unexpected an unterminated string"),
    ('layer { name: "x"', r"expected a field name in LayerParameter, got the end of the file"),
    ('layer { name: "a\\q" }', r"unknown escape \\q"),
])
def test_text_format_refuses_with_file_line_and_column(text, message):
    with pytest.raises(PrototxtError, match=message):
        parse(text, path="bad.prototxt")


def test_a_binary_file_or_a_directory_is_refused_by_name(tmp_path):
    p = tmp_path / "model.caffemodel"
    p.write_bytes(b"\x0a\x03net\xff\xfe")
    with pytest.raises(PrototxtError, match="not a text file.*read_weights"):
        parse_file(str(p))
    with pytest.raises(PrototxtError, match="is a directory"):
        parse_file(str(tmp_path))
    with pytest.raises(FileNotFoundError):
        read_net(str(tmp_path / "missing.prototxt"))


# ----------------------------------------------------------------------------- read_net
DEPLOY_HEAD = """input: "data"
input_shape { dim: 1 dim: 3 dim: 32 dim: 32 }
"""


def _conv(name, bottom, n, pad=1, k=3, extra=""):
    return (f'layer {{ name: "{name}" type: "Convolution" bottom: "{bottom}" top: "{name}" '
            f'convolution_param {{ num_output: {n} pad: {pad} kernel_size: {k} {extra} }} }}\n')


def test_crop_offsets_that_differ_are_refused_or_overridden_as_asked(tmp_path):
    text = DEPLOY_HEAD + _conv("c", "data", 2, pad=10) + (          # c = x + 9
        'layer { name: "score" type: "Crop" bottom: "c" bottom: "data" top: "score" '
        'crop_param { axis: 2 offset: 3 } }\n')
    path = write(tmp_path, text)
    with pytest.raises(PrototxtError, match=r"net.prototxt:\d+: crop 'score': the file's offset "
                                            r"is \(3, 3\), the offset derived .* is \(9, 9\)"):
        read_net(path)
    with pytest.warns(UserWarning, match="file offset"):
        net = read_net(path, crops="derive")
    assert net.layers["score"].offset == (9, 9)
    with pytest.warns(UserWarning, match="using \\(3, 3\\)"):
        net = read_net(path, crops="file")
    assert net.layers["score"].offset == (3, 3) and net.layers["score"].explicit
    # no offset at all: Caffe uses 0, which is wrong here (pain point: default offset 0)
    path = write(tmp_path, text.replace("offset: 3 ", ""))
    with pytest.raises(PrototxtError, match=r"\(0, 0\) \(none given: Caffe uses 0\)"):
        read_net(path)


@pytest.mark.parametrize("layer, message", [
    ('layer { name: "b" type: "BatchNorm" bottom: "data" top: "b" }',
     "type 'BatchNorm' is not supported"),
    ('layer { name: "p" type: "Pooling" bottom: "data" top: "p" pooling_param { pool: '
     'STOCHASTIC kernel_size: 2 } }', "STOCHASTIC pooling is not supported"),
    ('layer { name: "p" type: "Pooling" bottom: "data" top: "p" pooling_param { '
     'global_pooling: true } }', "global_pooling is not supported"),
    ('layer { name: "e" type: "Eltwise" bottom: "data" bottom: "data" top: "e" '
     'eltwise_param { operation: PROD } }', "Eltwise PROD is not supported"),
    ('layer { name: "c" type: "Convolution" bottom: "data" top: "c" propagate_down: true '
     'convolution_param { num_output: 2 kernel_size: 1 } }', "field 'propagate_down' is not"),
    ('layer { name: "c" type: "Convolution" bottom: "data" top: "c" convolution_param { '
     'num_output: 2 kernel_size: 1 weight_filler { type: "positive_unitball" } } }',
     "filler type 'positive_unitball' is not supported"),
    ('layer { name: "c" type: "Convolution" bottom: "data" top: "c" param { name: "shared" } '
     'convolution_param { num_output: 2 kernel_size: 1 } }', "shared parameters"),
    ('layer { name: "s" type: "Scale" bottom: "data" top: "s" }', "frozen constant"),
    ('layer { name: "py" type: "Python" top: "x" python_param { module: "my_layers" '
     'layer: "Mine" } }', "not one of the reference's data layers"),
    ('layer { name: "c" type: "Concat" bottom: "data" bottom: "data" top: "c" concat_param '
     '{ axis: 2 } }', "Concat is supported on the channel axis"),
    ('layer { name: "c" type: "Crop" bottom: "data" bottom: "data" top: "c" crop_param '
     '{ axis: 1 } }', "Crop axis 1 is not supported"),
    ('layer { name: "l" type: "SoftmaxWithLoss" bottom: "data" bottom: "lab" top: "l" '
     'loss_param { normalization: FULL ignore_label: 255 } }', "normalization FULL"),
    ('layer { name: "c" type: "Convolution" bottom: "nowhere" top: "c" convolution_param { '
     'num_output: 1 kernel_size: 1 } }', "cannot tell how many channels blob 'nowhere'"),
])
def test_unsupported_layers_and_fields_are_refused_by_name_and_line(tmp_path, layer, message):
    path = write(tmp_path, DEPLOY_HEAD + "input: 'lab'\ninput_shape { dim: 1 dim: 1 dim: 32 "
                 "dim: 32 }\n\n" + layer + "\n")
    with pytest.raises(PrototxtError, match=r"net.prototxt:6.*" + message):
        read_net(path)


def test_a_python_param_str_is_a_literal_never_code(tmp_path):
    text = ('layer { name: "data" type: "Python" top: "data" top: "label" python_param { '
            'module: "voc_layers" layer: "VOCSegDataLayer" param_str: '
            '"__import__(\'os\').system(\'touch pwned\')" } }\n')
    with pytest.raises(PrototxtError, match="not a Python literal.*never evaluates code"):
        read_net(write(tmp_path, text))
    assert not os.path.exists("pwned")


def test_v1_layers_legacy_inputs_and_blobs_lr(tmp_path):
    text = """name: "old"
input: "data"
input_dim: 1 input_dim: 3 input_dim: 8 input_dim: 8
layers { name: "conv1" type: CONVOLUTION bottom: "data" top: "conv1"
  blobs_lr: 1 blobs_lr: 2 weight_decay: 1 weight_decay: 0
  convolution_param { num_output: 4 kernel_size: 3 pad: 1 weight_filler { type: "gaussian" std: 0.01 } } }
layers { name: "relu1" type: RELU bottom: "conv1" top: "conv1" }
layers { name: "pool1" type: POOLING bottom: "conv1" top: "pool1"
  pooling_param { pool: MAX kernel_size: 2 stride: 2 } }
layers { name: "fc" type: INNER_PRODUCT bottom: "pool1" top: "fc"
  inner_product_param { num_output: 5 } }
"""
    net = read_net(write(tmp_path, text))
    assert net.name == "old" and list(net.layers) == ["conv1", "relu1", "pool1", "fc"]
    assert net.param_specs()["conv1.bias"] == (2.0, 0.0)
    assert net.param_specs()["fc.bias"] == (1.0, 1.0)          # Caffe's default, not 2x
    assert 0.005 < net.params()["conv1.weight"].std() < 0.02
    assert net.params()["fc.weight"].shape == (5, 4 * 4 * 4)
    out = net.forward(data=np.ones((1, 3, 8, 8), np.float32))
    assert out.shape == (1, 5, 1, 1)


def test_stages_rules_grouped_bilinear_deconv_and_accuracy(tmp_path):
    """A stranger's file (DIGITS' FCN-AlexNet style): include/exclude stages, a per-channel
    bilinear Deconvolution (group = num_output) and an Accuracy layer (skipped)."""
    text = DEPLOY_HEAD + "input: 'label'\ninput_shape { dim: 1 dim: 1 dim: 32 dim: 32 }\n" + \
        _conv("score_fr", "data", 3, pad=20) + """
layer { name: "pool" type: "Pooling" bottom: "score_fr" top: "pool"
  pooling_param { pool: MAX kernel_size: 2 stride: 2 } }
layer { name: "upscore" type: "Deconvolution" bottom: "pool" top: "upscore"
  param { lr_mult: 0 }
  convolution_param { num_output: 3 group: 3 bias_term: false kernel_size: 4 stride: 2
    weight_filler { type: "bilinear" } } }
layer { name: "score" type: "Crop" bottom: "upscore" bottom: "data" top: "score"
  crop_param { axis: 2 offset: 20 } }
layer { name: "loss" type: "SoftmaxWithLoss" bottom: "score" bottom: "label" top: "loss"
  loss_param { ignore_label: 255 normalize: true } exclude { stage: "deploy" } }
layer { name: "accuracy" type: "Accuracy" bottom: "score" bottom: "label" top: "accuracy"
  include { stage: "val" } accuracy_param { ignore_label: 255 } }
"""
    path = write(tmp_path, text)
    net = read_net(path, stages=["val"])
    assert "loss" in net.layers and "accuracy" not in net.layers
    assert net.caffe.skipped == [("accuracy", "Accuracy")]
    assert net.layers["loss"].normalize == "valid"
    w = net.params()["upscore.weight"]
    assert w.shape == (3, 3, 4, 4) and not w[0, 1].any()       # per channel: the diagonal
    np.testing.assert_allclose(w[1, 1], L.upsample_filt(4))     # Caffe's tent, k = 4
    deploy = read_net(path, stages=["deploy"])
    assert "loss" not in deploy.layers and deploy.outputs == ["score"]


@pytest.mark.parametrize("loss_param, mode", [
    ("normalize: false", "batch"), ("normalize: true", "valid"), ("", "valid"),
    ("normalization: NONE", "none"), ("normalization: BATCH_SIZE normalize: true", "batch")])
def test_softmax_with_loss_normalization_maps_onto_ours(tmp_path, loss_param, mode):
    text = DEPLOY_HEAD + "input: 'label'\ninput_shape { dim: 1 dim: 1 dim: 32 dim: 32 }\n" + \
        _conv("s", "data", 3) + ('layer { name: "loss" type: "SoftmaxWithLoss" bottom: "s" '
                                 f'bottom: "label" top: "loss" loss_weight: 0.5 loss_param {{ '
                                 f'{loss_param} }} }}')
    loss = read_net(write(tmp_path, text)).layers["loss"]
    assert loss.normalize == mode and loss.loss_weight == 0.5
