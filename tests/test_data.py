"""Datasets, the VOC layout, validation and batching; tiny images so the file runs in seconds."""
import json

import numpy as np
import pytest
import scipy.io
from PIL import Image, ImageFile

from minifcn.data import (VOC_MEAN_BGR, DatasetError, Loader, SyntheticShapes, VOCSegmentation,
                          deprocess, preprocess, synthetic_splits, validate_voc, voc_colormap,
                          write_voc)


class ListDataset:
    """A hand-made dataset: a list of (image, label) pairs."""

    def __init__(self, items):
        self.items = items

    def __len__(self):
        return len(self.items)

    def __getitem__(self, i):
        return self.items[i]


def pair(h, w, seed=0, num_classes=5):
    rng = np.random.default_rng(seed)
    img = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
    label = rng.integers(0, num_classes, (h, w)).astype(np.uint8)
    label[0, :] = 255
    return img, label


# ----------------------------------------------------------------------------- synthetic

def test_synthetic_is_deterministic_and_order_free():
    a, b = SyntheticShapes(6, seed=3), SyntheticShapes(6, seed=3)
    late_first = [b[i] for i in (5, 2, 0)]
    for i, (img, label) in zip((5, 2, 0), late_first):
        np.testing.assert_array_equal(a[i][0], img)
        np.testing.assert_array_equal(a[i][1], label)
    other = SyntheticShapes(6, seed=4)
    assert any(a[i][0].shape != other[i][0].shape or not np.array_equal(a[i][0], other[i][0])
               for i in range(6))


def test_synthetic_shapes_dtypes_range_and_background_majority():
    ds = SyntheticShapes(40, seed=0, size=(24, 40), num_classes=8)
    assert ds.class_names[0] == "background" and len(ds.class_names) == 8
    counts = np.zeros(256, np.int64)
    for i in range(len(ds)):
        img, label = ds[i]
        assert img.dtype == np.uint8 and img.ndim == 3 and img.shape[2] == 3
        assert label.dtype == np.uint8 and label.shape == img.shape[:2]
        assert 24 <= img.shape[0] <= 40 and 24 <= img.shape[1] <= 40
        counts += np.bincount(label.ravel(), minlength=256)
    used = np.flatnonzero(counts)
    assert set(used.tolist()) <= set(range(8)) | {255}
    assert counts[0] / counts.sum() > 0.5
    assert (counts[1:8] > 0).sum() >= 6          # most shapes show up in 40 images


def test_synthetic_indexing_void_border_and_splits():
    ds = SyntheticShapes(3, seed=0, size=32)
    for bad in (-1, 3):
        with pytest.raises(IndexError):
            ds[bad]
    assert ds[0][0].shape == (32, 32, 3)
    assert 255 not in SyntheticShapes(3, seed=0, void_border=False)[0][1]
    train, val = synthetic_splits(n_train=4, n_val=2, seed=1, size=20)
    assert len(train) == 4 and len(val) == 2
    np.testing.assert_array_equal(val[0][0], SyntheticShapes(5, seed=1, size=20)[4][0])
    assert not any(np.array_equal(val[j][0], train[i][0]) for i in range(4) for j in range(2))


# ----------------------------------------------------------------------------- preprocessing

def test_preprocess_is_bgr_mean_subtracted_chw_and_inverts():
    img = np.zeros((2, 3, 3), np.uint8)
    img[..., 0] = 200                            # red only
    x = preprocess(img)
    assert x.dtype == np.float32 and x.shape == (3, 2, 3)
    np.testing.assert_allclose(x[2], 200 - VOC_MEAN_BGR[2], rtol=1e-6)   # R is channel 2
    np.testing.assert_allclose(x[0], -VOC_MEAN_BGR[0], rtol=1e-6)        # B is channel 0
    img = pair(5, 7)[0]
    np.testing.assert_array_equal(deprocess(preprocess(img)), img)
    with pytest.raises(ValueError, match=r"\(5, 7\)"):
        preprocess(np.zeros((5, 7), np.uint8))


