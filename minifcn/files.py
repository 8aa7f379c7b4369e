"""Writing files so that none is ever half-written: weights, checkpoints, training logs, masks,
overlays, the synthetic dataset on disk and benchmark reports all go to a temporary file beside
their target, which is renamed over it only once complete. A crash or Ctrl-C mid-write leaves
the old file (or none), never a truncated one under the real name."""
from __future__ import annotations

import contextlib
import os
import secrets


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
