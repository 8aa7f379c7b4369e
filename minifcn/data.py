"""Datasets for semantic segmentation: the PASCAL VOC layout, a synthetic one, and batching.

What an item is
---------------
Every dataset here is a sequence of ``(image, label)`` pairs:
    image  uint8 (H, W, 3), RGB, 0-255 -- the picture as any image library loads it;
    label  uint8 (H, W), one class index per pixel; 255 means "void": not scored, no loss
           (VOC draws a 5-pixel void band around each object because its border is ambiguous).

The VOC layout on disk (what ``write_voc`` writes and ``VOCSegmentation`` reads)
----------------------------------------------------------------------------------
    <root>/ImageSets/Segmentation/<split>.txt   one image id per line (train.txt, val.txt, ...)
    <root>/JPEGImages/<id>.jpg                  the image
    <root>/SegmentationClass/<id>.png           the label, a *palette* PNG: each pixel stores an
                                                index (the class, 255 = void) and the file's
                                                palette only says how to colour it for viewing
                                                (``voc_colormap``). Read the indices, never the
                                                RGB colours.
The SBD layout (Hariharan et al.'s extra 8,498 training images, ``sbd=True``):
    <root>/<split>.txt, <root>/img/<id>.jpg, <root>/cls/<id>.mat (MATLAB struct GTcls.Segmentation)

Preprocessing, and why
----------------------
FCN starts from VGG16 weights trained in Caffe, and a net only works on inputs like those it was
trained on. Caffe loaded images with OpenCV, so the channel order is **BGR**, values stay in
**0-255** (no division by 255, no std normalisation) and the **per-channel mean** of the training
images is subtracted. ``preprocess`` does what the reference ``voc_layers.py`` does:

    RGB -> BGR, float32, subtract (104.00698793, 116.66876762, 122.67891434), HWC -> CHW.

(torchvision's VGG weights expect RGB in 0-1 normalised by mean/std instead; feeding one
preprocessing to the other's weights quietly ruins the results.)

Batching
--------
The reference trains with one image per batch and reshapes the net per image, so images may have
any size. ``Loader`` does the same with ``batch_size=1``; larger batches need equal sizes, which a
random ``crop`` provides. All randomness (shuffle order, crop offsets, mirroring) comes from the
loader's own ``np.random.Generator``, whose state ``state_dict()`` saves for resuming a run.
"""
from __future__ import annotations

import collections
import colorsys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
from PIL import Image

from .files import atomic_write, read_image, read_lines

__all__ = [
    "VOC_MEAN_BGR", "VOC_CLASSES", "SHAPE_CLASSES", "DatasetError",
    "preprocess", "deprocess", "voc_colormap", "label_image",
    "SyntheticShapes", "synthetic_splits",
    "write_voc", "VOCSegmentation", "validate_voc",
    "Loader",
]

VOC_MEAN_BGR = (104.00698793, 116.66876762, 122.67891434)
VOID = 255

VOC_CLASSES = (
    "background", "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat",
    "chair", "cow", "diningtable", "dog", "horse", "motorbike", "person", "pottedplant",
    "sheep", "sofa", "train", "tvmonitor",
)


class DatasetError(ValueError):
    """A dataset on disk is missing, incomplete or inconsistent; the message names the file."""


# ----------------------------------------------------------------------------- preprocessing

def preprocess(img, mean=VOC_MEAN_BGR):
    """RGB uint8 (H, W, 3) -> mean-subtracted BGR float32 (3, H, W), as voc_layers.py."""
    img = np.asarray(img)
    if img.ndim != 3 or img.shape[2] != 3:
        raise ValueError(f"expected an RGB image of shape (H, W, 3), got shape {img.shape}")
    x = img[:, :, ::-1].astype(np.float32)           # RGB -> BGR
    x -= np.asarray(mean, dtype=np.float32)
    return np.ascontiguousarray(x.transpose(2, 0, 1))  # HWC -> CHW


