"""The paper examples run on tiny settings (they double as regression tests)."""
import runpy
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import minifcn

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


def example(name):
    """The example's main(), loaded from its file (examples/ is not a package)."""
    return runpy.run_path(str(EXAMPLES / f"{name}.py"), run_name="example")["main"]


@pytest.fixture(autouse=True)
def keep_device():
    old = minifcn.get_device()
    yield
    minifcn.set_device(old)


def test_convolutionalize_example(capsys):
    out = example("convolutionalize")(["--grid", "2", "3", "--classes", "4", "--device",
                                       "numpy"])
    assert out["shape"] == (1, 4, 2, 3) and out["max_rel_err"] < 1e-9
    text = capsys.readouterr().out
    assert "fc6: weight (16, 64) -> conv (16, 16, 2, 2)" in text and "(equal)" in text


@pytest.mark.parametrize("args", [[], ["--pool", "--stride", "3", "--size", "26"]])
def test_shift_and_stitch_example(args, capsys):
    out = example("shift_and_stitch")(args)
    assert out["err"] < 1e-12 and out["phase_err"] < 1e-12
    assert "dilation" in capsys.readouterr().out


def test_receptive_field_example_draws_a_png(tmp_path, capsys):
    png = tmp_path / "rf.png"
    out = example("receptive_field")(["--model", "fcn8s", "--size", "500", "500",
                                      "--out", str(png)])
    assert out["size"] == (404, 404) and out["stride"] == (32, 32)
    assert out["field"] == ((67, 470), (67, 470))               # unit (8, 8) of score_fr
    img = np.asarray(Image.open(png))
    assert img.shape[:2] == (508, 508)
    assert tuple(img[4 + 67, 4 + 200]) == (255, 0, 0)           # the field's top edge, red


def test_receptive_field_example_effective_field(tmp_path, capsys):
    png = tmp_path / "rf.png"
    out = example("receptive_field")(["--blob", "pool3", "--unit", "4", "6", "--size", "64",
                                      "80", "--gradient", "--out", str(png)])
    assert "pool3 is 8x10; its units see 44x44 px, 8 px apart" in capsys.readouterr().out
    assert out["field"] == ((14, 57), (30, 73))
    # the gradient reaches only inside the maximal field (max pooling may narrow it)
    for (e0, e1), (f0, f1) in zip(out["effective"], out["field"]):
        assert f0 <= e0 <= e1 <= f1
    assert png.exists()
