"""The receptive field of one unit, drawn on an image: which input pixels one score sees.

    python examples/receptive_field.py                                 # fcn8s_tiny, score_fr
    python examples/receptive_field.py --model fcn8s --size 500 500 --blob score_fr
    python examples/receptive_field.py --blob pool3 --unit 4 6 --gradient --out rf.png

Size, stride and offset come from composing the layers' coordinate maps (minifcn.coordmap:
f_ks o g_k's' = (f o g)_{k' + (k-1)s', ss'}); nothing runs for them, so even the full VGG16
FCNs are drawn instantly. The canvas grows to show the part of the field that lies in the
padding (grey): with conv1_1's pad 100 much of it does. Red: the field of the chosen unit;
yellow: its centre (the inverse coordinate map); white dots: centres of its neighbours, one
stride apart. --gradient also runs the net (small models) and shades in green where the
gradient of the unit reaches: the "effective" field, usually much smaller than the maximal one.
"""
import argparse

import numpy as np
from PIL import Image, ImageDraw

from minifcn import models
from minifcn.coordmap import blob_shapes, coord_map, inverse, receptive_field, unit_field


def picture(path, size, seed):
    """An RGB uint8 image: a file, or a synthetic scene of the demo's dataset."""
    if path:
        return np.asarray(Image.open(path).convert("RGB"))
    from minifcn.data import SyntheticShapes
    h, w = size
    img, _ = SyntheticShapes(1, seed=seed, size=(min(h, w), max(h, w)))[0]
    return np.asarray(Image.fromarray(img).resize((w, h)))


def effective_field(net, blob, unit, img):
    """|d unit / d input| summed over channels: where the unit's gradient reaches."""
    from minifcn.data import preprocess
    rng = np.random.default_rng(0)
    for layer in net.layers.values():      # score layers start at zero: no gradient would flow
        w = layer.params.get("weight")
        if w is not None and not w.any():
            layer.params["weight"] = (0.01 * rng.standard_normal(w.shape)).astype(w.dtype)
    x = preprocess(img)[None]
    net.forward(data=x)
    dout = np.zeros_like(net.blobs[blob])
    dout[0, :, unit[0], unit[1]] = 1.0
    return np.abs(net.backward(grads={blob: dout})[0]).sum(0)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="fcn8s_tiny", choices=sorted(models.MODELS))
    p.add_argument("--blob", default="score_fr", help="whose unit (any blob of the net)")
    p.add_argument("--unit", type=int, nargs=2, metavar=("I", "J"), help="default: the centre")
    p.add_argument("--size", type=int, nargs=2, default=[96, 128], metavar=("H", "W"))
    p.add_argument("--image", help="an image file (default: a synthetic scene)")
    p.add_argument("--gradient", action="store_true", help="also draw the effective field")
    p.add_argument("--out", default="receptive_field.png")
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args(argv)

    img = picture(a.image, a.size, a.seed)
    H, W = img.shape[:2]
    net = models.build(a.model, loss=False, materialize=a.gradient)
    if a.blob not in net.producer:
        raise SystemExit(f"{a.model} has no blob {a.blob!r}; blobs: {', '.join(net.producer)}")
    shape = blob_shapes(net, (H, W))[a.blob]
    i, j = a.unit or (shape[1] // 2, shape[2] // 2)
    (size_h, stride_h, off_h), (size_w, stride_w, off_w) = receptive_field(net, a.blob)
    (y0, y1), (x0, x1) = unit_field(net, a.blob, (i, j))
    cy, cx = (float(c) for c in
              (a * u + b for (a, b), u in zip(inverse(coord_map(net, "data", a.blob)), (i, j))))
    print(f"{a.model}, input {H}x{W}: {a.blob} is {shape[1]}x{shape[2]}; its units see "
          f"{size_h}x{size_w} px, {stride_h} px apart, unit 0 from ({off_h}, {off_w})")
    print(f"unit ({i}, {j}): rows {y0}..{y1}, cols {x0}..{x1}, centre ({cy:g}, {cx:g})")

    # a canvas holding the image and the whole field, the padding grey
    top, left = max(0, -y0) + 4, max(0, -x0) + 4
    ch, cw = top + max(H, y1 + 1) + 4, left + max(W, x1 + 1) + 4
    canvas = np.full((ch, cw, 3), 128, np.uint8)
    canvas[top:top + H, left:left + W] = img
    effective = None
    if a.gradient:
        g = effective_field(net, a.blob, (i, j), img)
        g = np.sqrt(g / max(g.max(), 1e-12))[..., None]          # sqrt: show the faint tail
        region = canvas[top:top + H, left:left + W].astype(float)
        canvas[top:top + H, left:left + W] = (region * (1 - 0.7 * g)
                                              + 0.7 * g * [0, 255, 0]).astype(np.uint8)
        inside = np.argwhere(g[..., 0] > 0)
        effective = ((int(inside[:, 0].min()), int(inside[:, 0].max())),
                     (int(inside[:, 1].min()), int(inside[:, 1].max())))
        print(f"effective field (nonzero gradient): rows {effective[0][0]}..{effective[0][1]}"
              f", cols {effective[1][0]}..{effective[1][1]}")
    pic = Image.fromarray(canvas)
    d = ImageDraw.Draw(pic)
    d.rectangle([left - 1, top - 1, left + W, top + H], outline=(0, 0, 0))
    for u in range(shape[1]):
        for v in range(shape[2]):
            py = float(cy + (u - i) * stride_h) + top
            px = float(cx + (v - j) * stride_w) + left
            d.point((px, py), fill=(255, 255, 255))
    d.rectangle([left + x0, top + y0, left + x1, top + y1], outline=(255, 0, 0), width=2)
    d.ellipse([left + cx - 3, top + cy - 3, left + cx + 3, top + cy + 3], fill=(255, 255, 0))
    pic.save(a.out)
    print(f"wrote {a.out} ({cw}x{ch})")
    return {"field": ((y0, y1), (x0, x1)), "size": (size_h, size_w),
            "stride": (stride_h, stride_w), "center": (cy, cx), "effective": effective,
            "out": a.out}


if __name__ == "__main__":
    main()