def deprocess(x, mean=VOC_MEAN_BGR):
    """Inverse of ``preprocess``: BGR float (3, H, W) -> RGB uint8 (H, W, 3), e.g. for overlays."""
    x = np.asarray(x, dtype=np.float32)
    if x.ndim != 3 or x.shape[0] != 3:
        raise ValueError(f"expected a preprocessed image of shape (3, H, W), got shape {x.shape}")
    img = x.transpose(1, 2, 0) + np.asarray(mean, dtype=np.float32)
    return np.clip(np.rint(img[:, :, ::-1]), 0, 255).astype(np.uint8)


def voc_colormap(n=256):
    """The standard PASCAL VOC palette, (n, 3) uint8: bits of the class index are spread over
    the high bits of R, G, B (index 1 -> (128, 0, 0), 15 person -> (192, 128, 128),
    255 void -> (224, 224, 192))."""
    cmap = np.zeros((n, 3), dtype=np.uint8)
    for i in range(n):
        r = g = b = 0
        c = i
        for j in range(8):
            r |= ((c >> 0) & 1) << (7 - j)
            g |= ((c >> 1) & 1) << (7 - j)
            b |= ((c >> 2) & 1) << (7 - j)
            c >>= 3
        cmap[i] = (r, g, b)
    return cmap


# ----------------------------------------------------------------------------- synthetic data

SHAPE_CLASSES = ("background", "disc", "rectangle", "triangle", "ring", "cross", "diamond", "star")


def _polygon_mask(yy, xx, verts):
    """Even-odd point-in-polygon test over pixel centres; verts: list of (y, x)."""
    inside = np.zeros(yy.shape, dtype=bool)
    n = len(verts)
    for k in range(n):
        (y0, x0), (y1, x1) = verts[k], verts[(k + 1) % n]
        crosses = (y0 > yy) != (y1 > yy)
        with np.errstate(divide="ignore", invalid="ignore"):
            x_at = x0 + (yy - y0) * (x1 - x0) / (y1 - y0)
        inside ^= crosses & (xx < x_at)
    return inside


def _shape_mask(cls, yy, xx, cy, cx, r, rng):
    """Boolean mask of shape class ``cls`` centred at (cy, cx) with "radius" r (half the size).
    Rotations and aspect ratios vary, but every shape stays recognisable by its outline."""
    dy, dx = yy - cy, xx - cx
    name = SHAPE_CLASSES[cls]
    if name == "disc":
        return dy * dy + dx * dx <= r * r
    if name == "rectangle":              # axis-aligned, aspect 0.6 - 1.6
        aspect = rng.uniform(0.6, 1.6)
        h, w = r * min(1.0, aspect), r * min(1.0, 1.0 / aspect)
        return (np.abs(dy) <= h) & (np.abs(dx) <= w)
    if name == "triangle":               # equilateral, any rotation; enlarged a little because
        r = 1.2 * r                      # it fills far less of its circle than a disc does
        t = rng.uniform(0, 2 * np.pi) + np.arange(3) * 2 * np.pi / 3
        return _polygon_mask(yy, xx, list(zip(cy + r * np.sin(t), cx + r * np.cos(t))))
    if name == "ring":
        d2 = dy * dy + dx * dx
        return (d2 <= r * r) & (d2 >= (0.5 * r) ** 2)
    if name == "cross":                  # a "+" of two bars a third of the size wide
        bar = r / 3
        return (((np.abs(dy) <= bar) & (np.abs(dx) <= r))
                | ((np.abs(dx) <= bar) & (np.abs(dy) <= r)))
    if name == "diamond":                # a square standing on its corner
        return np.abs(dy) + np.abs(dx) <= r
    if name == "star":                   # five points, random rotation (enlarged as the triangle)
        r = 1.2 * r
        t = rng.uniform(0, 2 * np.pi) + np.arange(10) * np.pi / 5
        rad = np.where(np.arange(10) % 2 == 0, r, 0.45 * r)
        return _polygon_mask(yy, xx, list(zip(cy + rad * np.sin(t), cx + rad * np.cos(t))))
    raise ValueError(f"no shape for class {cls}")


