"""One training run per output folder: `minifcn train` holds --out/train.lock while it runs,
so a second run on the same folder is refused instead of interleaving its checkpoints and
log lines with the first's.

    with RunLock(out_dir):           # LockHeld if another live run holds it
        ...train...

The lock is made with O_CREAT | O_EXCL (two runs racing for it: exactly one wins) and holds
the owner's pid and host as JSON. It is removed on exit, also on an error or Ctrl-C. A run
killed outright (SIGKILL, a power cut) leaves its lock behind: one whose pid is dead on this
host is taken over with a warning; one from another host (a shared file system) cannot be
checked from here and is refused, its message saying which file to remove.
"""
from __future__ import annotations

import contextlib
import json
import os
import socket
import time
import warnings

NAME = "train.lock"


class LockHeld(RuntimeError):
    """Another run holds the output folder's lock."""


def _alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:                  # someone else's process: alive
        return True
    return True


def _owner(path):
    """The lock's JSON (pid, host, started), or None if it cannot be read as one."""
    try:
        with open(path) as f:
            info = json.load(f)
        return info if isinstance(info, dict) and isinstance(info.get("pid"), int) else None
    except (OSError, ValueError):
        return None


class RunLock:
    """The lock file NAME in out_dir (made if missing; removed again on release if it was
    made here and is still empty, so that a refused run leaves nothing behind)."""

    def __init__(self, out_dir, what="minifcn train"):
        self.out_dir, self.what = os.fspath(out_dir), what
        self.path = os.path.join(self.out_dir, NAME)
        self.made_dir = False
        self.held = False

    def acquire(self):
        if not os.path.isdir(self.out_dir):
            os.makedirs(self.out_dir, exist_ok=True)
            self.made_dir = True
        me = {"pid": os.getpid(), "host": socket.gethostname(), "started": time.time()}
        for attempt in range(2):             # the second after taking over a stale lock
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                owner = _owner(self.path)
                if attempt == 0 and self._stale(owner) and self._take_over():
                    continue
                self._release_dir()
                raise LockHeld(self._held_message(_owner(self.path))) from None
            with os.fdopen(fd, "w") as f:
                json.dump(me, f)
            self.held = True
            return self
        raise AssertionError("unreachable")

    def _take_over(self):
        """Remove a stale lock. Two runs may find it stale at once: a second, short-lived
        lock (NAME.takeover) lets one of them re-read and remove it, so that the other
        cannot remove the fresh lock the first has made by then."""
        guard = self.path + ".takeover"
        try:
            os.close(os.open(guard, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644))
        except FileExistsError:
            return False
        try:
            owner = _owner(self.path)
            if not self._stale(owner):
                return False
            warnings.warn(f"{self.path}: taking over the lock of pid {owner['pid']}, which is "
                          f"no longer running on this host", stacklevel=3)
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.path)
            return True
        finally:
            os.unlink(guard)

    def _stale(self, owner):
        return (owner is not None and owner.get("host") == socket.gethostname()
                and owner["pid"] != os.getpid() and not _alive(owner["pid"]))

    def _held_message(self, owner):
        if owner is None:
            who = "a run whose lock cannot be read (being written, or damaged)"
        else:
            since = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(owner.get("started", 0)))
            who = f"pid {owner['pid']} on host {owner.get('host')} (since {since})"
        return (f"{self.out_dir} is in use by another {self.what}: {self.path} is held by "
                f"{who}; use another --out, or remove {self.path} if that run is gone")

    def release(self):
        if self.held:
            self.held = False
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.path)
        self._release_dir()

    def _release_dir(self):
        if self.made_dir:
            self.made_dir = False
            with contextlib.suppress(OSError):   # not empty: the run wrote something, keep it
                os.rmdir(self.out_dir)

    def __enter__(self):
        return self.acquire()

    def __exit__(self, *exc):
        self.release()
