"""Exclusive locks between runs sharing a results folder: `fcntl.flock` on a lock file beside the guarded data.

The holder deletes the lock file before releasing it, so no lock files are left behind. A waiter that
then wins the lock on the deleted file sees that the path no longer names its file and tries again,
so two runs can never both hold the lock of one path (the usual flock-and-unlink protocol).
"""

from __future__ import annotations

import fcntl
import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path


def _names_fd(path: Path, fd: int) -> bool:
    """Whether `path` still names the open file `fd` (it does not once a previous holder has deleted it)."""
    try:
        here = os.stat(path)
    except FileNotFoundError:
        return False
    mine = os.fstat(fd)
    return (here.st_dev, here.st_ino) == (mine.st_dev, mine.st_ino)


@contextmanager
def exclusive(path: str | Path, on_wait: Callable[[], None] | None = None) -> Iterator[None]:
    """Hold an exclusive lock on `path` for the block; `on_wait()` is called once if another run holds it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    waited = False
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                if on_wait is not None and not waited:
                    on_wait()
                waited = True
                fcntl.flock(fd, fcntl.LOCK_EX)
        except BaseException:
            os.close(fd)
            raise
        if _names_fd(path, fd):
            break
        os.close(fd)
    try:
        yield
    finally:
        path.unlink(missing_ok=True)
        os.close(fd)