def _texture(rng, h, w, yy, xx, colour):
    """An (h, w, 3) float fill for an object: solid, stripes, or noisy, around ``colour``."""
    kind = rng.integers(3)
    fill = np.broadcast_to(colour, (h, w, 3)).astype(np.float32)
    if kind == 1:                        # stripes towards a second, nearby colour
        angle = rng.uniform(0, np.pi)
        period = rng.uniform(4, 9)
        phase = (np.cos(angle) * xx + np.sin(angle) * yy) / period
        other = colour * rng.uniform(0.5, 0.8)        # a darker shade of the same hue
        on = (phase % 1.0) < 0.5
        fill = np.where(on[..., None], fill, other.astype(np.float32))
    noise_std = 18.0 if kind == 2 else 4.0
    return fill + rng.normal(0, noise_std, (h, w, 3)).astype(np.float32)


class SyntheticShapes:
    """A built-in dataset of shapes on textured backgrounds; no download needed.

    The class of an object is its *shape* (disc, rectangle, triangle, ring, cross, diamond,
    star), never its colour, so a net has to learn outlines, as on real data. Background covers
    most pixels (about 3/4 in VOC). Each item is generated on demand from
    ``np.random.default_rng([seed, start + index])``: cheap, reproducible, order-independent.

    n            number of items
    seed         dataset seed (>= 0)
    size         (min, max) for height and width, each drawn independently; or one int
    num_classes  2..8: background + the first num_classes-1 shapes of SHAPE_CLASSES
    max_objects  1..max_objects objects per image (later ones occlude earlier ones)
    obj_size     object size (diameter) as a fraction (min, max) of the shorter image side;
                 the default leaves about 80% background (VOC: about 3/4)
    void_border  mark the 1-pixel inner outline of every object 255 (void), as VOC does
    start        index offset into the item stream (``synthetic_splits`` uses it for disjoint sets)

    Items: (image uint8 (H, W, 3) RGB, label uint8 (H, W)).
    """

    def __init__(self, n, seed=0, size=(64, 96), num_classes=5, max_objects=3,
                 obj_size=(0.25, 0.6), void_border=True, start=0):
        if not 2 <= num_classes <= len(SHAPE_CLASSES):
            raise ValueError(f"num_classes must be in 2..{len(SHAPE_CLASSES)}, got {num_classes}")
        lo, hi = (size, size) if np.isscalar(size) else size
        if not 8 <= lo <= hi:
            raise ValueError(f"size must be (min, max) with 8 <= min <= max, got {size}")
        self.n, self.seed, self.start = int(n), int(seed), int(start)
        self.size = (int(lo), int(hi))
        self.num_classes = int(num_classes)
        self.max_objects = int(max_objects)
        self.obj_size = tuple(obj_size)
        self.void_border = bool(void_border)
        self.class_names = SHAPE_CLASSES[:num_classes]

    def __len__(self):
        return self.n

    def __getitem__(self, index):
        index = int(index)
        if not 0 <= index < self.n:
            raise IndexError(f"index {index} out of range for SyntheticShapes of length {self.n}")
        rng = np.random.default_rng([self.seed, self.start + index])
        h, w = (int(v) for v in rng.integers(self.size[0], self.size[1] + 1, size=2))
        yy, xx = np.mgrid[0:h, 0:w].astype(np.float32) + 0.5

        # Background: a smooth gradient between two muted (greyish) colours, mild noise,
        # sometimes soft stripes. Muted against the saturated objects, as salient VOC objects
        # stand out from their scenes: telling object from background is then a local cue a tiny
        # net learns fast, and the real work -- which shape -- is left to the receptive field.
        c0 = rng.uniform(50, 200) + rng.uniform(-20, 20, 3)
        c1 = rng.uniform(50, 200) + rng.uniform(-20, 20, 3)
        angle = rng.uniform(0, 2 * np.pi)
        t = np.cos(angle) * xx / w + np.sin(angle) * yy / h
        t = (t - t.min()) / max(float(t.max() - t.min()), 1e-6)
        img = (1 - t)[..., None] * c0 + t[..., None] * c1
        if rng.random() < 0.5:
            a2, period = rng.uniform(0, np.pi), rng.uniform(6, 16)
            img += 12.0 * np.sin(2 * np.pi * (np.cos(a2) * xx + np.sin(a2) * yy) / period)[..., None]
        img += rng.normal(0, 6.0, img.shape)
        label = np.zeros((h, w), dtype=np.uint8)

        side = min(h, w)
        for _ in range(rng.integers(1, self.max_objects + 1)):
            cls = int(rng.integers(1, self.num_classes))
            r = 0.5 * side * rng.uniform(*self.obj_size)
            # Occlusion is allowed, but a shape mostly hidden behind another teaches little:
            # retry the position a few times while over 1/4 of it would cover earlier objects.
            for _try in range(8):
                cy, cx = rng.uniform(r, h - r), rng.uniform(r, w - r)
                mask = _shape_mask(cls, yy, xx, cy, cx, r, rng)
                if np.count_nonzero(label[mask]) <= 0.25 * np.count_nonzero(mask):
                    break
            # Any hue (the class is not the colour), but saturated, so the object is visible.
            colour = 255 * np.array(colorsys.hsv_to_rgb(rng.uniform(), rng.uniform(0.6, 1.0),
                                                        rng.uniform(0.55, 1.0)))
            fill = _texture(rng, h, w, yy, xx, colour)
            img[mask] = fill[mask]
            label[mask] = cls

        if self.void_border:
            # Inner outline: object pixels with a 4-neighbour of another class (or background).
            edge = np.zeros((h, w), dtype=bool)
            edge[1:, :] |= label[1:, :] != label[:-1, :]
            edge[:-1, :] |= label[:-1, :] != label[1:, :]
            edge[:, 1:] |= label[:, 1:] != label[:, :-1]
            edge[:, :-1] |= label[:, :-1] != label[:, 1:]
            label[edge & (label > 0)] = VOID
        return np.clip(np.rint(img), 0, 255).astype(np.uint8), label

    def __repr__(self):
        return (f"SyntheticShapes(n={self.n}, seed={self.seed}, size={self.size}, "
                f"num_classes={self.num_classes}, start={self.start})")


