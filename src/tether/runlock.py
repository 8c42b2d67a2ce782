"""One writer per run directory: ``tether train`` holds an advisory lock on ``<output_dir>/.tether.lock``.

The lock is an ``flock`` on the file, so the kernel drops it when its holder dies (even by ``kill -9``);
the file also names the holder (pid, host, start time) for the message a second writer gets. A lock file
whose ``flock`` is free was left by a process that is gone, and is taken over with a note.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import socket
import time
from collections.abc import Iterator
from pathlib import Path

from .errors import TetherError

LOCK_FILE = ".tether.lock"


class RunDirLocked(TetherError):
    """Another live process is writing into the run directory."""


def _holder(text: str) -> str:
    try:
        h = json.loads(text)
        return f"pid {h['pid']} on host {h['host']}, since {h['since']}"
    except (ValueError, KeyError, TypeError):
        return "an unknown process"


@contextlib.contextmanager
def run_dir_lock(run_dir: Path, *, enabled: bool = True) -> Iterator[None]:
    """Hold the run directory's lock for the block; raises :class:`RunDirLocked` naming the holder.

    Creates ``run_dir`` if needed and, on leaving, removes the lock file and a directory it created that
    stayed empty (a run refused later leaves nothing behind)."""
    if not enabled:
        yield
        return
    created = not run_dir.exists()
    if run_dir.exists() and not run_dir.is_dir():
        raise TetherError(f"train.output_dir: {run_dir} is not a directory")
    run_dir.mkdir(parents=True, exist_ok=True)
    path = run_dir / LOCK_FILE
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            text = Path(path).read_text(errors="replace") if path.exists() else ""
            os.close(fd)
            raise RunDirLocked(
                f"train.output_dir: {run_dir} is in use by another tether train ({_holder(text)}); "
                "wait for it to finish or choose another directory"
            ) from None
        try:
            same = os.fstat(fd).st_ino == os.stat(path).st_ino  # not unlinked by a holder that just left
        except FileNotFoundError:
            same = False
        if same:
            break
        os.close(fd)
    stale = os.read(fd, 4096).decode(errors="replace").strip()
    if stale:
        print(f"note: taking over the lock of {run_dir} left by a process that is gone ({_holder(stale)})")
    me = {"pid": os.getpid(), "host": socket.gethostname(), "since": time.strftime("%Y-%m-%d %H:%M:%S")}
    os.ftruncate(fd, 0)
    os.pwrite(fd, json.dumps(me).encode(), 0)
    try:
        yield
    finally:
        with contextlib.suppress(OSError):
            path.unlink()
        os.close(fd)
        if created:
            with contextlib.suppress(OSError):
                run_dir.rmdir()  # only when empty
