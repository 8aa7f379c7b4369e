"""Files in and out, safely.

Writing: weights, checkpoints, training logs, masks, overlays, the synthetic dataset on disk and
benchmark reports all go to a temporary file beside their target, which is renamed over it only
once complete. A crash or Ctrl-C mid-write leaves the old file (or none), never a truncated one
under the real name.

Reading: what a user hands us may be truncated, empty, damaged, of another kind or hostile.
read_npz, read_image and read_lines check before anything is used and raise BadFileError (a
ValueError: the CLI prints it as one line) naming the file, and the array or line, instead of
whatever numpy, zipfile, Pillow or the codec would have thrown from deep inside.
"""
from __future__ import annotations

import contextlib
import os
import secrets
import warnings
import zipfile
import zlib

import numpy as np


class BadFileError(ValueError):
    """A file minifcn cannot use: empty, truncated, damaged, of another kind, or holding values
    it refuses. The message starts with the file's path (and names the array or line)."""


def atomic_write(path, save):
    """Call save(f) with a binary file open on a temporary file in path's folder (made if
    missing), then rename it to path. On any error the temporary file is removed and the
    error raised again; path is left as it was. The file gets the usual permissions (the
    umask's), not a private temp file's 0600."""
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    tmp = os.path.join(folder, f".{os.path.basename(path)}.{secrets.token_hex(4)}.tmp")
    try:
        with open(tmp, "xb") as f:
            save(f)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def atomic_write_text(path, text):
    atomic_write(path, lambda f: f.write(text.encode()))


# ----------------------------------------------------------------------------- .npz
def _head(path, what, n=8):
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{what} {path} does not exist")
    if os.path.getsize(path) == 0:
        raise BadFileError(f"{path}: the {what} is empty (0 bytes)")
    with open(path, "rb") as f:
        return f.read(n)


def _kind_of(head):
    """What a file that should have been an archive looks like instead, in words."""
    if head.startswith(b"\x93NUMPY"):
        return "a single .npy array, not an .npz archive of named arrays (np.savez writes those)"
    try:
        head.decode("utf-8")
        return "text, not an .npz archive"
    except UnicodeDecodeError:
        return f"not an .npz archive (it starts with bytes {head[:4]!r})"


def read_npz(path, what="weights file", plain=False):
    """{name: array} from an .npz, every array read and checked: no pickle (object arrays
    refused), numbers only (bool, int or float; the one text entry allowed is a checkpoint's
    'info'), every float finite. A 0-byte, truncated or bit-flipped (bad CRC) archive, a .npy
    or a text file is refused by name; so is a training checkpoint where plain=True."""
    head = _head(path, what)
    if not head.startswith(b"PK"):
        raise BadFileError(f"{path}: the {what} is {_kind_of(head)}")
    arrays = {}
    try:
        with np.load(path, allow_pickle=False) as f:
            for key in f.files:
                try:
                    arrays[key] = f[key]
                except ValueError as e:          # an object array: it would need pickle
                    raise BadFileError(f"{path}: array {key!r} cannot be read without pickle, "
                                       f"which minifcn never uses ({e})") from None
    except BadFileError:
        raise
    except (zipfile.BadZipFile, zlib.error, EOFError, OSError, ValueError, KeyError) as e:
        raise BadFileError(f"{path}: the {what} is damaged or truncated "
                           f"({type(e).__name__}: {e})") from None
    odd = [k for k, v in arrays.items() if not isinstance(v, np.ndarray)]
    if odd:                                      # np.load hands other members over as bytes
        raise BadFileError(f"{path}: entry {odd[0]!r} is not a numpy array: a zip, but not an "
                           f".npz (a torch .pth? it goes to --weights, not --resume)")
    if plain and "info" in arrays:
        raise BadFileError(f"{path} is a training checkpoint (weights, solver state and what "
                           f"the model is), not plain weights: load it with minifcn.load(path) "
                           f"or minifcn.weights.load_weights(net, path)")
    for key, v in arrays.items():
        if key == "info":
            continue
        if v.dtype.kind not in "biuf":
            raise BadFileError(f"{path}: array {key!r} holds {v.dtype} values, not numbers")
        if v.dtype.kind == "f":
            bad = v.size - int(np.count_nonzero(np.isfinite(v)))
            if bad:
                raise BadFileError(f"{path}: array {key!r} has {bad} non-finite value(s) (NaN "
                                   f"or inf) of {v.size}: a diverged or damaged model")
    return arrays


