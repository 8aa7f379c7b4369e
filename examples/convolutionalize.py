"""Section 3.1, "Adapting classifiers for dense prediction": fully connected layers are
convolutions whose kernels cover their entire input, so a classifier, convolutionalized,
slides over a larger image and scores every patch at once.

    python examples/convolutionalize.py                    # micro backbone, a 4 x 4 grid
    python examples/convolutionalize.py --backbone tiny --grid 3 6

A classifier for S x S inputs is built without padding (so a patch alone sees exactly what
the whole-image net sees under it), then run two ways on an image of S + 32 (g - 1) pixels:
  patchwise    the classifier on each of the g x g patches, 32 pixels apart
  whole image  convolutionalize(classifier) once: a g x g map of scores
The two agree to rounding; the whole-image pass shares the computation of overlapping
patches, which is what makes FCN training and inference fast (the paper's "5x" for AlexNet).
"""
import argparse
import time

import numpy as np

import minifcn
from minifcn import models
from minifcn.coordmap import receptive_field


def build_classifier(backbone, h5, num_classes, seed):
    """A classifier whose fc6 sees an h5 x h5 pool5, on the input size that fits exactly."""
    probe = models.vgg_classifier(backbone, num_classes, input_size=512, conv_pad=0,
                                  materialize=False)
    (rf, stride, _), _ = receptive_field(probe, "pool5")
    size = rf + stride * (h5 - 1)
    clf = models.vgg_classifier(backbone, num_classes, input_size=size, conv_pad=0,
                                dtype=np.float64, seed=seed).eval()
    for layer in clf.layers.values():               # nonzero biases make the check honest
        if "bias" in layer.params:
            layer.params["bias"][:] = np.random.default_rng(seed).uniform(
                0.05, 0.2, layer.params["bias"].shape)
    return clf, size, stride


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--backbone", default="micro", choices=sorted(models.BACKBONES))
    p.add_argument("--grid", type=int, nargs="+", default=[4], metavar="G",
                   help="grid of patches: G (square) or GH GW")
    p.add_argument("--pool5", type=int, default=2, help="pool5 size fc6 sees (7 in VGG16)")
    p.add_argument("--classes", type=int, default=10)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="cpu", choices=minifcn.DEVICES)
    a = p.parse_args(argv)
    gh, gw = (a.grid * 2)[:2]
    minifcn.set_device(a.device)

    clf, size, stride = build_classifier(a.backbone, a.pool5, a.classes, a.seed)
    fcn = models.convolutionalize(clf).eval()
    print(f"{a.backbone} classifier on {size}x{size} inputs; fully connected layers:")
    for name in ("fc6", "fc7", "fc8"):
        fc, conv = clf.layers[name], fcn.layers[name]
        print(f"  {name}: weight {fc.params['weight'].shape} -> conv "
              f"{conv.params['weight'].shape} (kernel {conv.kernel[0]}x{conv.kernel[1]})")

    H, W = size + stride * (gh - 1), size + stride * (gw - 1)
    x = np.random.default_rng(a.seed).standard_normal((1, 3, H, W))
    clf.forward(data=x[:, :, :size, :size])              # warm up (JIT compilation)
    t0 = time.perf_counter()
    patchwise = np.zeros((1, a.classes, gh, gw))
    for i in range(gh):
        for j in range(gw):
            patch = x[:, :, stride * i:stride * i + size, stride * j:stride * j + size]
            patchwise[:, :, i, j] = clf.forward(data=patch)[:, :, 0, 0]
    t_patch = time.perf_counter() - t0
    t0 = time.perf_counter()
    whole = fcn.forward(data=x)
    t_whole = time.perf_counter() - t0

    err = float(np.abs(whole - patchwise).max() / np.abs(patchwise).max())
    print(f"image {H}x{W}: score map {whole.shape[2]}x{whole.shape[3]} "
          f"(one unit per {stride} px)")
    print(f"  patchwise  : {gh * gw} classifier runs, {t_patch * 1e3:8.1f} ms")
    print(f"  whole image: 1 run of the FCN,   {t_whole * 1e3:8.1f} ms")
    print(f"  largest relative difference: {err:.1e}  ({'equal' if err < 1e-9 else 'DIFFER'})")
    return {"max_rel_err": err, "shape": whole.shape, "t_patch": t_patch, "t_whole": t_whole}


if __name__ == "__main__":
    main()