def synthetic_splits(n_train=400, n_val=100, seed=0, **kwargs):
    """Disjoint train and val SyntheticShapes: the same seed, consecutive index ranges
    (val items are items n_train .. n_train + n_val - 1 of the same stream)."""
    train = SyntheticShapes(n_train, seed=seed, start=0, **kwargs)
    val = SyntheticShapes(n_val, seed=seed, start=n_train, **kwargs)
    return train, val


# ----------------------------------------------------------------------------- VOC on disk

def label_image(label):
    """uint8 (H, W) class indices (255: void) -> a palette ('P') PIL image with the VOC
    colours: what SegmentationClass/*.png hold, and what masks are saved as."""
    label = np.ascontiguousarray(label, dtype=np.uint8)
    im = Image.frombytes("P", (label.shape[1], label.shape[0]), label.tobytes())
    im.putpalette(voc_colormap(256).ravel().tolist())
    return im


def _split_file(root, split, sbd):
    root = Path(root)
    return root / f"{split}.txt" if sbd else root / "ImageSets" / "Segmentation" / f"{split}.txt"


def _paths(root, id_, sbd):
    root = Path(root)
    if sbd:
        return root / "img" / f"{id_}.jpg", root / "cls" / f"{id_}.mat"
    return root / "JPEGImages" / f"{id_}.jpg", root / "SegmentationClass" / f"{id_}.png"


def _read_ids(split_file):
    return read_lines(split_file, "split file")      # UTF-8 (BOM or not), UTF-16 with a BOM


