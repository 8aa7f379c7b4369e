"""The datasets of the paper's section 5 in their released layouts, read as the reference's
Python data layers read them, plus PASCAL VOC / SBD in the same form, and writers of tiny
synthetic copies of each layout (for tests and for trying a pipeline end to end).

An item is a dict of named tops, as a Caffe data layer makes them: images already
preprocessed (float32 (C, H, W), BGR minus the dataset's mean) and labels uint8 (H, W) with
255 void. ``TopsLoader`` batches them; ``from_data_layer`` opens the dataset a prototxt's
Python data layer names (minifcn.caffe.read_net keeps its param_str).

    SIFT Flow       <root>/<split>.txt; Images/<S>/<id>.jpg; SemanticLabels/<S>/<id>.mat and
                    GeoLabels/<S>/<id>.mat (field S); S = spatial_envelope_256x256_static_8out-
                    doorcategories. Tops data, sem (33 classes), geo (3: sky, horizontal,
                    vertical); labels shifted down by one so 0 (and geo's -1) become void.
    NYUDv2          <root>/<split>.txt; data/images/img_<id>.png (colour), data/depth/
                    img_<id>.png (log depth minus its mean, one channel), data/hha/img_<id>.png
                    (HHA minus its mean, not channel-swapped), segmentation/img_<id>.mat
                    (field segmentation; 40 classes, 0 void). Tops chosen from color, depth,
                    hha, label.
    PASCAL-Context  <voc>/VOC2010/ImageSets/Main/<split>.txt and JPEGImages/<id>.jpg;
                    <context>/trainval/<id>.mat (field LabelMap, the 400 raw labels),
                    labels.txt and 59_labels.txt ("index: name"): the 59 classes mapped by
                    name (table, bedclothes, cloth are the 400-list's names for diningtable,
                    bedcloth, clothes), everything else background: 60 outputs.
    VOC / SBD       minifcn.data's layouts; tops data, label (21 classes).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from .data import VOC_CLASSES, DatasetError, VOCSegmentation, _load_image, preprocess
from .files import atomic_write

__all__ = ["SIFTFlow", "NYUD", "PASCALContext", "VOCTops", "TopsLoader", "from_data_layer",
           "write_siftflow", "write_nyud", "write_pascalcontext", "evaluate_heads",
           "format_heads", "SIFTFLOW_CLASSES", "NYUD_CLASSES", "CONTEXT_CLASSES"]

SIFTFLOW_MEAN = (114.578, 115.294, 108.353)
NYUD_MEAN_BGR, NYUD_MEAN_HHA, NYUD_MEAN_LOGD = (116.190, 97.203, 92.318), \
    (132.431, 94.076, 118.477), 7.844
CONTEXT_MEAN = (104.007, 116.669, 122.679)
_SIFT_SUB = "spatial_envelope_256x256_static_8outdoorcategories"
SIFTFLOW_CLASSES = tuple(
    "awning balcony bird boat bridge building bus car cow crosswalk desert door fence field "
    "grass moon mountain person plant pole river road rock sand sea sidewalk sign sky "
    "staircase streetlight sun tree window".split())
SIFTFLOW_GEO = ("sky", "horizontal", "vertical")
NYUD_CLASSES = tuple(
    "wall,floor,cabinet,bed,chair,sofa,table,door,window,bookshelf,picture,counter,blinds,"
    "desk,shelves,curtain,dresser,pillow,mirror,floor mat,clothes,ceiling,books,refridgerator,"
    "television,paper,towel,shower curtain,box,whiteboard,person,night stand,toilet,sink,lamp,"
    "bathtub,bag,otherstructure,otherfurniture,otherprop".split(","))
CONTEXT_CLASSES = VOC_CLASSES + tuple(
    "bag bed bench book building cabinet ceiling clothes computer cup door fence floor flower "
    "food grass ground keyboard light mountain mouse curtain platform sign plate road rock "
    "shelves sidewalk sky snow bedcloth track tree truck wall water window wood".split())
_CONTEXT_RENAMES = {"diningtable": "table", "bedcloth": "bedclothes", "clothes": "cloth"}
FOUR = ("pixel_acc", "mean_acc", "mean_iu", "fw_iu")


def _ids(split_file):
    if not Path(split_file).is_file():
        raise DatasetError(f"{split_file}: split file not found")
    ids = [s.strip() for s in Path(split_file).read_text().splitlines() if s.strip()]
    if not ids:
        raise DatasetError(f"{split_file}: split file lists no images")
    return ids


def _mat(path, key):
    import scipy.io
    if not Path(path).is_file():
        raise DatasetError(f"{path}: label file not found")
    try:
        m = scipy.io.loadmat(path)
    except Exception as e:              # scipy raises several kinds for a bad file
        raise DatasetError(f"{path}: unreadable .mat file ({type(e).__name__}: {e})") from None
    if key not in m:
        raise DatasetError(f"{path}: no field {key!r} (has {sorted(k for k in m if k[0] != '_')})")
    return np.asarray(m[key])


def _png(path):
    if not Path(path).is_file():
        raise DatasetError(f"{path}: image not found")
    try:
        with Image.open(path) as im:
            im.load()
            return np.asarray(im)
    except OSError as e:
        raise DatasetError(f"{path}: unreadable image ({e})") from None


def _bgr(rgb, mean, path):
    if rgb.ndim != 3 or rgb.shape[2] != 3:
        raise DatasetError(f"{path}: expected a 3-channel image, got shape {rgb.shape}")
    return preprocess(rgb, mean)


def _shifted(label):
    """uint8 labels minus one: 0 (void in these datasets) wraps to 255, as the reference's."""
    return (np.asarray(label).astype(np.uint8) - np.uint8(1)).astype(np.uint8)