# ----------------------------------------------------------------------------- text
def read_lines(path, what="file"):
    """The non-blank lines of a text file, stripped. UTF-8, with or without a byte-order mark,
    and UTF-16 with its mark are read; anything else (latin-1, UTF-16 without a mark) is
    refused naming the file and the first line that is not UTF-8."""
    with open(path, "rb") as f:
        raw = f.read()
    if raw.startswith((b"\xff\xfe", b"\xfe\xff")):
        codec = "utf-16"
    else:
        codec = "utf-8-sig"
    try:
        text = raw.decode(codec)
    except UnicodeDecodeError as e:
        line = raw[:e.start].count(b"\n") + 1
        raise BadFileError(f"{path}: line {line} is not {codec.replace('-sig', '')} text (byte "
                           f"{e.start}: {raw[e.start:e.start + 1]!r}); save the {what} as "
                           f"UTF-8") from None
    if "\x00" in text:
        line = text[:text.index("\x00")].count("\n") + 1
        raise BadFileError(f"{path}: line {line} holds a NUL character (UTF-16 without a "
                           f"byte-order mark?); save the {what} as UTF-8")
    return [s.strip() for s in text.splitlines() if s.strip()]


# ----------------------------------------------------------------------------- images
def _rgb(im, path):
    """An RGB uint8 (H, W, 3) array from any PIL image, by one rule each mode:
    RGB as it is; L, 1, P, CMYK, YCbCr, LAB, HSV by Pillow's conversion (greys replicated,
    palettes looked up); RGBA, LA, PA and palette transparency: alpha dropped (the colours as
    stored); 16-bit greys (I;16, I;16B, I;16L, and I holding 0..65535) scaled by 255/65535 and
    rounded; float (F) and 32-bit integers beyond 16 bits refused (no agreed range)."""
    mode = im.mode
    if mode.startswith("I"):
        v = np.asarray(im).astype(np.int64)
        if v.size and (v.min() < 0 or v.max() > 65535):
            raise BadFileError(f"{path}: a {mode} image with values {v.min()}..{v.max()}, "
                               f"outside 16 bits: minifcn does not guess their range")
        grey = np.rint(v * (255 / 65535)).astype(np.uint8)
        return np.repeat(grey[:, :, None], 3, axis=2)
    if mode == "F":
        raise BadFileError(f"{path}: a floating-point (F) image: minifcn does not guess its "
                           f"range; save it as 8-bit RGB or 16-bit greyscale")
    if mode in ("RGBA", "LA", "PA", "RGBa", "La") or "transparency" in im.info:
        im = im.convert("RGBA")
    return np.ascontiguousarray(np.asarray(im.convert("RGB"), dtype=np.uint8))


@contextlib.contextmanager
def _open_image(path):
    """PIL's Image.open, with its errors as BadFileError naming the file: truncated files are
    an error (whatever ImageFile.LOAD_TRUNCATED_IMAGES says; the user's setting is restored)
    and more pixels than Pillow's Image.MAX_IMAGE_PIXELS is a decompression bomb (Pillow only
    warns up to twice that: its warning is our error)."""
    from PIL import Image, ImageFile, UnidentifiedImageError
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"image {path} does not exist")
    old, ImageFile.LOAD_TRUNCATED_IMAGES = ImageFile.LOAD_TRUNCATED_IMAGES, False
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as im:
                yield im
    except (Image.DecompressionBombWarning, Image.DecompressionBombError) as e:
        raise BadFileError(f"{path}: refused as a decompression bomb: {e}") from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, EOFError) as e:
        if isinstance(e, (BadFileError, FileNotFoundError)):
            raise
        raise BadFileError(f"{path}: cannot read the image ({type(e).__name__}: {e})") from None
    finally:
        ImageFile.LOAD_TRUNCATED_IMAGES = old


def read_image(path, convert=True):
    """An image file -> RGB uint8 (H, W, 3) by _rgb's rule (convert=False: the decoded PIL
    image). A missing, unreadable or truncated file or a decompression bomb is refused."""
    with _open_image(path) as im:
        im.load()
        return _rgb(im, os.fspath(path)) if convert else im.copy()


def probe_image(path):
    """(H, W) of an image file from its header alone (nothing decoded), refusing what read_image
    would refuse without decoding: a missing or unidentifiable file, a bomb, a float image."""
    with _open_image(path) as im:
        if im.mode == "F":
            _rgb(im, os.fspath(path))            # raises, naming the rule
        return im.size[1], im.size[0]
