"""Images and split files as users have them: every PIL mode converted by the stated rule or
refused by name, decompression bombs refused, label PNGs in a wrong mode refused, split files
in UTF-8 (with or without a BOM) or UTF-16 read, any other encoding refused naming the line."""
import numpy as np
import pytest
from PIL import Image

from minifcn import data
from minifcn.files import BadFileError, probe_image, read_image, read_lines

RGB = np.array([[[10, 20, 30], [200, 100, 0]]], np.uint8)          # 1 x 2


def _save(tmp_path, name, im):
    path = tmp_path / name
    im.save(path)
    return path


@pytest.mark.parametrize("mode,make,expected", [
    ("RGB", lambda: Image.fromarray(RGB), RGB),
    ("L", lambda: Image.fromarray(np.array([[7, 250]], np.uint8)),
     np.repeat(np.array([[7, 250]], np.uint8)[..., None], 3, axis=2)),
    ("RGBA", lambda: Image.fromarray(np.dstack([RGB, np.array([[0, 255]], np.uint8)])), RGB),
    ("LA", lambda: Image.fromarray(np.dstack([np.array([[7, 250]], np.uint8)] * 2), "LA"),
     np.repeat(np.array([[7, 250]], np.uint8)[..., None], 3, axis=2)),
    ("I;16", lambda: Image.fromarray(np.array([[0, 65535, 32896]], np.uint16)),
     np.repeat(np.array([[0, 255, 128]], np.uint8)[..., None], 3, axis=2)),
])
def test_each_mode_is_converted_by_the_stated_rule(mode, make, expected, tmp_path):
    im = make()
    assert im.mode == mode
    got = read_image(_save(tmp_path, "a.png", im))
    assert got.dtype == np.uint8 and got.shape == expected.shape
    np.testing.assert_array_equal(got, expected)


def test_a_palette_image_is_looked_up_and_its_transparency_dropped(tmp_path):
    im = Image.fromarray(np.array([[0, 1]], np.uint8), "P")
    im.putpalette([10, 20, 30, 200, 100, 0] + [0] * 762)
    im.info["transparency"] = 0
    np.testing.assert_array_equal(read_image(_save(tmp_path, "p.png", im)), RGB)


def test_float_images_and_32_bit_ones_beyond_16_bits_are_refused(tmp_path):
    f = _save(tmp_path, "f.tif", Image.fromarray(np.ones((2, 2), np.float32)))
    with pytest.raises(BadFileError, match="floating-point"):
        read_image(f)
    with pytest.raises(BadFileError, match="floating-point"):
        probe_image(f)                          # refused from the header, before any work
    big = _save(tmp_path, "i.tif", Image.fromarray(np.array([[0, 70000]], np.int32)))
    with pytest.raises(BadFileError, match="outside 16 bits") as e:
        read_image(big)
    assert str(big) in str(e.value)


@pytest.mark.parametrize("pixels", [100, 200])       # Pillow warns above its limit, raises at 2x
def test_a_decompression_bomb_is_refused_by_name(pixels, tmp_path, monkeypatch):
    path = _save(tmp_path, "bomb.png", Image.new("L", (15, 15)))       # 225 pixels
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", pixels)
    for read in (read_image, probe_image):
        with pytest.raises(BadFileError, match="decompression bomb") as e:
            read(path)
        assert str(path) in str(e.value)


def test_unreadable_and_truncated_images_name_the_file(tmp_path):
    junk = tmp_path / "junk.png"
    junk.write_bytes(b"not an image")
    good = _save(tmp_path, "t.png", Image.fromarray(np.random.default_rng(0).integers(
        0, 255, (40, 40, 3), dtype=np.uint8)))
    cut = tmp_path / "cut.png"
    cut.write_bytes(good.read_bytes()[:300])
    for path in (junk, cut):
        with pytest.raises(BadFileError) as e:
            read_image(path)
        assert str(path) in str(e.value)


@pytest.mark.parametrize("mode", ["RGB", "I;16", "1"])
def test_label_pngs_in_a_wrong_mode_are_refused(mode, tmp_path):
    im = Image.new(mode, (4, 3))
    path = _save(tmp_path, "label.png", im)
    with pytest.raises(data.DatasetError, match=f"label PNG has mode '{mode}'") as e:
        data._load_label(path)
    assert str(path) in str(e.value)


@pytest.mark.parametrize("codec,bom", [("utf-8", b""), ("utf-8", b"\xef\xbb\xbf"),
                                       ("utf-16-le", b"\xff\xfe"), ("utf-16-be", b"\xfe\xff")])
def test_split_files_in_utf8_or_utf16_with_a_bom_are_read(codec, bom, tmp_path):
    path = tmp_path / "train.txt"
    path.write_bytes(bom + "2007_000032\r\n\n  café_01  \n".encode(codec))
    assert read_lines(path) == ["2007_000032", "café_01"]


def test_split_files_in_another_encoding_are_refused_naming_file_and_line(tmp_path):
    latin = tmp_path / "latin.txt"
    latin.write_bytes("a\nb\ncafé\n".encode("latin-1"))
    with pytest.raises(BadFileError, match="line 3 is not utf-8") as e:
        read_lines(latin)
    assert str(latin) in str(e.value)
    nobom = tmp_path / "u16.txt"
    nobom.write_bytes("abc\ndef\n".encode("utf-16-le"))
    with pytest.raises(BadFileError, match="line 1 holds a NUL"):
        read_lines(nobom)


def test_a_voc_dataset_with_a_utf16_split_file_loads(tmp_path):
    ids = data.write_voc(data.SyntheticShapes(2, seed=3, size=(16, 20)), tmp_path, "val")
    split = tmp_path / "ImageSets" / "Segmentation" / "val.txt"
    split.write_bytes(b"\xff\xfe" + "\n".join(ids).encode("utf-16-le"))
    ds, n = data.open_dataset(str(tmp_path), "val", num_classes=5)
    img, label = ds[1]
    assert ds.ids == ids and n == 5 and img.shape == label.shape + (3,)
