"""Advisory locks on an artifact directory: one writer at a time, and no writer while it is verified.

A writer holds an exclusive ``flock`` on the output directory from before it reads the old artifact
until the new one is swapped in; a reader that will write a verdict beside the artifact (``verify``)
holds a shared one while it loads, judges and reports. Each side fails at once, with one line,
when the other holds the directory. The lock is taken on the directory itself (an open descriptor),
so it needs no write access: a read-only artifact is locked and verified too.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from collections.abc import Iterator
from pathlib import Path

from ..errors import ArtifactError


def lock_directory(path: Path, exclusive: bool = True, create: bool = False) -> int:
    """A flock on ``path`` (created first if ``create``), returned as its open descriptor; closing it
    drops the lock. ArtifactError when another run holds a conflicting lock. The lock is re-taken if
    ``path`` was swapped for another directory meanwhile, so the caller holds what the path names."""
    for _ in range(3):
        if create:
            path.mkdir(exist_ok=True)
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
        try:
            fcntl.flock(fd, (fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH) | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise ArtifactError(f"another rwkv-edge run is {'using' if exclusive else 'writing'} {path}"
                                f"{' (writing or verifying it)' if exclusive else ''}: wait for it to finish"
                                f"{', or write elsewhere' if exclusive else ''}") from None
        held, now = os.fstat(fd), os.stat(path)
        if (held.st_dev, held.st_ino) == (now.st_dev, now.st_ino):
            return fd
        os.close(fd)  # another run swapped a new artifact in meanwhile: lock that one
    raise ArtifactError(f"{path} keeps changing under concurrent rwkv-edge runs; try again")


@contextlib.contextmanager
def reading(directory: str | Path) -> Iterator[None]:
    """Hold a shared lock on the artifact directory ``directory`` (symlinks resolved, as writers
    resolve them) for the block: no writer replaces the artifact meanwhile. A path that is no
    directory is left to the reader's own error."""
    path = Path(directory).resolve()
    if not path.is_dir():
        yield
        return
    fd = lock_directory(path, exclusive=False)
    try:
        yield
    finally:
        os.close(fd)
