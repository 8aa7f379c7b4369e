"""Pictures: palette masks, colour overlays and training curves, drawn with Pillow alone."""
from __future__ import annotations

import numpy as np
from PIL import Image, ImageDraw

from .data import label_image, voc_colormap
from .files import atomic_write


def _save_png(img, path):
    atomic_write(path, lambda f: img.save(f, format="PNG"))


def save_mask(label, path):
    _save_png(label_image(label), path)


def overlay(image_rgb, label, alpha=0.5):
    """The image with the class colours blended over every non-background pixel."""
    colours = voc_colormap(256)[np.asarray(label, dtype=np.uint8)]
    img = np.asarray(image_rgb, dtype=np.float32)
    fg = (np.asarray(label) != 0)[..., None]
    out = np.where(fg, (1 - alpha) * img + alpha * colours, img)
    return Image.fromarray(out.clip(0, 255).astype(np.uint8), mode="RGB")


def save_overlay(image_rgb, label, path, truth=None):
    """Overlay of the prediction; with truth, [image | truth | prediction] side by side."""
    pred = overlay(image_rgb, label)
    if truth is not None:
        panels = [Image.fromarray(np.asarray(image_rgb, np.uint8)), overlay(image_rgb, truth),
                  pred]
        w, h = pred.size
        sheet = Image.new("RGB", (3 * w + 8, h), "white")
        for i, p in enumerate(panels):
            sheet.paste(p, (i * (w + 4), 0))
        pred = sheet
    _save_png(pred, path)


def _plot(draw, box, xs, ys, colour, x_max, y_min, y_max):
    x0, y0, x1, y1 = box
    pts = [(x0 + (x1 - x0) * x / max(x_max, 1),
            y1 - (y1 - y0) * (y - y_min) / max(y_max - y_min, 1e-12)) for x, y in zip(xs, ys)]
    if len(pts) > 1:
        draw.line(pts, fill=colour, width=2)
    for p in pts[-1:]:
        draw.ellipse([p[0] - 2, p[1] - 2, p[0] + 2, p[1] + 2], fill=colour)


def save_curves(history, path, size=(720, 300)):
    """Two panels from the training log: loss against iteration, validation mean IU."""
    W, H = size
    img = Image.new("RGB", size, "white")
    d = ImageDraw.Draw(img)
    train = [r for r in history if "loss" in r]
    val = [r for r in history if "val_mean_iu" in r]
    x_max = max((r["iter"] for r in history), default=1)
    panels = [("training loss", [r["iter"] for r in train], [r["loss"] for r in train],
               (200, 40, 40)),
              ("validation mean IU", [r["iter"] for r in val], [r["val_mean_iu"] for r in val],
               (30, 90, 200))]
    for i, (title, xs, ys, colour) in enumerate(panels):
        box = (i * W // 2 + 40, 30, (i + 1) * W // 2 - 15, H - 35)
        d.rectangle(box, outline=(120, 120, 120))
        finite = [y for y in ys if np.isfinite(y)]
        lo, hi = (0.0, 1.0) if "IU" in title else (min(finite, default=0), max(finite, default=1))
        d.text((box[0], 8), f"{title}" + (f"  (last {ys[-1]:.3f})" if ys else ""),
               fill=(0, 0, 0))
        d.text((box[0] - 35, box[1]), f"{hi:.2f}", fill=(80, 80, 80))
        d.text((box[0] - 35, box[3] - 10), f"{lo:.2f}", fill=(80, 80, 80))
        d.text((box[2] - 40, box[3] + 8), f"iter {x_max}", fill=(80, 80, 80))
        _plot(d, box, xs, ys, colour, x_max, lo, hi)
    _save_png(img, path)
