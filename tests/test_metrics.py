"""Scores against hand computations from the paper's definitions (per-pixel loops, not bincount)."""
import math
import warnings

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from minifcn.metrics import ConfusionMatrix, fast_hist, format_table


def loop_scores(gt, pred, n):
    """The paper's metrics by counting pixels one at a time; void (outside [0, n)) skipped."""
    nij = [[0] * n for _ in range(n)]
    for g, p in zip(np.ravel(gt).tolist(), np.ravel(pred).tolist()):
        if 0 <= g < n:
            nij[g][p] += 1
    t = [sum(nij[i]) for i in range(n)]                       # pixels of class i
    predicted = [sum(nij[j][i] for j in range(n)) for i in range(n)]
    total = sum(t)
    accs = [nij[i][i] / t[i] for i in range(n) if t[i] > 0]
    ius = {i: nij[i][i] / (t[i] + predicted[i] - nij[i][i])
           for i in range(n) if t[i] + predicted[i] > 0}
    return {
        "pixel_acc": sum(nij[i][i] for i in range(n)) / total,
        "mean_acc": sum(accs) / len(accs),
        "mean_iu": sum(ius.values()) / len(ius),
        "fw_iu": sum(t[i] * ius[i] for i in ius if t[i] > 0) / total,
        "ius": ius,
    }


def check(cm, expected):
    s = cm.scores()
    for key in ("pixel_acc", "mean_acc", "mean_iu", "fw_iu"):
        assert s[key] == pytest.approx(expected[key], rel=1e-12), key
    for i, iu in enumerate(s["per_class_iu"]):
        if i in expected["ius"]:
            assert iu == pytest.approx(expected["ius"][i])
        else:
            assert math.isnan(iu)


def test_small_matrix_by_hand():
    gt = np.array([[0, 0, 1, 1],
                   [0, 2, 2, 1]])
    pred = np.array([[0, 1, 1, 1],
                     [0, 2, 0, 1]])
    cm = ConfusionMatrix(3).update(gt, pred)
    # Row = ground truth, column = prediction.
    np.testing.assert_array_equal(cm.hist, [[2, 1, 0], [0, 3, 0], [1, 0, 1]])
    assert cm.hist.dtype == np.int64
    s = cm.scores()
    # Worked out on paper: IU0 = 2/(3+3-2), IU1 = 3/(3+4-3), IU2 = 1/(2+1-1).
    assert s["pixel_acc"] == pytest.approx(6 / 8)
    assert s["mean_acc"] == pytest.approx((2 / 3 + 1 + 1 / 2) / 3)
    assert s["mean_iu"] == pytest.approx((2 / 4 + 3 / 4 + 1 / 2) / 3)
    assert s["fw_iu"] == pytest.approx((3 * 2 / 4 + 3 * 3 / 4 + 2 * 1 / 2) / 8)
    check(cm, loop_scores(gt, pred, 3))


def test_void_pixels_are_ignored():
    gt = np.array([0, 1, 255, 255, 1, 7])   # 7 >= n is ignored too, as in score.py
    pred = np.array([0, 1, 1, 0, 0, 1])
    cm = ConfusionMatrix(2).update(gt, pred)
    np.testing.assert_array_equal(cm.hist, [[1, 0], [1, 1]])
    np.testing.assert_array_equal(fast_hist(gt, pred, 2), cm.hist)
    check(cm, loop_scores(gt, pred, 2))


def test_absent_classes_are_left_out_of_the_means():
    gt = np.array([0, 0, 1, 1, 255])
    pred = np.array([0, 0, 1, 3, 2])        # class 2 absent everywhere (void pixel not counted);
    cm = ConfusionMatrix(4).update(gt, pred)  # class 3 only predicted: IU 0, accuracy undefined
    s = cm.scores()
    assert math.isnan(s["per_class_iu"][2]) and math.isnan(s["per_class_acc"][2])
    assert s["per_class_iu"][3] == 0 and math.isnan(s["per_class_acc"][3])
    assert s["mean_iu"] == pytest.approx((1 + 1 / 2 + 0) / 3)
    assert s["mean_acc"] == pytest.approx((1 + 1 / 2) / 2)
    check(cm, loop_scores(gt, pred, 4))


def test_perfect_prediction_scores_one():
    rng = np.random.default_rng(0)
    gt = rng.integers(0, 5, (3, 7, 9))
    cm = ConfusionMatrix(6).update(gt, gt)   # class 5 never occurs: must not drag means down
    s = cm.scores()
    for key in ("pixel_acc", "mean_acc", "mean_iu", "fw_iu"):
        assert s[key] == pytest.approx(1.0)


def test_empty_matrix_is_nan_without_warnings():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        s = ConfusionMatrix(3).scores()
    assert all(math.isnan(s[k]) for k in ("pixel_acc", "mean_acc", "mean_iu", "fw_iu"))


def test_bad_inputs():
    cm = ConfusionMatrix(3)
    with pytest.raises(ValueError, match=r"\(2, 3\).*\(3, 2\)"):
        cm.update(np.zeros((2, 3), int), np.zeros((3, 2), int))
    with pytest.raises(ValueError, match=r"\[3\]"):
        cm.update(np.zeros(4, int), np.array([0, 1, 2, 3]))
    with pytest.raises(ValueError, match="dtype"):
        cm.update(np.zeros(4, int), np.zeros(4))
    assert cm.hist.sum() == 0


def test_reset_and_table():
    cm = ConfusionMatrix(3).update(np.array([0, 1, 1]), np.array([0, 1, 0]))
    text = format_table(cm.scores(), ["background", "disc", "square"])
    assert "disc" in text and "mean IU" in text and "f.w. IU" in text
    assert "square" in text.splitlines()[3] and "-" in text.splitlines()[3]  # absent class
    cm.reset()
    assert cm.hist.sum() == 0


@settings(deadline=None, max_examples=40)
@given(st.integers(1, 5), st.lists(st.tuples(st.integers(0, 6), st.integers(0, 4)),
                                   min_size=0, max_size=60), st.integers(1, 5))
def test_chunked_updates_equal_one_update(n, pairs, chunks):
    gt = np.array([g if g < n else 255 for g, _ in pairs], dtype=np.int64)
    pred = np.array([p % n for _, p in pairs], dtype=np.int64)
    whole = ConfusionMatrix(n).update(gt, pred)
    parts = ConfusionMatrix(n)
    for g, p in zip(np.array_split(gt, chunks), np.array_split(pred, chunks)):
        parts.update(g, p)
    np.testing.assert_array_equal(parts.hist, whole.hist)
    if len(gt) and (gt < n).any():
        check(whole, loop_scores(gt, pred, n))
