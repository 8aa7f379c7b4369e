"""The models against the paper and the reference nets (shelhamer/fcn.berkeleyvision.org).

Every expected number below is a published one (crop offsets of the generated prototxts,
Table 1's receptive fields, strides and parameter counts, the blob sizes of the reference
nets at 500 x 500); every actual number comes out of minifcn by derivation. Parameter counts
are recomputed here from the layer shapes, written out independently of minifcn.models.
"""
import numpy as np
import pytest

from minifcn import layers as L
from minifcn import models
from minifcn.coordmap import CropError, blob_shapes, fits, receptive_field
from minifcn.layers import upsample_filt

FCNS = ["fcn32s", "fcn16s", "fcn8s", "fcn8s_atonce", "fcn_alexnet"]


def build(name, **kw):
    return models.build(name, init="zeros", **kw)      # zeros: no 500 MB of random numbers


def crops(net):
    return {n: layer.offset[0] for n, layer in net.layers.items() if isinstance(layer, L.Crop)}


# ----------------------------------------------------------------------------- derived numbers
@pytest.mark.parametrize("name,expected", [
    ("fcn32s", {"score": 19}),
    ("fcn16s", {"score_pool4c": 5, "score": 27}),
    ("fcn8s", {"score_pool4c": 5, "score_pool3c": 9, "score": 31}),
    ("fcn8s_atonce", {"score_pool4c": 5, "score_pool3c": 9, "score": 31}),
    ("fcn_alexnet", {"score": 18}),
])
def test_crop_offsets_match_the_reference_prototxts(name, expected):
    net = build(name)
    assert crops(net) == expected
    assert all(not layer.explicit for layer in net.layers.values() if isinstance(layer, L.Crop))


@pytest.mark.parametrize("name,rf", [("fcn8s", 404), ("fcn_alexnet", 355)])
def test_receptive_field_and_stride_match_table_1(name, rf):
    (size_h, stride_h, _), (size_w, stride_w, _) = receptive_field(build(name), "score_fr")
    assert (size_h, size_w, stride_h, stride_w) == (rf, rf, 32, 32)


def test_blob_sizes_at_500_match_the_reference_nets():
    s32, s8 = blob_shapes(build("fcn32s"), 500), blob_shapes(build("fcn8s"), 500)
    assert s32["conv1_1"][1:] == (698, 698)
    assert [s32[f"pool{i}"][1] for i in range(1, 6)] == [349, 175, 88, 44, 22]
    assert s32["fc6"] == (4096, 16, 16) and s32["score_fr"] == (21, 16, 16)
    assert s32["upscore"][1] == 544 and s32["score"] == (21, 500, 500)
    assert (s8["upscore2"][1], s8["upscore_pool4"][1], s8["upscore8"][1]) == (34, 70, 568)
    assert s8["score"] == (21, 500, 500)


def test_pad_100_lets_every_input_size_through_and_pad_1_cannot_align():
    net = build("fcn8s")
    assert all(fits(net, (h, w)) for h, w in [(1, 1), (1, 37), (31, 32), (33, 64), (500, 375)])
    # the smallest such pad, derived by shape arithmetic: the reference's 100 is enough
    assert models.smallest_first_pad("32s", "vgg16") <= 100
    with pytest.raises(CropError, match=r"'upscore' to 'data'.*b=80"):
        build("fcn32s", first_pad=1)      # the upsampled scores lie 80 px inside the input