class _Tops:
    """A dataset of named tops. Subclasses set tops, ids and item(id) -> dict."""
    tables: dict = {}

    def __len__(self):
        return len(self.ids)

    def __getitem__(self, index):
        index = int(index)
        if not 0 <= index < len(self.ids):
            raise IndexError(f"index {index} out of range for {len(self.ids)} items")
        item = self.item(self.ids[index])
        shapes = {tuple(v.shape[-2:]) for v in item.values()}
        if len(shapes) > 1:
            raise DatasetError(f"{type(self).__name__} item {self.ids[index]!r}: its tops have "
                               f"different sizes {sorted(shapes)}")
        return item


class SIFTFlow(_Tops):
    tops = ("data", "sem", "geo")
    num_classes = {"sem": 33, "geo": 3}
    class_names = {"sem": SIFTFLOW_CLASSES, "geo": SIFTFLOW_GEO}
    tables = {"sem": FOUR, "geo": ("pixel_acc",)}       # the paper's table 5

    def __init__(self, root, split):
        self.root, self.split = Path(root), split
        self.ids = _ids(self.root / f"{split}.txt")

    def item(self, i):
        img = self.root / "Images" / _SIFT_SUB / f"{i}.jpg"
        sem = _mat(self.root / "SemanticLabels" / _SIFT_SUB / f"{i}.mat", "S")
        geo = _mat(self.root / "GeoLabels" / _SIFT_SUB / f"{i}.mat", "S").copy()
        geo[geo == -1] = 0
        return {"data": _bgr(_load_image(img), SIFTFLOW_MEAN, img), "sem": _shifted(sem),
                "geo": _shifted(geo)}


