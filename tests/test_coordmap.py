"""Coordinate maps, crop derivation, receptive fields, shape arithmetic and the rf table."""
from fractions import Fraction as Fr

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from minifcn import layers as L
from minifcn import models
from minifcn.coordmap import (IDENTITY, CropError, ShapeError, UndefinedMap, blob_shapes,
                              compose, coord_map, fits, inverse, layer_map, receptive_field,
                              receptive_fields,
                              rf_table, total_stride, unit_field)
from minifcn.net import Net


# ----------------------------------------------------------------------------- per-layer maps
def test_conv_and_pool_maps_follow_caffe():
    # a = 1/s, b = (p - (k_e - 1)/2) / s with k_e = d(k - 1) + 1
    assert layer_map(L.Conv(1, 1, 3, stride=2, pad=1, dilation=2)) == ((Fr(1, 2), Fr(-1, 2)),) * 2
    assert layer_map(L.Conv(1, 1, 3, pad=1)) == IDENTITY
    assert layer_map(L.MaxPool(2, 2)) == ((Fr(1, 2), Fr(-1, 4)),) * 2
    assert layer_map(L.AvgPool(3, 2, pad=1)) == ((Fr(1, 2), Fr(0)),) * 2
    # per axis: a (3, 1) kernel with stride (1, 2)
    assert layer_map(L.Conv(1, 1, (3, 1), stride=(1, 2))) == ((Fr(1), Fr(-1)), (Fr(1, 2), Fr(0)))


def test_deconv_crop_pointwise_and_fc_maps():
    assert layer_map(L.Deconv(1, 1, 4, 2, pad=1)) == ((Fr(2), Fr(1, 2)),) * 2   # a=s, b=(k-1)/2-p
    assert layer_map(L.Deconv(1, 1, 64, 32)) == ((Fr(32), Fr(63, 2)),) * 2
    assert layer_map(L.Crop((3, 5))) == ((Fr(1), Fr(-3)), (Fr(1), Fr(-5)))
    for layer in (L.ReLU(), L.Dropout(), L.Sum(), L.Scale(0.5), L.LRN()):
        assert layer_map(layer) == IDENTITY
    with pytest.raises(UndefinedMap):
        layer_map(L.InnerProduct((2, 3, 3), 4))
    with pytest.raises(UndefinedMap):
        layer_map(L.Crop())                                  # not derived yet


@given(st.lists(st.tuples(st.integers(1, 4), st.integers(-6, 6)), min_size=3, max_size=3))
@settings(deadline=None, max_examples=20)
def test_compose_is_associative_and_inverse_undoes(abs_):
    m1, m2, m3 = [((Fr(a), Fr(b, 2)),) * 2 for a, b in abs_]
    assert compose(compose(m1, m2), m3) == compose(m1, compose(m2, m3))
    assert compose(m1, inverse(m1)) == IDENTITY == compose(inverse(m1), m1)


# ----------------------------------------------------------------------------- maps in a Net
def _small_net():
    net = Net(["data"], name="small")
    net.add("conv", L.Conv(3, 4, 3), "data")               # (1, -1)
    net.add("relu", L.ReLU(), "conv", "conv")
    net.add("pool", L.MaxPool(2, 2), "conv")               # (1/2, -1/4)
    net.add("up", L.Deconv(4, 4, 3, 2), "pool")            # (2, 1)
    return net


def test_coord_map_between_blobs_composes_the_path():
    net = _small_net()
    expected = compose(layer_map(net.layers["up"]),
                       compose(layer_map(net.layers["pool"]), layer_map(net.layers["conv"])))
    assert coord_map(net, "data", "up") == expected == ((Fr(1), Fr(-1, 2)),) * 2
    assert coord_map(net, "up", "data") == inverse(expected)
    assert coord_map(net, "pool", "pool") == IDENTITY
    # siblings: from conv to up goes back to conv, then forward
    assert coord_map(net, "conv", "up") == compose(expected, inverse(coord_map(net, "data",
                                                                              "conv")))


def test_crop_offsets_are_derived_when_added_and_explicit_ones_override():
    net = _small_net()                                   # data -> up is x - 1/2: not integer
    net.add("conv2", L.Conv(4, 4, 2, pad=2), "up")       # (1, 3/2): data -> conv2 is x + 1
    net.add("score", L.Crop(), ["conv2", "data"])
    assert net.layers["score"].offset == (1, 1)
    net.add("forced", L.Crop(offset=0), ["conv2", "data"])
    assert net.layers["forced"].offset == (0, 0) and net.layers["forced"].explicit


class _Shift(L.Layer):
    """A layer type coordmap.py has never heard of, stating its own rules: a shift by 2."""
    def coord_map(self):
        return ((Fr(1), Fr(-2)),) * 2

    def extent(self, field):
        return [(lo + 2 * s, hi + 2 * s, s) for lo, hi, s in field]

    def out_shape(self, x):
        return (x[0], x[1] - 2, x[2] - 2)

    def _forward(self, x):
        return x[:, :, 2:, 2:]


class _Mystery(L.Layer):
    """A layer type that defines no coordinate map (as Caffe's coord_map.py refuses)."""
    def _forward(self, x):
        return x


