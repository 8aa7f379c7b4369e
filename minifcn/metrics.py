"""Segmentation scores: the confusion matrix and the four metrics of the FCN paper.

Everything here is computed from one n x n confusion matrix ``hist`` (rows = ground truth class,
columns = predicted class), accumulated over a whole validation set, exactly as the reference
``score.py`` of shelhamer/fcn.berkeleyvision.org does. Pixels whose ground truth is outside
[0, n) -- in PASCAL VOC the value 255 marks "void" object borders -- are not counted at all.

With n_ij = pixels of class i predicted as class j and t_i = sum_j n_ij (pixels of class i), the
paper (section 5, "Metrics") defines

    pixel accuracy           sum_i n_ii / sum_i t_i
    mean accuracy            (1/n_cl) sum_i n_ii / t_i
    mean IU                  (1/n_cl) sum_i n_ii / (t_i + sum_j n_ji - n_ii)
    frequency weighted IU    (sum_k t_k)^-1 sum_i t_i n_ii / (t_i + sum_j n_ji - n_ii)

and, like the reference, the means are NaN-means: a class whose ratio is 0/0 is left out of the
mean instead of counting as 0 or 1. For IU that is a class absent from both ground truth and
prediction; for accuracy it is a class absent from the ground truth (its accuracy n_ii / t_i
is undefined even if it was wrongly predicted -- that mistake still lowers the IU of the class).
"""
from __future__ import annotations

import json
import warnings

import numpy as np

from . import functional as F
from .files import atomic_write_text

__all__ = ["fast_hist", "ConfusionMatrix", "scores_from_hist", "format_table", "save_json"]


def fast_hist(gt, pred, n):
    """Confusion matrix of one image (or any batch), as score.py's ``fast_hist``.

    gt, pred: integer arrays of the same number of elements (any shape); gt values outside
    [0, n) (255 = void) are ignored. pred values must be in [0, n) (not checked here, as in the
    reference; ``ConfusionMatrix.update`` checks them; out of range they are not counted).
    Returns an (n, n) int64 array, hist[i, j] = pixels with ground truth i predicted as j.
    """
    # The counting is functional.confusion_update on the numpy device (one bincount over the
    # flat index n*gt + pred, see kernels/reference.py): the op evaluate() runs on the net's
    # own device.
    gt, pred = np.asarray(gt), np.asarray(pred)
    return F.confusion_update(np.zeros((n, n), dtype=np.int64), gt, pred, n, device="numpy")