def test_voc_colormap():
    cmap = voc_colormap(256)
    assert cmap.shape == (256, 3) and cmap.dtype == np.uint8
    assert cmap[0].tolist() == [0, 0, 0] and cmap[1].tolist() == [128, 0, 0]
    assert cmap[15].tolist() == [192, 128, 128] and cmap[255].tolist() == [224, 224, 192]


# ----------------------------------------------------------------------------- VOC on disk

def test_write_voc_round_trip(tmp_path):
    ds = SyntheticShapes(3, seed=0, size=(20, 30))
    ids = write_voc(ds, tmp_path, "train")
    write_voc(ds, tmp_path, "train")             # writing again does not duplicate ids
    assert (tmp_path / "ImageSets/Segmentation/train.txt").read_text().split() == ids
    assert not list(tmp_path.rglob("*.tmp"))
    png = Image.open(tmp_path / "SegmentationClass" / f"{ids[0]}.png")
    assert png.mode == "P"
    assert png.getpalette()[:6] == [0, 0, 0, 128, 0, 0]
    voc = VOCSegmentation(tmp_path, "train")
    assert len(voc) == 3 and voc.ids == ids
    for i in range(3):
        img, label = voc[i]
        assert img.dtype == np.uint8 and label.dtype == np.uint8
        np.testing.assert_array_equal(label, ds[i][1])
        assert np.abs(img.astype(int) - ds[i][0]).mean() < 6      # JPEG, quality 95
    summary = validate_voc(tmp_path, "train", num_classes=5)
    assert summary["ids"] == ids and summary["class_pixels"][0] > 0


def test_sbd_layout(tmp_path):
    img, label = pair(6, 8)
    (tmp_path / "img").mkdir()
    (tmp_path / "cls").mkdir()
    Image.fromarray(img).save(tmp_path / "img" / "2008_000002.jpg", quality=95)
    scipy.io.savemat(tmp_path / "cls" / "2008_000002.mat",
                     {"GTcls": {"Segmentation": label, "Boundaries": np.zeros((1, 1)),
                                "CategoriesPresent": np.array([1, 2])}})
    (tmp_path / "train.txt").write_text("2008_000002\n")
    validate_voc(tmp_path, "train", num_classes=5, sbd=True)
    got_img, got_label = VOCSegmentation(tmp_path, "train", sbd=True)[0]
    np.testing.assert_array_equal(got_label, label)
    assert got_img.shape == (6, 8, 3)


@pytest.fixture
def voc_root(tmp_path):
    write_voc(ListDataset([pair(10, 12, s) for s in range(3)]), tmp_path, "train",
              ids=["a", "b", "c"])
    return tmp_path


def test_validate_missing_root_and_split(tmp_path, voc_root):
    with pytest.raises(DatasetError, match="does not exist"):
        validate_voc(tmp_path / "nope", "train", 5)
    with pytest.raises(DatasetError, match=r"val\.txt: split file not found.*train"):
        validate_voc(voc_root, "val", 5)
    (voc_root / "ImageSets/Segmentation/empty.txt").write_text("\n")
    with pytest.raises(DatasetError, match="empty.txt: split file lists no images"):
        validate_voc(voc_root, "empty", 5)


def test_validate_image_without_label(voc_root):
    (voc_root / "SegmentationClass/b.png").unlink()
    with pytest.raises(DatasetError, match=r"(?s)1 problem.*b\.jpg: image without label"):
        validate_voc(voc_root, "train", 5)


def test_validate_size_mismatch(voc_root):
    Image.fromarray(pair(9, 12)[1]).save(voc_root / "SegmentationClass/a.png")
    with pytest.raises(DatasetError, match=r"a\.png: label is 9x12 .* is 10x12"):
        validate_voc(voc_root, "train", 5)