class NYUD(_Tops):
    num_classes = {"label": 40}
    class_names = {"label": NYUD_CLASSES}
    tables = {"label": FOUR}                             # the paper's table 4

    def __init__(self, root, split, tops=("color", "label")):
        bad = [t for t in tops if t not in ("color", "depth", "hha", "label")]
        if bad or not tops:
            raise ValueError(f"NYUD tops must be some of color, depth, hha, label; got {tops}")
        self.root, self.split, self.tops = Path(root), split, tuple(tops)
        self.ids = _ids(self.root / f"{split}.txt")

    def item(self, i):
        out = {}
        for t in self.tops:
            if t == "color":
                p = self.root / "data" / "images" / f"img_{i}.png"
                out[t] = _bgr(_png(p)[..., :3], NYUD_MEAN_BGR, p)
            elif t == "hha":
                p = self.root / "data" / "hha" / f"img_{i}.png"
                hha = _png(p).astype(np.float32) - np.asarray(NYUD_MEAN_HHA, np.float32)
                out[t] = np.ascontiguousarray(hha.transpose(2, 0, 1))
            elif t == "depth":
                p = self.root / "data" / "depth" / f"img_{i}.png"
                d = _png(p).astype(np.float32)
                if d.ndim != 2 or (d <= 0).any():
                    raise DatasetError(f"{p}: depth must be one positive channel (its log is "
                                       f"taken); found {'zeros' if d.ndim == 2 else d.shape}")
                out[t] = (np.log(d) - np.float32(NYUD_MEAN_LOGD))[None]
            else:
                p = self.root / "segmentation" / f"img_{i}.mat"
                out[t] = _shifted(_mat(p, "segmentation"))
        return out


def _index_file(path):
    """{name without spaces: index} of an "index: name" file (labels.txt, 59_labels.txt)."""
    if not Path(path).is_file():
        raise DatasetError(f"{path}: not found")
    out = {}
    for n, line in enumerate(Path(path).read_text().splitlines(), 1):
        if line.strip():
            idx, sep, name = line.partition(":")
            if not sep or not idx.strip().isdigit():
                raise DatasetError(f"{path}:{n}: expected 'index: name', got {line!r}")
            out[name.strip().replace(" ", "")] = int(idx)
    return out


class PASCALContext(_Tops):
    tops = ("data", "label")
    num_classes = {"label": 60}
    class_names = {"label": CONTEXT_CLASSES}
    tables = {"label": FOUR}                             # the paper's table 6

    def __init__(self, voc_dir, context_dir, split):
        self.voc, self.context, self.split = Path(voc_dir) / "VOC2010", Path(context_dir), split
        self.ids = _ids(self.voc / "ImageSets" / "Main" / f"{split}.txt")
        l400 = _index_file(self.context / "labels.txt")
        l59 = sorted(_index_file(self.context / "59_labels.txt").items(), key=lambda kv: kv[1])
        self.map = []                            # (raw label, task label)
        for task, (name, _) in enumerate(l59, 1):
            name = _CONTEXT_RENAMES.get(name, name)
            if name not in l400:
                raise DatasetError(f"{self.context / '59_labels.txt'}: class {name!r} is not in "
                                   f"labels.txt")
            self.map.append((l400[name], task))

    def item(self, i):
        img = self.voc / "JPEGImages" / f"{i}.jpg"
        raw = _mat(self.context / "trainval" / f"{i}.mat", "LabelMap")
        label = np.zeros(raw.shape, np.uint8)
        for raw_id, task in self.map:
            label[raw == raw_id] = task
        return {"data": _bgr(_load_image(img), CONTEXT_MEAN, img), "label": label}


class VOCTops(_Tops):
    """VOC (or SBD) as tops data, label: voc_layers' VOCSegDataLayer / SBDDSegDataLayer."""
    tops = ("data", "label")
    num_classes = {"label": 21}
    class_names = {"label": VOC_CLASSES}
    tables = {"label": FOUR}

    def __init__(self, root, split, sbd=False, mean=None):
        from .data import VOC_MEAN_BGR
        self.voc = VOCSegmentation(root, split, sbd=sbd)
        self.ids, self.mean = list(range(len(self.voc))), mean or VOC_MEAN_BGR

    def item(self, i):
        img, label = self.voc[i]
        return {"data": preprocess(img, self.mean), "label": label}