def test_a_new_layer_type_brings_its_own_map_and_coordmap_composes_it():
    net = Net(["data"], name="shifty")
    net.add("shift", _Shift(), "data")
    net.add("up", L.Deconv(3, 3, 1, 1), "shift")
    net.add("score", L.Crop(), ["data", "up"])
    assert net.layers["score"].offset == (2, 2)
    assert receptive_field(net, "up") == ((1, 1, 2),) * 2
    assert blob_shapes(net, (9, 7), channels=3)["score"] == (3, 7, 5)


def test_a_layer_without_a_map_is_refused_by_name_not_taken_as_identity():
    with pytest.raises(UndefinedMap, match="_Mystery"):
        layer_map(_Mystery())
    net = Net(["data"], name="mystery")
    net.add("odd", _Mystery(), "data")
    with pytest.raises(UndefinedMap, match=r"'odd' and 'data'.*stopped at layer 'odd'"):
        net.add("score", L.Crop(), ["odd", "data"])
    with pytest.raises(ShapeError, match=r"layer 'odd' \(_Mystery\).*output shape"):
        blob_shapes(net, (8, 8), channels=3)
    assert "odd" not in receptive_fields(net)          # not reached: no field is made up


@pytest.mark.parametrize("cut,ref,words", [
    ("up", "data", ["'up'", "'data'", "a=1, b=1/2"]),         # not an integer (and b > 0)
    ("conv", "data", ["'conv'", "'data'", "b=1"]),            # b > 0: conv lies inside data
    ("pool", "data", ["'pool'", "'data'", "a=2"]),            # scales differ
])
def test_a_crop_that_cannot_align_names_both_blobs_and_the_map(cut, ref, words):
    net = _small_net()
    with pytest.raises(CropError) as e:
        net.add("bad", L.Crop(), [cut, ref])
    for w in words:
        assert w in str(e.value), str(e.value)
    assert isinstance(e.value, ValueError)


# ----------------------------------------------------------------------------- receptive fields
def test_receptive_field_by_hand():
    net = _small_net()
    assert receptive_field(net, "conv") == ((3, 1, 0),) * 2
    assert receptive_field(net, "pool") == ((4, 2, 0),) * 2     # 3 + (2-1)*1, stride 2
    net2 = Net(["data"])
    net2.add("c", L.Conv(1, 1, 3, pad=2, dilation=2), "data")
    assert receptive_field(net2, "c") == ((5, 1, -2),) * 2
    assert unit_field(net2, "c", (3, 4)) == ((1, 5), (2, 6))


def test_fcn_receptive_fields_of_the_skips():
    net = models.fcn8s(init="zeros")
    assert receptive_field(net, "pool3")[0][:2] == (44, 8)
    assert receptive_field(net, "pool4")[0][:2] == (100, 16)
    assert receptive_field(net, "score_fr")[0][:2] == (404, 32)
    assert total_stride(net) == 32


# ----------------------------------------------------------------------------- shapes
@given(st.integers(1, 70), st.integers(1, 70))
@settings(deadline=None, max_examples=8)
def test_blob_shapes_match_a_forward_pass(h, w):
    net = models.fcn8s(5, loss=False, backbone="micro")
    x = np.random.default_rng(0).standard_normal((1, 3, h, w)).astype(np.float32)
    y = net.forward(data=x)
    shapes = blob_shapes(net, (h, w))
    assert y.shape == (1, 5, h, w)
    for blob, value in net.blobs.items():
        assert shapes[blob] == value.shape[1:], blob


def test_blob_shapes_refuse_inputs_too_small_naming_the_layer():
    net = models.fcn32s(init="zeros", first_pad=81)          # fc6 7x7 needs a 7x7 pool5
    assert not fits(net, 1)
    with pytest.raises(ShapeError) as e:
        blob_shapes(net, 1)
    assert "'fc6'" in str(e.value) and "1x1" in str(e.value)
    assert fits(net, 100)


def test_blob_shapes_know_fully_connected_layers():
    net = models.vgg_classifier("micro", num_classes=3, input_size=64, init="zeros")
    assert blob_shapes(net, 64)["fc8"] == (3, 1, 1)
    with pytest.raises(ShapeError, match="fully connected"):
        blob_shapes(net, 96)


# ----------------------------------------------------------------------------- the table
def test_rf_table_shows_sizes_fields_and_crop_offsets():
    text = rf_table(models.fcn8s(init="zeros"), (500, 500))
    rows = {line.split()[0]: line.split() for line in text.splitlines()[1:]}
    assert rows["score_fr"][3:9] == ["21", "x", "16", "x", "16", "404"]
    assert rows["score_fr"][9] == "32"
    assert rows["score_pool4c"][-2:] == ["offset", "5"]
    assert rows["score_pool3c"][-2:] == ["offset", "9"]
    assert rows["score"][-2:] == ["offset", "31"]
    assert rows["upscore8"][5] == "568"
    assert rows["conv1_1"][5] == "698"


def test_rf_table_rectangular_input_and_too_small():
    net = models.fcn32s(init="zeros", first_pad=81)
    text = rf_table(net, (250, 1))
    assert "512 x 13 x 6" in text                            # pool5: 250+160 / 32, 1+160 / 32
    assert "too small" in text and text.splitlines()[-1].startswith("note:")