def test_validate_bad_label_value(voc_root):
    label = pair(10, 12)[1]
    label[3, 4] = 7
    Image.fromarray(label).save(voc_root / "SegmentationClass/c.png")
    with pytest.raises(DatasetError, match=r"c\.png: label values \[7\] are >= num_classes=5"):
        validate_voc(voc_root, "train", 5)
    validate_voc(voc_root, "train", 8)           # fine with more classes


def test_validate_truncated_jpeg_and_reports_all(voc_root, monkeypatch):
    # Even a user who lets PIL pad truncated files with grey gets the error here.
    monkeypatch.setattr(ImageFile, "LOAD_TRUNCATED_IMAGES", True)
    path = voc_root / "JPEGImages/b.jpg"
    path.write_bytes(path.read_bytes()[:300])
    (voc_root / "JPEGImages/c.jpg").unlink()
    Image.fromarray(pair(10, 12)[0]).save(voc_root / "SegmentationClass/a.png")   # RGB colours
    with pytest.raises(DatasetError) as info:
        validate_voc(voc_root, "train", 5, max_report=2)
    msg = str(info.value)
    assert msg.startswith("3 problem(s)") and msg.endswith("... and 1 more")
    assert "a.png: label PNG has mode 'RGB'" in msg and "b.jpg: unreadable image" in msg
    with pytest.raises(DatasetError, match=r"c\.png: label without image"):
        validate_voc(voc_root, "train", 5, max_report=5)
    assert ImageFile.LOAD_TRUNCATED_IMAGES is True          # the user's setting is restored


# ----------------------------------------------------------------------------- Loader

def test_loader_batches_and_epoch():
    ds = ListDataset([pair(6, 8, s) for s in range(5)])
    loader = Loader(ds, batch_size=2, shuffle=False)
    batches = list(loader)
    assert len(batches) == len(loader) == 3 and loader.epoch == 1
    x, y = batches[0]
    assert x.dtype == np.float32 and x.shape == (2, 3, 6, 8)
    assert y.dtype == np.int32 and y.shape == (2, 6, 8)
    np.testing.assert_array_equal(x[1], preprocess(ds[1][0]))
    assert batches[2][0].shape[0] == 1
    assert len(list(loader)) == 3                # a second epoch


def test_loader_crop_pads_with_mean_and_void():
    img, label = pair(4, 5)
    loader = Loader(ListDataset([(img, label)]), crop=(6, 5))
    x, y = next(loader.forever())
    assert x.shape == (1, 3, 6, 5) and y.shape == (1, 6, 5)
    np.testing.assert_array_equal(y[0, :4], label)            # padded at the bottom
    assert (y[0, 4:] == 255).all() and (x[0, :, 4:] == 0).all()
    big = Loader(ListDataset([pair(20, 20, s) for s in range(4)]), batch_size=2, crop=7)
    assert next(big.forever())[0].shape == (2, 3, 7, 7)


def test_loader_mirror_flips_image_and_label_together():
    h, w = 3, 6
    img = np.zeros((h, w, 3), np.uint8)
    img[..., 0] = np.arange(w) * 40               # red encodes the column
    label = np.tile(np.arange(w, dtype=np.uint8), (h, 1))  # so does the label
    loader = Loader(ListDataset([(img, label)]), mirror=True, seed=0)
    flipped = 0
    for _, (x, y) in zip(range(12), loader.forever()):
        red = deprocess(x[0])[..., 0]
        np.testing.assert_array_equal(red, y[0].astype(np.uint8) * 40)
        flipped += y[0, 0, 0] == w - 1
    assert 0 < flipped < 12


def test_loader_unequal_sizes_need_a_crop():
    loader = Loader(ListDataset([pair(6, 8), pair(7, 8)]), batch_size=2, shuffle=False)
    with pytest.raises(ValueError, match=r"batch_size=2.*6x8.*7x8.*crop.*batch size 1"):
        next(iter(loader))