# ----------------------------------------------------------------------------- by data layer
class _Renamed:
    """A dataset whose tops are renamed (the prototxt's names for the data layer's tops)."""

    def __init__(self, ds, names):
        self.ds, self.rename = ds, dict(zip(ds.tops, names))
        self.tops = tuple(names)
        self.num_classes = {self.rename[k]: v for k, v in ds.num_classes.items()}
        self.class_names = {self.rename[k]: v for k, v in ds.class_names.items()}
        self.tables = {self.rename[k]: v for k, v in ds.tables.items()}

    def __len__(self):
        return len(self.ds)

    def __getitem__(self, i):
        return {self.rename[k]: v for k, v in self.ds[i].items()}


def from_data_layer(layer, base_dir=".", root=None):
    """The dataset a prototxt's Python data layer (minifcn.caffe.DataLayer) reads, its tops
    named as the layer's. Paths of its param_str are taken from base_dir (the prototxt's
    folder: the reference runs solve.py from there); root replaces the dataset folder (for
    PASCAL-Context it holds both VOC2010/ and the context files)."""
    p = layer.params
    split = p.get("split")
    if not isinstance(split, str):
        raise DatasetError(f"{layer.where}: the data layer's param_str names no split")

    def folder(key):
        if root is not None:
            return Path(root)
        if key not in p:
            raise DatasetError(f"{layer.where}: param_str has no {key!r}")
        return Path(base_dir) / p[key]

    kind = layer.layer
    if kind == "SIFTFlowSegDataLayer":
        ds = SIFTFlow(folder("siftflow_dir"), split)
    elif kind == "NYUDSegDataLayer":
        ds = NYUD(folder("nyud_dir"), split, tuple(p.get("tops", ())))
    elif kind == "PASCALContextSegDataLayer":
        ds = PASCALContext(folder("voc_dir"), folder("context_dir"), split)
    elif kind in ("VOCSegDataLayer", "SBDDSegDataLayer"):
        sbd = kind == "SBDDSegDataLayer"
        mean = tuple(p["mean"]) if "mean" in p else None
        ds = VOCTops(folder("sbdd_dir" if sbd else "voc_dir"), split, sbd=sbd, mean=mean)
    else:
        raise DatasetError(f"{layer.where}: no dataset for data layer {layer.module}.{kind}")
    if len(layer.tops) != len(ds.tops):
        raise DatasetError(f"{layer.where}: the layer names {len(layer.tops)} tops, the "
                           f"dataset makes {list(ds.tops)}")
    return _Renamed(ds, layer.tops)


# ----------------------------------------------------------------------------- batches
class TopsLoader:
    """Batches of a tops dataset: {top: (N, ...) array}, images float32 and labels int32, in
    a shuffled order drawn from its own generator (seed 1337 as the reference); items of a
    batch must share a size (the reference trains one image at a time). state_dict() and
    load_state_dict() let a checkpoint resume at the same place."""

    def __init__(self, dataset, batch_size=1, shuffle=True, seed=1337):
        if len(dataset) == 0:
            raise ValueError("the dataset is empty")
        self.dataset, self.batch_size, self.shuffle = dataset, int(batch_size), bool(shuffle)
        self.rng, self.epoch, self._order, self._pos = np.random.default_rng(seed), 0, None, 0

    def next_batch(self):
        if self._order is None or self._pos >= len(self._order):
            n = len(self.dataset)
            self._order = self.rng.permutation(n) if self.shuffle else np.arange(n)
            self._pos = 0
        idx = self._order[self._pos:self._pos + self.batch_size]
        self._pos += len(idx)
        if self._pos >= len(self._order):
            self.epoch += 1
        items = [self.dataset[int(i)] for i in idx]
        out = {}
        for k in items[0]:
            vals = [it[k] for it in items]
            if len({v.shape for v in vals}) > 1:
                raise ValueError(f"batch_size={self.batch_size} needs items of one size; top "
                                 f"{k!r} has shapes {sorted({v.shape for v in vals})}")
            a = np.stack(vals)
            out[k] = a.astype(np.int32) if a.dtype == np.uint8 else a.astype(np.float32)
        return out

    def state_dict(self):
        return {"rng": self.rng.bit_generator.state, "epoch": self.epoch, "pos": self._pos,
                "order": None if self._order is None else [int(i) for i in self._order]}

    def load_state_dict(self, state):
        self.rng.bit_generator.state = state["rng"]
        self.epoch, self._pos = int(state["epoch"]), int(state["pos"])
        self._order = None if state["order"] is None else np.asarray(state["order"])


