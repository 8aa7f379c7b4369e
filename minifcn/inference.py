"""Two lines from a file to a mask:

    model = minifcn.load("runs/a/checkpoint.npz")    # a training checkpoint describes itself
    mask = model.predict("photo.jpg")                # (H, W) class indices; or a PIL image, or
                                                     # an HxWx3 uint8 RGB array
    p = model.predict_proba(img)                     # (C, H, W) softmax probabilities

A training checkpoint records its model name, class count, class names and preprocessing, so
load() needs nothing else. Plain weights (Net.save), a .caffemodel or a .pth do not: give
model="fcn8s" and num_classes=21, or prototxt="deploy.prototxt". An argument that contradicts
the checkpoint is refused by name, never silently preferred.

Images: a path is read by minifcn.files.read_image (any mode to RGB by one stated rule, bombs
refused); an array must be HxWx3 uint8 RGB. Before the forward pass the memory it needs (every
blob of the net at this size, from coordinate-map shape arithmetic, plus the parameters) is
compared with what the machine has free, and an image too big is refused with the estimate.
"""
from __future__ import annotations

import os

import numpy as np

from . import functional as F
from .data import VOC_MEAN_BGR
from .files import _rgb, read_image

__all__ = ["load", "Model", "resolve", "forward_bytes", "check_memory", "to_rgb",
           "ImageTooLarge"]


class ImageTooLarge(ValueError):
    """The forward pass of this image would need more memory than is free (the estimate)."""

DEFAULT_PREPROCESS = {"mean": list(VOC_MEAN_BGR), "channels": "BGR", "scale": 1.0}


def resolve(path, model=None, num_classes=None, mean=None, flags=None):
    """(model name, num_classes, class names, preprocess) for the weights at path: what the
    caller gave, else what the checkpoint says. A value given that differs from the
    checkpoint's is refused, named as flags[...] says (the CLI: "--num-classes"). model and
    num_classes may come back None when neither says; mean, given, replaces the recorded one."""
    from .train import describe
    flags = flags or {"model": "model", "num_classes": "num_classes"}
    d = describe(path)
    for key, given in (("model", model), ("num_classes", num_classes)):
        said = d.get("name" if key == "model" else key)
        if given is not None and said is not None and given != said:
            raise ValueError(f"{flags[key]} {given} contradicts the checkpoint {path}, which "
                             f"holds {said if key == 'model' else f'{said} classes'}; leave "
                             f"{flags[key]} out (the checkpoint says it)")
    pre = dict(d.get("preprocess") or DEFAULT_PREPROCESS)
    if mean is not None:
        pre["mean"] = [float(v) for v in mean]
    return (model or d.get("name"), num_classes or d.get("num_classes"),
            d.get("class_names"), pre)


def to_rgb(image, what="image"):
    """HxWx3 uint8 RGB from a path, a PIL image or such an array; anything else is refused
    naming what is wrong (type, ndim, channels, dtype)."""
    if isinstance(image, (str, os.PathLike)):
        return read_image(image)
    try:
        from PIL import Image
        if isinstance(image, Image.Image):
            return _rgb(image, f"{what} (a PIL {image.mode} image)")
    except ImportError:                      # pragma: no cover - pillow is a dependency
        pass
    if not isinstance(image, np.ndarray):
        raise TypeError(f"{what}: expected a path, a PIL image or an HxWx3 uint8 array, got "
                        f"{type(image).__name__}")
    if image.ndim != 3:
        raise ValueError(f"{what}: expected an HxWx3 array, got {image.ndim} dimensions "
                         f"{image.shape}")
    if image.shape[2] != 3:
        raise ValueError(f"{what}: expected 3 channels (RGB) last, got {image.shape[2]} "
                         f"(shape {image.shape})")
    if image.dtype != np.uint8:
        raise ValueError(f"{what}: expected uint8 (0..255), got {image.dtype}")
    return image