def test_loader_rng_is_reproducible_and_resumable():
    ds = SyntheticShapes(7, seed=0, size=(16, 24))

    def run(loader, n):
        return [b for _, b in zip(range(n), loader.forever())]

    a = run(Loader(ds, batch_size=2, seed=5, crop=12, mirror=True), 6)
    b = run(Loader(ds, batch_size=2, seed=5, crop=12, mirror=True), 6)
    for (xa, ya), (xb, yb) in zip(a, b):
        np.testing.assert_array_equal(xa, xb)
        np.testing.assert_array_equal(ya, yb)
    c = Loader(ds, batch_size=2, seed=5, crop=12, mirror=True)
    run(c, 3)                                     # stop mid-epoch, save, resume elsewhere
    state = json.loads(json.dumps(c.state_dict()))
    d = Loader(ds, batch_size=2, seed=99, crop=12, mirror=True)
    d.load_state_dict(state)
    for (xa, ya), (xd, yd) in zip(a[3:], run(d, 3)):
        np.testing.assert_array_equal(xa, xd)
        np.testing.assert_array_equal(ya, yd)
    other = run(Loader(ds, batch_size=2, seed=6, crop=12, mirror=True), 1)[0]
    assert not np.array_equal(other[0], a[0][0])


def test_loader_workers_give_the_same_batches_state_and_epochs():
    """workers=N decodes batches ahead in threads: the same batches in the same order as
    workers=0, epochs that end in the same place, a state_dict as of the batches handed out
    (resuming from it, with or without workers, continues the same stream)."""
    ds = SyntheticShapes(7, seed=0, size=(16, 24))
    kw = dict(batch_size=2, seed=5, crop=12, mirror=True)
    plain = Loader(ds, **kw)
    want = [b for _, b in zip(range(9), plain.forever())]
    for workers in (1, 3):
        loader = Loader(ds, workers=workers, **kw)
        epoch = list(loader)                       # one epoch: 4 batches, the last of 1 item
        assert len(epoch) == 4 and len(epoch[-1][0]) == 1 and loader.epoch == 1
        got = epoch + [next(iter(loader)) for _ in range(2)]
        state = json.loads(json.dumps(loader.state_dict()))
        resumed = Loader(ds, workers=1 - (workers > 1), **dict(kw, seed=99))
        resumed.load_state_dict(state)
        got += [b for _, b in zip(range(3), resumed.forever())]
        loader.close()
        resumed.close()
        assert loader._pool is None and len(got) == len(want)
        for (xa, ya), (xb, yb) in zip(want, got):
            np.testing.assert_array_equal(xa, xb)
            np.testing.assert_array_equal(ya, yb)


def test_loader_workers_stop_on_a_bad_item():
    """A batch that fails raises in the caller, as without workers, and the workers stop."""
    loader = Loader(ListDataset([pair(6, 8), pair(7, 8)] * 3), batch_size=2, shuffle=False,
                    workers=2)
    with pytest.raises(ValueError, match=r"batch_size=2.*6x8.*7x8"):
        next(iter(loader))
    assert loader._pool is None and not loader._ahead
    with pytest.raises(ValueError, match="workers must be >= 0"):
        Loader(ListDataset([pair(6, 8)]), workers=-1)


def test_atomic_write_leaves_old_file_or_new_one(tmp_path):
    """minifcn.files.atomic_write, behind every file minifcn writes: a save that fails
    midway leaves the old file as it was and no temporary file; one that succeeds replaces
    it, with the umask's permissions (not a private temp file's 0600)."""
    import os

    from minifcn.files import atomic_write, atomic_write_text
    target = tmp_path / "sub" / "out.txt"
    atomic_write_text(target, "old\n")                       # makes the missing folder

    def half(f):
        f.write(b"partial")
        raise RuntimeError("disk full")
    with pytest.raises(RuntimeError, match="disk full"):
        atomic_write(target, half)
    assert target.read_text() == "old\n" and os.listdir(target.parent) == ["out.txt"]
    umask = os.umask(0)
    os.umask(umask)
    assert (target.stat().st_mode & 0o777) == 0o666 & ~umask