# ----------------------------------------------------------------------------- scoring
def loss_heads(net):
    """[(score blob, label blob)] of the net's loss layers (one per head)."""
    return [tuple(net.bottoms[n][:2]) for n, layer in net.layers.items() if layer.is_loss]


def evaluate_heads(net, dataset, progress=False):
    """Each head's confusion matrix over the dataset, one item at a time: {label top:
    ConfusionMatrix.scores() + 'loss' (that head's mean loss)}."""
    from . import functional as F
    from .metrics import ConfusionMatrix
    heads = loss_heads(net)
    if not heads:
        raise ValueError(f"{net.name}: no loss layer says which blob scores which label")
    was_training = next(iter(net.layers.values())).training
    net.eval()
    cms, losses = {}, {lab: [] for _, lab in heads}
    loss_of = {net.bottoms[n][1]: net.tops[n][0] for n, lyr in net.layers.items() if lyr.is_loss}
    items = range(len(dataset))
    if progress:
        from tqdm import tqdm
        items = tqdm(items, desc="eval", leave=False)
    for i in items:
        item = {k: v[None].astype(np.int32 if v.dtype == np.uint8 else np.float32)
                for k, v in dataset[i].items()}
        net.forward(**{k: v for k, v in item.items() if k in net.inputs})
        for score, label in heads:
            s = net.blobs[score]
            n = int(s.shape[1])
            cm = cms.setdefault(label, ConfusionMatrix(n))
            pred = F.to_host(F.argmax(s, device=net.device), device=net.device)
            cm.update(item[label], pred)
            losses[label].append(float(net.blobs[loss_of[label]]))
    net.train(was_training)
    out = {}
    for label, cm in cms.items():
        out[label] = cm.scores()
        out[label]["loss"] = float(np.mean(losses[label]))
    return out


def format_heads(results, dataset=None):
    """One line per head with the metrics its paper table reports (all four by default)."""
    names = {"pixel_acc": "pixel acc", "mean_acc": "mean acc", "mean_iu": "mean IU",
             "fw_iu": "f.w. IU"}
    tables = getattr(dataset, "tables", {})
    lines = []
    for label, s in results.items():
        cols = tables.get(label, FOUR)
        lines.append(f"{label}: " + "  ".join(f"{names[c]} {100 * s[c]:.1f}" for c in cols)
                     + f"  (loss {s['loss']:.4g})")
    return "\n".join(lines)


# ----------------------------------------------------------------------------- synthetic layouts
def _save(path, save):
    atomic_write(path, save)


def _image(rng, h, w):
    return rng.integers(0, 256, (h, w, 3), dtype=np.uint8)


def _jpg(path, a):
    im = Image.fromarray(a)
    _save(path, lambda f: im.save(f, format="JPEG", quality=95))


def _pngf(path, a):
    im = Image.fromarray(a)
    _save(path, lambda f: im.save(f, format="PNG"))


def _savemat(path, **fields):
    import scipy.io
    _save(path, lambda f: scipy.io.savemat(f, fields))