def scores_from_hist(hist):
    """The paper's four metrics (and per-class IU / accuracy) from an (n, n) confusion matrix.

    Returns a dict: ``pixel_acc``, ``mean_acc``, ``mean_iu``, ``fw_iu`` (floats; NaN if nothing
    was counted) and ``per_class_iu``, ``per_class_acc`` (float64 arrays of length n, NaN where
    the ratio is 0/0, see the module docstring).
    """
    hist = np.asarray(hist, dtype=np.float64)
    tp = np.diag(hist)
    gt_total = hist.sum(axis=1)      # t_i: pixels whose ground truth is i
    pred_total = hist.sum(axis=0)    # sum_j n_ji: pixels predicted as i
    total = hist.sum()
    # 0/0 is expected (absent classes) and becomes NaN on purpose; nanmean of an all-NaN vector
    # (an empty matrix) warns "Mean of empty slice" -- the NaN it returns is the right answer.
    with np.errstate(divide="ignore", invalid="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        per_class_acc = tp / gt_total
        per_class_iu = tp / (gt_total + pred_total - tp)
        pixel_acc = tp.sum() / total
        mean_acc = np.nanmean(per_class_acc)
        mean_iu = np.nanmean(per_class_iu)
        freq = gt_total / total
        present = freq > 0
        fw_iu = (freq[present] * per_class_iu[present]).sum() if total > 0 else np.nan
    return {
        "pixel_acc": float(pixel_acc),
        "mean_acc": float(mean_acc),
        "mean_iu": float(mean_iu),
        "fw_iu": float(fw_iu),
        "per_class_iu": per_class_iu,
        "per_class_acc": per_class_acc,
    }


class ConfusionMatrix:
    """Accumulates a confusion matrix over many images; ``scores()`` gives the paper's metrics.

    >>> cm = ConfusionMatrix(21)
    >>> for label, pred in pairs:          # label, pred: (H, W) or (N, H, W) integer arrays
    ...     cm.update(label, pred)
    >>> cm.scores()["mean_iu"]
    """

    def __init__(self, num_classes):
        if int(num_classes) < 1:
            raise ValueError(f"num_classes must be >= 1, got {num_classes}")
        self.num_classes = int(num_classes)
        self.hist = np.zeros((self.num_classes, self.num_classes), dtype=np.int64)

    def reset(self):
        """Forget everything counted so far."""
        self.hist[...] = 0

    def update(self, gt, pred):
        """Add one image or batch. gt, pred: integer arrays of equal shape; gt 255 (or any value
        outside [0, n)) is void and ignored; pred must be in [0, n), e.g. ``score.argmax(1)``."""
        gt = np.asarray(gt)
        pred = np.asarray(pred)
        if gt.shape != pred.shape:
            raise ValueError(f"ground truth shape {gt.shape} and prediction shape {pred.shape} "
                             "differ; crop or resize the prediction to the label first")
        for name, a in (("ground truth", gt), ("prediction", pred)):
            if not (np.issubdtype(a.dtype, np.integer) or a.dtype == bool):
                raise ValueError(f"{name} must hold integer class indices, got dtype {a.dtype} "
                                 "(take argmax over the class axis of the scores)")
        n = self.num_classes
        if pred.size and (pred.min() < 0 or pred.max() >= n):
            bad = np.unique(pred[(pred < 0) | (pred >= n)])
            raise ValueError(f"prediction values {bad[:10].tolist()} are outside [0, {n}) "
                             f"for num_classes={n}")
        self.hist += fast_hist(gt, pred, n)
        return self

    def scores(self):
        """dict of pixel_acc, mean_acc, mean_iu, fw_iu, per_class_iu, per_class_acc."""
        return scores_from_hist(self.hist)


def format_table(scores, class_names=None):
    """A readable table: per-class IU and accuracy (in %), then the four metrics.

    scores: the dict from ``ConfusionMatrix.scores()``. Classes that never occurred (NaN) print
    as '-'. Returns a string (no trailing newline).
    """
    iu = np.asarray(scores["per_class_iu"], dtype=np.float64)
    acc = np.asarray(scores.get("per_class_acc", np.full(iu.shape, np.nan)), dtype=np.float64)
    if class_names is None:
        class_names = [f"class {i}" for i in range(len(iu))]
    if len(class_names) != len(iu):
        raise ValueError(f"{len(class_names)} class names for {len(iu)} classes")

    def pct(v):
        return "     -" if np.isnan(v) else f"{100 * v:6.1f}"

    width = max(12, max(len(str(c)) for c in class_names))
    lines = [f"{'class':<{width}}  {'IU':>6}  {'acc':>6}"]
    for name, u, a in zip(class_names, iu, acc):
        lines.append(f"{str(name):<{width}}  {pct(u)}  {pct(a)}")
    lines.append("-" * (width + 16))
    for key, label in (("pixel_acc", "pixel acc"), ("mean_acc", "mean acc"),
                       ("mean_iu", "mean IU"), ("fw_iu", "f.w. IU")):
        lines.append(f"{label:<{width}}  {pct(scores[key])}")
    return "\n".join(lines)


def save_json(path, scores, class_names=None):
    """Write evaluate()'s scores as JSON (atomically): the four metrics, per-class IU by
    class name (null: a class never seen, 0/0) and the confusion matrix (rows: ground truth,
    columns: prediction, pixel counts)."""
    def num(v):
        return None if np.isnan(v) else float(v)
    iu = [num(v) for v in scores["per_class_iu"]]
    names = [str(c) for c in class_names] if class_names is not None else \
        [f"class {i}" for i in range(len(iu))]
    out = {k: num(scores[k]) for k in ("pixel_acc", "mean_acc", "mean_iu", "fw_iu")}
    out.update(class_names=names, per_class_iu=dict(zip(names, iu)),
               confusion=np.asarray(scores["confusion"].hist).tolist())
    atomic_write_text(path, json.dumps(out, indent=1) + "\n")