def forward_bytes(net, hw, dtype=np.float32, out="score"):
    """Bytes a keep-all forward pass at input size hw holds: every blob up to `out`, from shape
    arithmetic (coordmap.blob_shapes), plus the parameters. A convolution's im2col workspace
    comes on top while it runs; Model's forward drops each blob once read (FCN-8s at 500x500:
    a peak of 1.1 GB over the imports, not 1.5), so for it this is a margin."""
    from .coordmap import blob_shapes
    size = np.dtype(dtype).itemsize
    shapes = blob_shapes(net, tuple(hw))
    total = 0
    for blob, shape in shapes.items():
        if shape:
            total += int(np.prod([3 if v is None else v for v in shape])) * size
        if blob == out:
            break
    return total + sum(int(v.nbytes) for v in net.params().values())


def available_bytes(device="cpu"):
    """Free memory where the blobs will live: MemAvailable (Linux) or free physical pages on
    the host, free device memory on cuda; None when it cannot be told."""
    if device == "cuda":
        try:
            from numba import cuda
            return int(cuda.current_context().get_memory_info().free)
        except Exception:                    # noqa: BLE001 -- no figure, no check
            return None
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


def check_memory(net, hw, what="image", dtype=np.float32, out="score"):
    """Refuse, before any work, an input whose forward pass needs more memory than is free."""
    need, have = forward_bytes(net, hw, dtype, out), available_bytes(net.device)
    if have is not None and need > have:
        raise ImageTooLarge(f"{what}: a {hw[1]}x{hw[0]} image needs about {need / 2**30:.1f} GiB "
                          f"for {net.name}'s forward pass ({np.dtype(dtype).name} blobs and "
                          f"parameters), more than the {have / 2**30:.1f} GiB free; downscale "
                          f"it or crop it into tiles")
    return need


class Model:
    """A net ready to segment images: preprocessing, forward to the score blob, argmax."""

    def __init__(self, net, num_classes, class_names=None, preprocess=None, out="score"):
        self.net, self.num_classes, self.out = net, int(num_classes), out
        self.class_names = list(class_names) if class_names else None
        self.preprocess = dict(preprocess or DEFAULT_PREPROCESS)
        net.eval()

    def _input(self, rgb):
        p = self.preprocess
        x = (rgb[:, :, ::-1] if p["channels"] == "BGR" else rgb).astype(np.float32)
        x = x * np.float32(p.get("scale", 1.0)) - np.asarray(p["mean"], np.float32)
        dtype = next((v.dtype for v in self.net.params().values()), np.float32)
        return np.ascontiguousarray(x.transpose(2, 0, 1))[None].astype(dtype, copy=False)

    def scores(self, image):
        """(C, H, W) raw class scores of one image (path, PIL image or HxWx3 uint8 array)."""
        rgb = to_rgb(image)
        check_memory(self.net, rgb.shape[:2], image if isinstance(image, str) else "image",
                     out=self.out)
        # No backward follows: each blob goes once read, and what the layers saved for a
        # backward goes after, so a Model holds no activations between images
        s = self.net.forward(data=self._input(rgb), until=self.out, keep=False)
        for layer in self.net.layers.values():
            layer.release()
        self.net.released = True             # (a backward now asks for a forward again)
        return s, rgb

    def predict(self, image, probabilities=False):
        """(H, W) class indices (int64); with probabilities=True, (C, H, W) softmax too."""
        s, _ = self.scores(image)
        mask = F.to_host(F.argmax(s, device=self.net.device), device=self.net.device)[0]
        mask = np.asarray(mask, dtype=np.int64)
        return (mask, self._softmax(s)) if probabilities else mask

    def predict_proba(self, image):
        """(C, H, W) float32 softmax probabilities over the classes, per pixel."""
        return self._softmax(self.scores(image)[0])

    def _softmax(self, s):
        z = np.asarray(F.to_host(s, device=self.net.device), dtype=np.float64)[0]
        z = np.exp(z - z.max(axis=0, keepdims=True))
        return (z / z.sum(axis=0, keepdims=True)).astype(np.float32)

    def __repr__(self):
        return f"Model({self.net.name}, {self.num_classes} classes, device {self.net.device!r})"