def _split_files(folder, splits, prefix=""):
    ids, n0 = {}, 0
    for split, n in splits.items():
        ids[split] = [f"{prefix}{n0 + k:04d}" for k in range(n)]
        n0 += n
        text = "".join(i + "\n" for i in ids[split])
        _save(Path(folder) / f"{split}.txt", lambda f, t=text: f.write(t.encode()))
    return ids


def write_siftflow(root, splits=None, size=(32, 40), seed=0, classes=33):
    """A tiny SIFT Flow in its layout: random images, semantic labels 0..classes (0 void;
    fewer classes than 33 for a net of capped width) and geometric ones -1..3 (-1 and 0
    void). Returns {split: ids}."""
    splits, rng, (h, w) = splits or {"trainval": 3, "test": 2}, np.random.default_rng(seed), size
    ids = _split_files(root, splits)
    for i in (i for v in ids.values() for i in v):
        _jpg(Path(root) / "Images" / _SIFT_SUB / f"{i}.jpg", _image(rng, h, w))
        _savemat(Path(root) / "SemanticLabels" / _SIFT_SUB / f"{i}.mat",
                 S=rng.integers(0, classes + 1, (h, w)).astype(np.int16))
        _savemat(Path(root) / "GeoLabels" / _SIFT_SUB / f"{i}.mat",
                 S=rng.integers(-1, 4, (h, w)).astype(np.int16))
    return ids


def write_nyud(root, splits=None, size=(32, 40), seed=0, classes=40):
    """A tiny NYUDv2 in the reference's layout: colour, 16-bit depth (positive), HHA and
    labels 0..classes (0 void). Returns {split: ids}."""
    splits, rng, (h, w) = splits or {"trainval": 3, "test": 2}, np.random.default_rng(seed), size
    ids = _split_files(root, splits)
    for i in (i for v in ids.values() for i in v):
        d = Path(root) / "data"
        _pngf(d / "images" / f"img_{i}.png", _image(rng, h, w))
        _pngf(d / "depth" / f"img_{i}.png", rng.integers(500, 5000, (h, w)).astype(np.uint16))
        _pngf(d / "hha" / f"img_{i}.png", _image(rng, h, w))
        _savemat(Path(root) / "segmentation" / f"img_{i}.mat",
                 segmentation=rng.integers(0, classes + 1, (h, w)).astype(np.uint8))
    return ids


def write_pascalcontext(voc_dir, context_dir, splits=None, size=(32, 40), seed=0, classes=59):
    """A tiny PASCAL-Context: VOC2010 images and split files, a 400-label list holding the 59
    task classes (under the 400-list's names) among fillers, and LabelMaps of raw labels
    that are fillers or the first `classes` task classes. Returns {split: ids}."""
    splits, rng, (h, w) = splits or {"train": 3, "val": 2}, np.random.default_rng(seed), size
    ids = _split_files(Path(voc_dir) / "VOC2010" / "ImageSets" / "Main", splits, "2010_")
    task = list(CONTEXT_CLASSES[1:])
    raw = [f"thing{k}" for k in range(400)]
    slots = rng.permutation(400)
    for k, slot in enumerate(slots[:59]):
        raw[slot] = _CONTEXT_RENAMES.get(task[k], task[k])
    allowed = np.concatenate([slots[:classes], slots[59:]]) + 1     # 1-based raw labels
    text400 = "".join(f"{k + 1}: {n}\n" for k, n in enumerate(raw))
    text59 = "".join(f"{k + 1}: {n}\n" for k, n in enumerate(task))
    _save(Path(context_dir) / "labels.txt", lambda f: f.write(text400.encode()))
    _save(Path(context_dir) / "59_labels.txt", lambda f: f.write(text59.encode()))
    for i in (i for v in ids.values() for i in v):
        _jpg(Path(voc_dir) / "VOC2010" / "JPEGImages" / f"{i}.jpg", _image(rng, h, w))
        _savemat(Path(context_dir) / "trainval" / f"{i}.mat",
                 LabelMap=rng.choice(allowed, (h, w)).astype(np.uint16))
    return ids

