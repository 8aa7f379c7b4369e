"""The section-5 nets as minifcn models: the same layers, parameters and crops as the
reference's prototxts (so their caffemodels load by name), and they train."""
import os

import numpy as np
import pytest

from minifcn import models
from minifcn.caffe import read_net
from minifcn.datasets import evaluate_heads, format_heads
from minifcn.gradcheck import check_net

FIXTURES = os.path.join(os.path.dirname(os.path.abspath(__file__)), "fixtures", "caffe")
PAIRS = {"siftflow_fcn32s": "siftflow-fcn32s/test.prototxt",
         "siftflow_fcn16s": "siftflow-fcn16s/test.prototxt",
         "siftflow_fcn8s": "siftflow-fcn8s/test.prototxt",
         "nyud_fcn32s_color": "nyud-fcn32s-color/test.prototxt",
         "nyud_fcn32s_hha": "nyud-fcn32s-hha/test.prototxt",
         "nyud_fcn32s_color_d": "nyud-fcn32s-color-d/test.prototxt",
         "nyud_fcn32s_color_hha": "nyud-fcn32s-color-hha/test.prototxt",
         "pascalcontext_fcn32s": "pascalcontext-fcn32s/val.prototxt",
         "pascalcontext_fcn16s": "pascalcontext-fcn16s/val.prototxt",
         "pascalcontext_fcn8s": "pascalcontext-fcn8s/val.prototxt"}


@pytest.mark.parametrize("name", sorted(PAIRS))
def test_each_model_is_the_reference_prototxts_net(name):
    ours = models.build(name, materialize=False)
    theirs = read_net(os.path.join(FIXTURES, PAIRS[name]), materialize=False)
    assert {k: v.shape for k, v in ours.params().items()} == \
        {k: v.shape for k, v in theirs.params().items()}
    assert ours.inputs == theirs.inputs and ours.outputs == theirs.outputs
    crops = {n: lyr.offset for n, lyr in ours.layers.items() if hasattr(lyr, "derives_offset")}
    assert crops == {c["layer"]: c["file"] for c in theirs.caffe.crops}
    assert ours.param_specs()["score_fr" + ("_sem" if "siftflow" in name else
                                            "color" if "hha" in name and "color" in name
                                            else "")  + ".bias"] == (2.0, 0.0)


def test_two_headed_siftflow_and_late_fusion_nyud_gradients(rng):
    """On the micro backbone in float64: both heads' losses reach the shared trunk; the
    fused NYUD net's gradient reaches both trunks."""
    net = models.build("siftflow_fcn16s", backbone="micro", dtype=np.float64, init=0.3,
                       score_init=0.3, dropout=0.0, normalize="valid")
    size = (12, 10)
    inputs = {"data": rng.standard_normal((1, 3) + size), "sem": rng.integers(0, 33, (1,) + size),
              "geo": rng.integers(0, 3, (1,) + size)}
    errors = check_net(net, inputs, n_probe=2)
    assert max(errors.values()) < 1e-5, errors
    fused = models.build("nyud_fcn32s_color_hha", backbone="micro", dtype=np.float64, init=0.3,
                         score_init=0.3, dropout=0.0)
    x = {"color": rng.standard_normal((1, 3) + size), "hha": rng.standard_normal((1, 3) + size),
         "label": rng.integers(0, 40, (1,) + size)}
    fused.forward(**x)
    fused.backward(input_grads=False)
    g = fused.grads()
    assert np.abs(g["conv1_1color.weight"]).sum() > 0 and np.abs(g["conv1_1hha.weight"]).sum() > 0


def test_scoring_each_head_of_a_model(tmp_path):
    from minifcn.caffe.commands import scene_dataset
    from minifcn.datasets import write_siftflow
    write_siftflow(tmp_path, {"test": 2}, size=(16, 20))
    net = models.build("siftflow_fcn8s", backbone="micro", init=0.1)
    ds = scene_dataset("siftflow_fcn8s", str(tmp_path), "test")
    res = evaluate_heads(net, ds)
    assert set(res) == {"sem", "geo"}
    text = format_heads(res, ds)
    assert text.splitlines()[1].startswith("geo: pixel acc") and "mean IU" not in \
        text.splitlines()[1]