# ----------------------------------------------------------------------------- parameter counts
def _conv(c_in, c_out, k, groups=1):
    return c_out * (c_in // groups) * k * k + c_out


VGG16_CONVS = [(3, 64), (64, 64), (64, 128), (128, 128), (128, 256), (256, 256), (256, 256),
               (256, 512), (512, 512), (512, 512), (512, 512), (512, 512), (512, 512)]


def test_vgg16_parameter_counts():
    convs = sum(_conv(a, b, 3) for a, b in VGG16_CONVS)
    fc = (512 * 7 * 7 * 4096 + 4096) + (4096 * 4096 + 4096)
    assert build("vgg16").num_params() == convs + fc + 4096 * 1000 + 1000        # 138 M
    score_fr = 4096 * 21 + 21
    trainable = convs + fc + score_fr
    net = build("fcn32s")
    assert net.num_params(trainable_only=True) == trainable
    assert net.num_params() == trainable + 21 * 21 * 64 * 64          # + frozen upscore
    assert round(trainable / 1e6) == 134                                # Table 1: 134M
    skips = (512 * 21 + 21) + (256 * 21 + 21)
    ups = 21 * 21 * (4 * 4 + 4 * 4 + 16 * 16)
    assert build("fcn8s").num_params() == trainable + skips + ups


def test_alexnet_parameter_counts():
    convs = (_conv(3, 96, 11) + _conv(96, 256, 5, 2) + _conv(256, 384, 3)
             + _conv(384, 384, 3, 2) + _conv(384, 256, 3, 2))
    fc = (256 * 6 * 6 * 4096 + 4096) + (4096 * 4096 + 4096)
    assert build("alexnet").num_params() == convs + fc + 4096 * 1000 + 1000      # 61 M
    trainable = convs + fc + 4096 * 21 + 21
    net = build("fcn_alexnet")
    assert net.num_params(trainable_only=True) == trainable
    assert round(trainable / 1e6) == 57                                 # Table 1: 57M


def test_tiny_is_about_a_million_parameters():
    net = models.fcn8s_tiny(init="zeros")
    convs = sum(_conv(a, b, 3) for a, b in [(3, 16), (16, 16), (16, 32), (32, 32), (32, 64),
                                            (64, 64), (64, 64), (64, 128), (128, 128),
                                            (128, 128), (128, 128), (128, 128), (128, 128)])
    fc = _conv(128, 128, 3) + _conv(128, 128, 1)                  # fc6 3x3, fc7
    scores = _conv(128, 21, 1) + _conv(128, 21, 1) + _conv(64, 21, 1)   # fr, pool4, pool3
    ups = 2 * 21 * 21 * 4 * 4                     # upscore2, upscore_pool4 (upscore8 frozen)
    assert net.num_params(trainable_only=True) == convs + fc + scores + ups
    assert 0.9e6 < net.num_params(trainable_only=True) < 1.2e6


# ----------------------------------------------------------------------------- structure
def test_reference_layer_names_and_initialisation():
    net = build("fcn8s")
    for name in ["conv1_1", "relu1_1", "conv5_3", "pool5", "fc6", "drop6", "fc7", "drop7",
                 "score_fr", "upscore2", "score_pool4", "score_pool4c", "fuse_pool4",
                 "upscore_pool4", "score_pool3", "score_pool3c", "fuse_pool3", "upscore8",
                 "score", "loss"]:
        assert name in net.layers, name
    assert net.inputs == ["data", "label"] and net.outputs == ["loss"]
    assert net.layers["conv1_1"].pad == (100, 100)
    assert net.layers["fc6"].kernel == (7, 7) and net.layers["fc6"].pad == (0, 0)
    assert net.layers["loss"].normalize == "batch"
    for s in ["score_fr", "score_pool4", "score_pool3"]:
        assert not net.layers[s].params["weight"].any()
    for up, k in [("upscore2", 4), ("upscore_pool4", 4), ("upscore8", 16)]:
        w = net.layers[up].params["weight"]
        assert w.shape == (21, 21, k, k) and "bias" not in net.layers[up].params
        assert np.allclose(w[3, 3], upsample_filt(k)) and not w[3, 4].any()   # diagonal
    assert [net.layers[u].trainable("weight") for u in ["upscore2", "upscore_pool4",
                                                        "upscore8"]] == [True, True, False]
    ref = build("fcn8s", upsampling="all")
    assert not any(ref.layers[u].trainable("weight") for u in ["upscore2", "upscore8"])


def test_deploy_nets_output_score_and_other_losses():
    net = build("fcn16s", num_classes=5, loss=False)
    assert net.inputs == ["data"] and net.outputs == ["score"]
    assert build("fcn_alexnet").layers["loss"].normalize == "valid"
    assert build("fcn32s", normalize="none").layers["loss"].normalize == "none"
    atonce = build("fcn8s_atonce")
    assert atonce.layers["scale_pool4"].c == 0.01 and atonce.layers["scale_pool3"].c == 0.0001
    assert atonce.bottoms["score_pool4"] == ["scale_pool4"]
    alex = build("fcn_alexnet")
    assert alex.layers["conv2"].groups == 2 and isinstance(alex.layers["norm1"], L.LRN)
    assert alex.layers["upscore"].kernel == (63, 63) and alex.layers["fc6"].kernel == (6, 6)


def test_seeds_make_builds_reproducible():
    a, b = models.fcn8s_tiny(seed=3), models.fcn8s_tiny(seed=3)
    assert all(np.array_equal(a.params()[k], b.params()[k]) for k in a.params())
    assert not np.array_equal(a.params()["conv1_1.weight"],
                              models.fcn8s_tiny(seed=4).params()["conv1_1.weight"])
    assert a.layers["drop6"].rng.random() == b.layers["drop6"].rng.random()
    w = a.params()["conv3_1.weight"]
    assert w.dtype == np.float32 and abs(w.std() - np.sqrt(2 / (32 * 9))) < 0.01   # He


def test_classifiers_are_fully_connected_and_convolutionalize_reshapes():
    clf = models.vgg_classifier("micro", num_classes=7, input_size=48, seed=1)
    assert isinstance(clf.layers["fc6"], L.InnerProduct)
    conv = models.convolutionalize(clf)
    assert list(conv.layers) == list(clf.layers)
    fc6 = conv.layers["fc6"]
    assert type(fc6) is L.Conv and fc6.kernel == clf.layers["fc6"].in_shape[1:]
    c, h, w = clf.layers["fc6"].in_shape
    assert np.array_equal(fc6.params["weight"],
                          clf.layers["fc6"].params["weight"].reshape(-1, c, h, w))
    assert fc6.params["weight"] is not clf.layers["fc6"].params["weight"]
    shared = models.convolutionalize(clf, copy_params=False)
    assert shared.layers["conv1_1"].params["weight"] is clf.layers["conv1_1"].params["weight"]


# ----------------------------------------------------------------------------- tiny presets
def test_tiny_first_pad_is_derived_and_every_size_works():
    # the calibration: pad 1 with derived crops works for every input size
    assert models.smallest_first_pad("8s", "tiny") == 1
    for make in (models.fcn32s_tiny, models.fcn16s_tiny, models.fcn8s_tiny):
        net = make(init="zeros")
        assert net.layers["conv1_1"].pad == (1, 1)
        assert all(fits(net, (h, h + 7)) for h in range(1, 80))
    assert not fits(models.fcn8s_tiny(init="zeros", first_pad=0), 1)


@pytest.mark.parametrize("size", [(1, 1), (13, 40), (64, 96)])
def test_tiny_scores_every_pixel(size):
    net = models.fcn8s_tiny(num_classes=4, loss=False)
    x = np.random.default_rng(0).standard_normal((1, 3) + size).astype(np.float32)
    assert net.forward(data=x).shape == (1, 4) + size


def test_build_by_name():
    assert set(models.MODELS) >= {"fcn8s", "fcn8s_tiny", "vgg16", "alexnet", "fcn_alexnet"}
    with pytest.raises(ValueError, match="unknown model"):
        models.build("fcn4s")


def test_gradients_of_a_whole_fcn8s_graph():
    """Crops (both directions), sums, learned and frozen deconvolutions, dropout (off): the
    built graph backpropagates correctly (float64, centred differences, away from kinks)."""
    import minifcn
    from minifcn.gradcheck import check_net
    rng = np.random.default_rng(0)
    net = models.fcn8s(3, backbone="micro", dtype=np.float64, score_init=0.1, seed=1).eval()
    for layer in net.layers.values():
        if "bias" in layer.params:
            layer.params["bias"] = rng.uniform(0.1, 0.3, layer.params["bias"].shape)
    label = rng.integers(0, 3, (1, 19, 23))
    label[0, :2] = 255
    with minifcn.device("numpy"):
        errors = check_net(net, {"data": rng.standard_normal((1, 3, 19, 23)), "label": label},
                           n_probe=4)
    assert "upscore8.weight" not in errors and "upscore2.weight" in errors     # frozen / not
    assert max(errors.values()) < 1e-6, errors


def test_receptive_field_is_exported_at_the_top():
    import minifcn
    net = build("fcn32s")
    assert minifcn.receptive_field(net, "score_fr")[1][:2] == (404, 32)
    assert "offset 19" in minifcn.rf_table(net, (500, 500))


@pytest.mark.parametrize("name,folder", [("fcn32s", "voc-fcn32s"), ("fcn16s", "voc-fcn16s"),
                                         ("fcn8s", "voc-fcn8s"),
                                         ("fcn8s_atonce", "voc-fcn8s-atonce"),
                                         ("fcn_alexnet", "voc-fcn-alexnet")])
def test_multipliers_follow_the_reference_prototxt(name, folder):
    """Every parameter's lr_mult and decay_mult as the reference's train.prototxt gives them
    (read by minifcn.caffe.read_net, Caffe's defaults 1 and 1 where a layer has no param
    block, as FCN-AlexNet's conv and fc layers). upsampling='all' freezes the intermediate
    upsamplers as the reference nets do (the paper, and minifcn's default, learn them)."""
    import os

    from minifcn.caffe import read_net
    path = os.path.join(os.path.dirname(__file__), "fixtures", "caffe", folder,
                        "train.prototxt")
    ref = read_net(path, phase="train", materialize=False)
    ours = models.build(name, upsampling="all", materialize=False)

    def mults(net):
        return {n: (lyr.lr_mult, lyr.decay_mult) for n, lyr in net.layers.items() if lyr.params}
    assert mults(ours) == mults(ref)
    assert mults(ref)["fc7" if "alexnet" in name else "score_fr"][0]["bias"] == \
        (1.0 if "alexnet" in name else 2.0)       # the two conventions are both checked