def write_voc(dataset, root, split_name, ids=None):
    """Write ``dataset`` in the VOC layout under ``root`` and add its ids to the split file.

    ids: one id per item; default ``dataset.ids`` if it has them, else ``<split>_000000`` ...
    Images become JPEGs (quality 95, no chroma subsampling), labels palette PNGs with the VOC colormap. Every file is
    written atomically; ids already in ``<split>.txt`` are not added twice. Returns the ids.
    """
    root = Path(root)
    if ids is None:
        ids = getattr(dataset, "ids", None) or [f"{split_name}_{i:06d}" for i in range(len(dataset))]
    ids = [str(i) for i in ids]
    if len(ids) != len(dataset):
        raise ValueError(f"{len(ids)} ids for a dataset of {len(dataset)} items")
    for sub in ("JPEGImages", "SegmentationClass", "ImageSets/Segmentation"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    for i, id_ in enumerate(ids):
        img, label = dataset[i]
        img_path, label_path = _paths(root, id_, sbd=False)
        pil_img = Image.fromarray(np.asarray(img, dtype=np.uint8))
        # subsampling=0 keeps full-resolution colour: 4:2:0 would blur colour across the very
        # object edges the labels mark, and small images have few pixels to spare.
        atomic_write(img_path, lambda f: pil_img.save(f, format="JPEG", quality=95, subsampling=0))
        pil_label = label_image(label)
        atomic_write(label_path, lambda f: pil_label.save(f, format="PNG"))
    split_file = _split_file(root, split_name, sbd=False)
    old = _read_ids(split_file) if split_file.exists() else []
    seen = set(old)
    new = old + [i for i in ids if not (i in seen or seen.add(i))]
    text = "".join(f"{i}\n" for i in new)
    atomic_write(split_file, lambda f: f.write(text.encode()))
    return ids


def _load_image(path):
    return read_image(path)          # any mode to RGB by one rule (files._rgb), bombs refused


def _load_label(path):
    """Class indices uint8 (H, W) from a palette/grayscale PNG or an SBD .mat file."""
    path = Path(path)
    if path.suffix == ".mat":
        import scipy.io  # only SBD needs scipy; import it on demand
        # GTcls is a MATLAB struct; loadmat gives a (1, 1) record array of object fields.
        return np.asarray(scipy.io.loadmat(path)["GTcls"][0]["Segmentation"][0], dtype=np.uint8)
    with read_image(path, convert=False) as im:
        if im.mode not in ("P", "L"):
            raise DatasetError(f"{path}: label PNG has mode {im.mode!r}; expected class indices "
                               "in a palette ('P') or grayscale ('L') PNG, not colours")
        return np.asarray(im, dtype=np.uint8)   # for mode 'P' these are the palette indices


class VOCSegmentation:
    """A segmentation dataset in the VOC (or, with ``sbd=True``, the SBD) layout; see the module
    docstring. Items: (image uint8 (H, W, 3) RGB, label uint8 (H, W), 255 = void).

    Run ``validate_voc`` first to get every problem reported up front, not mid-training.
    """

    def __init__(self, root, split, sbd=False, class_names=VOC_CLASSES):
        self.root, self.split, self.sbd = Path(root), split, bool(sbd)
        split_file = _split_file(root, split, sbd)
        if not split_file.is_file():
            raise DatasetError(f"{split_file}: split file not found")
        self.ids = _read_ids(split_file)
        self.class_names = class_names

    def __len__(self):
        return len(self.ids)

    def __getitem__(self, index):
        index = int(index)
        if not 0 <= index < len(self.ids):
            raise IndexError(f"index {index} out of range for {len(self.ids)} items")
        img_path, label_path = _paths(self.root, self.ids[index], self.sbd)
        return _load_image(img_path), _load_label(label_path)

    def __repr__(self):
        return f"VOCSegmentation({str(self.root)!r}, {self.split!r}, sbd={self.sbd}, n={len(self)})"


def validate_voc(root, split, num_classes, sbd=False, max_report=5):
    """Check a VOC/SBD dataset before training; raise ``DatasetError`` listing the problems.

    Reads every image and label once and checks: root, split file and its ids exist; each id has
    both image and label; both decode completely (a truncated JPEG is an error); label and image
    have the same size; label values are < num_classes or 255. The first problem of each file is
    collected; the message shows ``max_report`` of them and counts the rest.
    Returns a summary dict: ids, class_pixels (num_classes,) int64, void_pixels.
    """
    root = Path(root)
    if not root.is_dir():
        raise DatasetError(f"{root}: dataset root does not exist")
    split_file = _split_file(root, split, sbd)
    if not split_file.is_file():
        where = split_file.parent
        have = sorted(p.stem for p in where.glob("*.txt")) if where.is_dir() else []
        raise DatasetError(f"{split_file}: split file not found"
                           + (f" (splits here: {', '.join(have)})" if have else ""))
    ids = _read_ids(split_file)
    if not ids:
        raise DatasetError(f"{split_file}: split file lists no images")

    problems = []
    class_pixels = np.zeros(num_classes, dtype=np.int64)
    void_pixels = 0
    for id_ in ids:
        img_path, label_path = _paths(root, id_, sbd)
        has_img, has_label = img_path.is_file(), label_path.is_file()
        if not (has_img and has_label):
            if has_img:
                problems.append(f"{img_path}: image without label (expected {label_path})")
            elif has_label:
                problems.append(f"{label_path}: label without image (expected {img_path})")
            else:
                problems.append(f"{img_path}: id {id_!r} listed in {split_file.name} "
                                f"but neither image nor label {label_path} exists")
            continue
        try:
            img = _load_image(img_path)
        except Exception as e:  # PIL raises OSError, SyntaxError, ValueError... all mean "bad"
            problems.append(f"{img_path}: unreadable image ({type(e).__name__}: {e})")
            continue
        try:
            label = _load_label(label_path)
        except DatasetError as e:
            problems.append(str(e))
            continue
        except Exception as e:
            problems.append(f"{label_path}: unreadable label ({type(e).__name__}: {e})")
            continue
        if label.shape != img.shape[:2]:
            problems.append(f"{label_path}: label is {label.shape[0]}x{label.shape[1]} (HxW) but "
                            f"image {img_path.name} is {img.shape[0]}x{img.shape[1]}")
            continue
        counts = np.bincount(label.ravel(), minlength=256)
        bad = [int(v) for v in np.flatnonzero(counts) if v >= num_classes and v != VOID]
        if bad:
            problems.append(f"{label_path}: label values {bad} are >= num_classes={num_classes} "
                            f"(only 0..{num_classes - 1} and 255 = void are allowed)")
            continue
        class_pixels += counts[:num_classes]
        void_pixels += int(counts[VOID])

    if problems:
        shown = "\n  ".join(problems[:max_report])
        more = len(problems) - max_report
        raise DatasetError(f"{len(problems)} problem(s) in split {split!r} of {root}:\n  {shown}"
                           + (f"\n  ... and {more} more" if more > 0 else ""))
    return {"ids": ids, "class_pixels": class_pixels, "void_pixels": void_pixels}


# ----------------------------------------------------------------------------- batching

class Loader:
    """Batches of preprocessed items: ``(x float32 (N, 3, H, W), labels int32 (N, H, W))``
    (x in ``dtype``, float32 unless asked).

    Iterating gives one epoch (the last batch may be smaller); ``forever()`` never stops, for
    iteration-based training. ``crop=(h, w)`` (or an int) takes a random crop, padding images
    smaller than it with the mean (0 after preprocessing) and labels with 255 (void);
    ``mirror=True`` flips each item left-right with probability 1/2. Shuffle order, crops and
    flips all come from ``self.rng`` (seeded; 1337 as the reference), and ``state_dict()`` /
    ``load_state_dict()`` save and restore it together with the position in the epoch.

    Sharding (data-parallel training, minifcn.distributed): ``shard=(rank, ranks)`` makes
    batch_size the batch of one rank. Every rank walks the same seeded shuffle in global
    batches of ``batch_size * ranks`` items and loads only its own slice of each (rank r takes
    items r*batch_size ... of the global batch), so N ranks x batch b see exactly the batches
    one process with batch N*b sees. That holds for crops and flips too because their random
    numbers are drawn as one block per global batch, a fixed count per item (u * range rather
    than integers(range), whose draws depend on the image's size, which a rank that does not
    load the image cannot know). A rank whose slice of a short last batch is empty gets the
    batch's first item with every label void and ``padding`` True: it contributes nothing
    (the trainer weighs it 0) but takes part in every collective.
    """

    def __init__(self, dataset, batch_size=1, shuffle=True, seed=1337, crop=None, mirror=False,
                 mean=VOC_MEAN_BGR, shard=None, dtype=np.float32, workers=0):
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if len(dataset) == 0:
            raise ValueError("the dataset is empty")
        self.dataset = dataset
        self.batch_size = int(batch_size)
        self.shuffle = bool(shuffle)
        self.crop = None if crop is None else ((crop, crop) if np.isscalar(crop) else tuple(crop))
        self.mirror = bool(mirror)
        self.mean = mean
        self.dtype = np.dtype(dtype)      # of the images (float64 for a float64 net)
        self.rng = np.random.default_rng(seed)
        self.epoch = 0        # completed epochs
        self._order = None    # this epoch's item order, drawn from rng when an epoch starts
        self._pos = 0         # next position in _order
        self.padding = False  # was the last batch a stand-in for an empty shard?
        self.set_shard(*(shard or (0, 1)))
        if int(workers) < 0:
            raise ValueError(f"workers must be >= 0, got {workers}")
        self.workers = int(workers)
        self._pool, self._ahead = None, collections.deque()   # workers' batches in flight
        self._last = False    # did the last batch end its epoch?

    def set_shard(self, rank, ranks):
        """Read rank `rank`'s slice of global batches of batch_size * ranks items."""
        if not (isinstance(ranks, int) and ranks >= 1 and isinstance(rank, int)
                and 0 <= rank < ranks):
            raise ValueError(f"shard must be (rank, ranks) with 0 <= rank < ranks, got "
                             f"({rank!r}, {ranks!r})")
        self.shard = (rank, ranks)

    @property
    def global_batch(self):
        return self.batch_size * self.shard[1]

    def __len__(self):
        """(Global) batches per epoch."""
        return -(-len(self.dataset) // self.global_batch)

    def _draws(self, n):
        """The random numbers of n items, one row each: crop row, crop column, flip."""
        k = 2 * (self.crop is not None) + self.mirror
        return self.rng.random((n, k)) if k else np.zeros((n, 0))

    def _item(self, i, u):
        """Item i, cropped and flipped by its row u of _draws (None: no crop offset, no flip)."""
        img, label = self.dataset[i]
        x = preprocess(img, self.mean)
        y = np.asarray(label, dtype=np.int32)
        if self.crop is not None:
            ch, cw = self.crop
            h, w = y.shape
            if h < ch or w < cw:  # pad bottom/right: image with 0 (= the mean), label with void
                ph, pw = max(ch - h, 0), max(cw - w, 0)
                x = np.pad(x, ((0, 0), (0, ph), (0, pw)))
                y = np.pad(y, ((0, ph), (0, pw)), constant_values=VOID)
                h, w = y.shape
            y0, x0 = (0, 0) if u is None else (int(u[0] * (h - ch + 1)),
                                               int(u[1] * (w - cw + 1)))
            x, y = x[:, y0:y0 + ch, x0:x0 + cw], y[y0:y0 + ch, x0:x0 + cw]
        if self.mirror and u is not None and u[-1] < 0.5:
            x, y = x[:, :, ::-1], y[:, ::-1]
        return x, y

    def _batch(self, indices, draws):
        items = [self._item(int(i), u) for i, u in zip(indices, draws)]
        first = items[0][1].shape
        for i, (_, y) in zip(indices, items):
            if y.shape != first:
                raise ValueError(
                    f"batch_size={self.batch_size} needs items of equal size, but item "
                    f"{indices[0]} is {first[0]}x{first[1]} and item {i} is {y.shape[0]}x"
                    f"{y.shape[1]}; give a crop size (crop=(h, w), --crop) or use batch size 1")
        return (np.stack([x for x, _ in items]).astype(self.dtype, copy=False),
                np.stack([y for _, y in items]).astype(np.int32, copy=False))

    def _plan(self):
        """What the next batch is: its items and random draws, the loader's state before it
        (for state_dict) and whether it ends the epoch. Loading it is separate (_load), so
        that workers can load batches ahead while the draws stay in this one order."""
        state = self._own_state()
        if self._order is None or self._pos >= len(self._order):
            n = len(self.dataset)
            self._order = self.rng.permutation(n) if self.shuffle else np.arange(n)
            self._pos = 0
        indices = self._order[self._pos:self._pos + self.global_batch]
        self._pos += len(indices)
        last = self._pos >= len(self._order)
        self.epoch += last
        draws = self._draws(len(indices))             # every rank draws the whole block
        lo = self.shard[0] * self.batch_size
        mine = slice(lo, lo + self.batch_size)
        return indices[mine], draws[mine], len(indices[mine]) == 0, last, state, indices[:1]

    def _load(self, plan):
        mine, draws, padding, _, _, first = plan
        if padding:                                   # nothing left for this rank
            x, y = self._batch(first, [None])
            return x, np.full_like(y, VOID)
        return self._batch(mine, draws)

    def next_batch(self):
        """The next batch (this rank's slice of the next global batch), starting a new epoch
        (a new shuffle) when the current one is done. With workers=N, N threads decode the
        next N batches meanwhile (Pillow and numpy release the GIL): the same batches in the
        same order as without them."""
        if not self.workers:
            plan = self._plan()
            batch = self._load(plan)
        else:
            if self._pool is None:
                self._pool = ThreadPoolExecutor(self.workers, thread_name_prefix="minifcn-load")
            while len(self._ahead) <= self.workers:
                plan = self._plan()
                self._ahead.append((plan, self._pool.submit(self._load, plan)))
            plan, future = self._ahead.popleft()
            try:
                batch = future.result()
            except BaseException:
                self.close()                          # a bad item: stop the others too
                raise
        self.padding, self._last = plan[2], plan[3]
        return batch

    def close(self):
        """Stop the workers (batches loaded ahead are dropped; the state is kept)."""
        if self._ahead:
            self._restore(self._ahead[0][0][4])
        self._ahead.clear()
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None

    def __iter__(self):
        """One epoch of batches (after a resume mid-epoch: the rest of that epoch)."""
        while True:
            yield self.next_batch()
            if self._last:
                return

    def forever(self):
        """Batches without end, epoch after epoch."""
        while True:
            yield self.next_batch()

    def _own_state(self):
        return {"rng": self.rng.bit_generator.state, "epoch": self.epoch,
                "order": None if self._order is None else [int(i) for i in self._order],
                "pos": self._pos}

    def state_dict(self):
        """JSON-serialisable state: rng, epoch, and the order and position in the current
        epoch -- as of the batches handed out (not those the workers loaded ahead)."""
        return self._ahead[0][0][4] if self._ahead else self._own_state()

    def load_state_dict(self, state):
        self.close()
        self._restore(state)

    def _restore(self, state):
        self.rng.bit_generator.state = state["rng"]
        self.epoch = int(state["epoch"])
        self._order = None if state["order"] is None else np.asarray(state["order"], dtype=np.int64)
        self._pos = int(state["pos"])


# ----------------------------------------------------------------------------- by name
def open_dataset(spec, split, num_classes=None, sbd=False, n=None, seed=0):
    """('synthetic' or a VOC-layout directory, split name) -> (dataset, num_classes), the
    directory validated first (DatasetError naming the file and the problem). The synthetic
    set has splits 'train' (n images, default 400) and 'val' (n // 4, default 100)."""
    if spec == "synthetic":
        n_train, n_val = (n, max(1, n // 4)) if n else (400, 100)
        train, val = synthetic_splits(n_train, n_val, seed=seed, num_classes=num_classes or 5)
        ds = {"train": train, "val": val}.get(split)
        if ds is None:
            raise DatasetError(f"the synthetic dataset has splits 'train' and 'val', not "
                               f"{split!r}")
        return ds, ds.num_classes
    if not Path(spec).is_dir():
        raise FileNotFoundError(f"dataset directory {spec} does not exist")
    if num_classes is None:
        num_classes = len(VOC_CLASSES)
    validate_voc(spec, split, num_classes, sbd=sbd)
    return VOCSegmentation(spec, split, sbd=sbd), num_classes