def load(path, model=None, num_classes=None, prototxt=None, device="cpu", mean=None):
    """A Model from a weights file: a training checkpoint (.npz) alone; plain weights, a
    .caffemodel or a .pth with model= and num_classes= (or prototxt= for a Caffe deploy net:
    its class count is its score blob's channels). Every file problem is refused by name."""
    from .weights import load_weights
    path = os.fspath(path)
    name, n, names, pre = resolve(path, model, num_classes, mean)
    if prototxt is not None:
        from .caffe.net import read_net
        from .coordmap import blob_shapes
        net = read_net(prototxt, phase="test")
        out = "score" if "score" in net.producer else net.outputs[0]
        n = n or blob_shapes(net, (64, 64))[out][0]
    else:
        from . import models
        if name is None:
            raise ValueError(f"minifcn.load: {path} does not say which model it holds: give "
                             f"model= (one of {', '.join(sorted(models.MODELS))}) or prototxt=")
        if n is None:
            raise ValueError(f"minifcn.load: {path} does not say how many classes its model "
                             f"has: give num_classes=")
        net, out = models.build(name, num_classes=n, loss=False), "score"
    load_weights(net, path)
    net.to(device)
    return Model(net, n, names, pre, out=out)


# ----------------------------------------------------------------------------- many files
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm",
                  ".pgm", ".pnm")


def image_list(paths):
    """The image files that paths name: a file as it is, a folder as its image files (by
    suffix, sorted; not recursive). Refused by name: a missing path, a folder with none."""
    out = []
    for p in map(os.fspath, paths):
        if os.path.isdir(p):
            got = sorted(os.path.join(p, n) for n in os.listdir(p)
                         if n.lower().endswith(IMAGE_SUFFIXES)
                         and os.path.isfile(os.path.join(p, n)))
            if not got:
                raise FileNotFoundError(f"folder {p} holds no image files "
                                        f"({', '.join(IMAGE_SUFFIXES)})")
            out += got
        elif os.path.isfile(p):
            out.append(p)
        else:
            raise FileNotFoundError(f"image {p} does not exist")
    return out


def output_names(images, out):
    """{image: mask path in out}; two inputs with one stem would overwrite each other's mask,
    so that is refused before any work, naming both."""
    names, seen = {}, {}
    for path in images:
        stem = os.path.splitext(os.path.basename(path))[0]
        if stem in seen:
            raise ValueError(f"inputs {seen[stem]} and {path} would both write "
                             f"{os.path.join(out, stem)}.png: rename one, or predict them in "
                             f"two runs with two --out folders")
        seen[stem], names[path] = path, os.path.join(out, f"{stem}.png")
    return names


def check_out_dir(out, flag="--out"):
    """out is (or can be made) a writable folder; checked before the work, made after. The
    CLI's own check (cliargs.out_dir), as a ValueError naming `flag` for API callers."""
    from argparse import ArgumentTypeError
    from .cliargs import out_dir
    try:
        out_dir(os.fspath(out))
    except ArgumentTypeError as e:
        raise ValueError(f"{flag} {e}") from None


def save_mask(mask, path, num_classes):
    """A palette PNG of class indices (VOC colours) for up to 255 classes; beyond, 16-bit
    greyscale PNG (values are the class indices: 8 bits would wrap at 256)."""
    from . import viz
    from .files import atomic_write
    if num_classes <= 255:
        return viz.save_mask(mask, path)
    from PIL import Image
    im = Image.fromarray(np.ascontiguousarray(mask, dtype=np.uint16))     # mode I;16
    atomic_write(path, lambda f: im.save(f, format="PNG"))


def predict_files(model, paths, out, say=print, flag="--out"):
    """Masks (and overlays) for image files and folders into out: every input found, probed
    (header, size, memory) and named uniquely before the first forward pass."""
    from . import viz
    from .files import probe_image
    images = image_list(paths)
    check_out_dir(out, flag)
    names = output_names(images, out)
    for path in images:
        check_memory(model.net, probe_image(path), path, out=model.out)
    os.makedirs(out, exist_ok=True)
    for path in images:
        img = read_image(path)
        pred = model.predict(img)
        save_mask(pred, names[path], model.num_classes)
        viz.save_overlay(img, pred, names[path][:-4] + "_overlay.png")
        counts = np.bincount(pred.ravel(), minlength=model.num_classes)
        say(f"{path}: {img.shape[1]}x{img.shape[0]} -> {names[path]}; pixels per class "
            f"{counts.tolist()}")
    return names
