"""Pictures: palette masks (Pillow), and figures drawn with matplotlib: training curves,
overlays with panel titles and a legend of class names, a confusion matrix, per-class IU.

Figures are made with matplotlib's object API on its Agg canvas (Figure + FigureCanvasAgg),
never pyplot: no display is needed, no global backend is switched, nothing is left open.
Every file is written atomically (minifcn.files), so a crash never leaves half a PNG.
"""
from __future__ import annotations

import numpy as np

from .data import label_image, voc_colormap
from .files import atomic_write


def save_mask(label, path):
    """The class map as a palette PNG (the VOC colours), as SegmentationClass/*.png."""
    atomic_write(path, lambda f: label_image(label).save(f, format="PNG"))


def _figure(w, h):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    fig = Figure(figsize=(w, h), dpi=100, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _save(fig, path):
    atomic_write(path, lambda f: fig.savefig(f, format="png"))


def _names(class_names, n):
    return list(class_names) if class_names is not None else [f"class {i}" for i in range(n)]


def overlay(image_rgb, label, alpha=0.5):
    """The image (uint8 H x W x 3) with the class colours blended over every non-background
    pixel; void (255) is drawn in its palette colour too."""
    label = np.asarray(label).astype(np.int64)
    colours = voc_colormap(max(256, int(label.max(initial=0)) + 1))[label].astype(np.float32)
    img = np.asarray(image_rgb, dtype=np.float32)
    fg = (np.asarray(label) != 0)[..., None]
    return np.where(fg, (1 - alpha) * img + alpha * colours, img).clip(0, 255).astype(np.uint8)


def save_overlay(image_rgb, label, path, truth=None, class_names=None):
    """Panels image | [truth |] prediction, titled, with a legend of the classes shown."""
    from matplotlib.patches import Patch
    img = np.asarray(image_rgb, dtype=np.uint8)
    panels = [("image", img)] + ([("truth", overlay(img, truth))] if truth is not None else [])
    panels.append(("prediction", overlay(img, label)))
    h, w = img.shape[:2]
    scale = 2.6 / max(h, w)                  # each panel about 2.6 inches on its long side
    fig = _figure(max(5.0, len(panels) * w * scale + 0.4), h * scale + 1.3)
    for ax, (title, im) in zip(fig.subplots(1, len(panels), squeeze=False)[0], panels):
        ax.imshow(im, interpolation="nearest")
        ax.set_title(title)
        ax.set_axis_off()
    shown = np.unique(np.concatenate([np.ravel(label)] + ([np.ravel(truth)]
                                                          if truth is not None else [])))
    cmap = voc_colormap(max(256, int(shown.max()) + 1)) / 255.0
    names = _names(class_names, int(shown[shown != 255].max(initial=0)) + 1)
    handles = [Patch(color=cmap[c], label="void" if c == 255 and len(names) <= 255 else
                     names[c] if c < len(names) else f"class {c}") for c in shown[:18]]
    if len(shown) > 18:                      # more would not be readable
        handles.append(Patch(color="white", label=f"... {len(shown) - 18} more classes"))
    fig.legend(handles=handles, loc="outside lower center", ncol=min(len(handles), 6),
               frameon=False)
    _save(fig, path)


def save_curves(history, path):
    """Four panels from the training log (Trainer.history): training loss, validation loss,
    validation mean IU and the learning rate, each against the iteration."""
    def series(key):
        rows = [r for r in history if key in r and r[key] is not None]
        return [r["iter"] for r in rows], [r[key] for r in rows]

    fig = _figure(10, 6.5)
    axes = fig.subplots(2, 2, sharex=True).ravel()
    for ax, (key, title, colour) in zip(axes, [
            ("loss", "training loss", "tab:red"), ("val_loss", "validation loss", "tab:orange"),
            ("val_mean_iu", "validation mean IU", "tab:blue"),
            ("lr", "learning rate", "tab:green")]):
        xs, ys = series(key)
        # Markers too: a run validated once still shows its one point.
        ax.plot(xs, ys, color=colour, marker="o" if len(xs) < 30 else None, markersize=4)
        ax.set_title(title + (f" (last {ys[-1]:.4g})" if ys else " (none logged)"))
        ax.set_ylabel(title.split()[-1] if key != "val_mean_iu" else "mean IU")
        ax.grid(alpha=0.3)
        if key == "val_mean_iu":
            ax.set_ylim(0, 1)
    for ax in axes[2:]:
        ax.set_xlabel("iteration")
    _save(fig, path)


def save_confusion(hist, path, class_names=None):
    """The confusion matrix (rows: ground truth, columns: prediction), each row normalised
    to the fraction of that class's pixels, with the pixel counts written in."""
    hist = np.asarray(hist, dtype=np.float64)
    n = len(hist)
    names = _names(class_names, n)
    with np.errstate(invalid="ignore", divide="ignore"):
        frac = hist / hist.sum(axis=1, keepdims=True)
    side = min(14.0, 3.0 + 0.6 * n)
    fig = _figure(side + 1.5, side)
    ax = fig.subplots()
    im = ax.imshow(np.nan_to_num(frac), cmap="Blues", vmin=0, vmax=1)
    fig.colorbar(im, ax=ax, label="fraction of the true class's pixels")
    ax.set_xticks(range(n), names, rotation=45, ha="right")
    ax.set_yticks(range(n), names)
    ax.set_xlabel("predicted class")
    ax.set_ylabel("true class")
    ax.set_title("confusion matrix")
    if n <= 25:                              # beyond that the numbers would not be readable
        for i in range(n):
            for j in range(n):
                ax.text(j, i, f"{int(hist[i, j])}", ha="center", va="center", fontsize=8,
                        color="white" if np.nan_to_num(frac[i, j]) > 0.5 else "black")
    _save(fig, path)


def save_class_iu(per_class_iu, path, class_names=None):
    """A bar per class: its IU (classes never seen, NaN, are marked '-')."""
    iu = np.asarray(per_class_iu, dtype=np.float64)
    names = _names(class_names, len(iu))
    fig = _figure(min(16.0, 3.0 + 0.5 * len(iu)), 4.5)
    ax = fig.subplots()
    ax.bar(range(len(iu)), np.nan_to_num(iu), color="tab:blue")
    for i, v in enumerate(iu):
        ax.text(i, (0 if np.isnan(v) else v) + 0.01, "-" if np.isnan(v) else f"{v:.2f}",
                ha="center", va="bottom", fontsize=8)
    ax.set_xticks(range(len(iu)), names, rotation=45, ha="right")
    ax.set_ylim(0, 1.08)
    ax.set_ylabel("IU")
    ax.set_title(f"per-class IU (mean IU {np.nanmean(iu) if np.isfinite(iu).any() else 0:.3f})")
    ax.grid(axis="y", alpha=0.3)
    _save(fig, path)
