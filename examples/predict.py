"""Segment images of any size: a palette PNG mask and a colour overlay for each.

    python examples/predict.py --weights runs/demo/checkpoint.npz photo1.jpg photo2.png

An FCN takes any input size and returns a score map of that size: there is no resizing
here. The crops inside the net (derived from coordinate maps) align the upsampled scores
with the input whatever its size. A training checkpoint says which model it holds, its
classes and its preprocessing, so minifcn.load needs nothing else; for plain weights give
--model and --num-classes.
"""
import argparse
import os

import numpy as np

import minifcn
from minifcn import viz
from minifcn.files import read_image


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("images", nargs="+")
    p.add_argument("--weights", required=True)
    p.add_argument("--model", default=None, help="default: the checkpoint's")
    p.add_argument("--num-classes", type=int, default=None, help="default: the checkpoint's")
    p.add_argument("--out", default="predictions")
    p.add_argument("--device", default="cpu")
    a = p.parse_args(argv)

    model = minifcn.load(a.weights, model=a.model, num_classes=a.num_classes, device=a.device)
    masks = {}
    for path in a.images:
        img = read_image(path)                     # any image mode -> RGB uint8, by one rule
        pred = model.predict(img)                  # (H, W) class indices
        stem = os.path.splitext(os.path.basename(path))[0]
        viz.save_mask(pred, os.path.join(a.out, f"{stem}.png"))
        viz.save_overlay(img, pred, os.path.join(a.out, f"{stem}_overlay.png"))
        print(f"{path} ({img.shape[1]}x{img.shape[0]}): classes present "
              f"{np.unique(pred).tolist()} -> {a.out}/{stem}.png")
        masks[path] = pred
    return masks


if __name__ == "__main__":
    main()
