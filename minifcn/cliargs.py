"""The command line's argument types: each flag's value is checked as argparse reads it, so
a meaningless number (nan, inf, a negative count, a momentum of 1) or an output path that
cannot be written is refused with argparse's one line naming the flag ("argument --lr: must
be > 0, got nan"), exit 2, before any net is built or any data read.

    p.add_argument("--lr", type=positive_float)
    p.add_argument("--out", type=out_dir)

argparse calls a type on the flag's text (and on a default given as text), and turns the
ArgumentTypeError raised here into its usage error with the flag's name in front.
"""
from __future__ import annotations

import math
import os
from argparse import ArgumentTypeError

MAX_CLASSES = 65535          # masks are written as 16-bit PNGs at most; scores are per class
MAX_SEED = 2 ** 32           # numpy's legacy seeds and most others take 32 bits


def _number(text, kind):
    try:
        return kind(text)
    except (TypeError, ValueError):
        raise ArgumentTypeError(f"not {'an integer' if kind is int else 'a number'}: "
                                f"{text!r}") from None


def finite_float(text):
    v = _number(text, float)
    if not math.isfinite(v):
        raise ArgumentTypeError(f"must be a finite number, got {text}")
    return v


def positive_float(text):
    v = finite_float(text)
    if v <= 0:
        raise ArgumentTypeError(f"must be > 0, got {text}")
    return v


def nonneg_float(text):
    v = finite_float(text)
    if v < 0:
        raise ArgumentTypeError(f"must be >= 0, got {text}")
    return v


def unit_interval(text):
    """[0, 1): a momentum (1 would never forget a gradient; more would diverge)."""
    v = finite_float(text)
    if not 0 <= v < 1:
        raise ArgumentTypeError(f"must be in [0, 1), got {text}")
    return v


def probability(text):
    """(0, 1]: a probability of keeping something (0 would keep nothing)."""
    v = finite_float(text)
    if not 0 < v <= 1:
        raise ArgumentTypeError(f"must be in (0, 1], got {text}")
    return v


def positive_int(text):
    v = _number(text, int)
    if v < 1:
        raise ArgumentTypeError(f"must be >= 1, got {text}")
    return v


def nonneg_int(text):
    v = _number(text, int)
    if v < 0:
        raise ArgumentTypeError(f"must be >= 0, got {text}")
    return v


def seed(text):
    v = _number(text, int)
    if not 0 <= v < MAX_SEED:
        raise ArgumentTypeError(f"must be an integer in [0, 2**32), got {text}")
    return v


def num_classes(text):
    v = positive_int(text)
    if v > MAX_CLASSES:
        raise ArgumentTypeError(f"must be <= {MAX_CLASSES} (masks are 16-bit at most), "
                                f"got {text}")
    return v


def check_class_weights(weights, classes, flag="--class-weights"):
    """A message if weights (each already finite and >= 0) do not fit `classes`, else None."""
    if len(weights) != classes:
        return f"{flag} has {len(weights)} values for {classes} classes"
    if not any(weights):
        return f"{flag} are all zero: no pixel would count"
    return None


def memory_bytes():
    """This machine's physical memory (None where the OS will not say)."""
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (AttributeError, ValueError, OSError):
        return None


def check_score_memory(classes, batch, height, width, flag="--num-classes"):
    """A message if the score blob (batch x classes x H x W float32, about three copies while
    training: scores, probabilities, gradient) would not fit this machine's memory."""
    need, have = 3 * 4 * classes * batch * height * width, memory_bytes()
    if have is not None and need > have:
        return (f"{flag} {classes}: the score blob for batch {batch} of {height}x{width} "
                f"needs about {need / 2 ** 30:.1f} GiB, more than this machine's "
                f"{have / 2 ** 30:.1f} GiB")
    return None


# ----------------------------------------------------------------------------- output paths
def _creatable(path):
    """Raise ArgumentTypeError unless `path` (not there yet) could be made: its nearest
    existing ancestor is a folder we can write in."""
    parent = os.path.dirname(os.path.abspath(path))
    while not os.path.exists(parent):
        parent = os.path.dirname(parent)
    if not os.path.isdir(parent):
        raise ArgumentTypeError(f"{path}: {parent} is a file, not a folder")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise ArgumentTypeError(f"{path}: cannot create it, {parent} is not writable")


def out_dir(text):
    """A folder to write into: an existing writable folder, or one that can be made."""
    if not text:
        raise ArgumentTypeError("an empty path")
    if os.path.exists(text):
        if not os.path.isdir(text):
            raise ArgumentTypeError(f"{text} is a file, not a folder")
        if not os.access(text, os.W_OK | os.X_OK):
            raise ArgumentTypeError(f"{text} is not writable")
    else:
        _creatable(text)
    return text


def out_file(text):
    """A file to write (or replace): not a folder, its folder writable or makeable. Files are
    written to a temporary name beside it and renamed (minifcn.files), so the folder must be
    writable even where the file is."""
    if not text:
        raise ArgumentTypeError("an empty path")
    if os.path.isdir(text):
        raise ArgumentTypeError(f"{text} is a folder, not a file")
    folder = os.path.dirname(os.path.abspath(text))
    if os.path.isdir(folder):
        if not os.access(folder, os.W_OK | os.X_OK):
            raise ArgumentTypeError(f"{text}: its folder {folder} is not writable")
    else:
        _creatable(text)
    return text
