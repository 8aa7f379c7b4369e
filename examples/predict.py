"""Segment images of any size: a palette PNG mask and a colour overlay for each.

    python examples/predict.py --weights runs/demo/checkpoint.npz photo1.jpg photo2.png

An FCN takes any input size and returns a score map of that size: there is no resizing
here. The crops inside the net (derived from coordinate maps) align the upsampled scores
with the input whatever its size.
"""
import argparse
import os

import numpy as np
from PIL import Image

from minifcn import models, train, viz
from minifcn.data import preprocess
from minifcn.weights import load_weights


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("images", nargs="+")
    p.add_argument("--model", default="fcn8s_tiny")
    p.add_argument("--weights", required=True)
    p.add_argument("--num-classes", type=int, default=5)
    p.add_argument("--out", default="predictions")
    p.add_argument("--device", default="cpu")
    a = p.parse_args(argv)

    net = models.build(a.model, num_classes=a.num_classes, loss=False)
    load_weights(net, a.weights)
    net.to(a.device)
    masks = {}
    for path in a.images:
        img = np.asarray(Image.open(path).convert("RGB"))
        pred = train.predict(net, preprocess(img)[None])[0]      # (H, W) class indices
        stem = os.path.splitext(os.path.basename(path))[0]
        viz.save_mask(pred, os.path.join(a.out, f"{stem}.png"))
        viz.save_overlay(img, pred, os.path.join(a.out, f"{stem}_overlay.png"))
        print(f"{path} ({img.shape[1]}x{img.shape[0]}): classes present "
              f"{np.unique(pred).tolist()} -> {a.out}/{stem}.png")
        masks[path] = pred
    return masks


if __name__ == "__main__":
    main()
