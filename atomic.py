"""Atomic file writes: an interrupted run never leaves a half-written artifact that looks valid."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from .errors import ArtifactError


@contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success rename it over ``path``, else delete it."""
    path = Path(path)
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".partial" + path.suffix, dir=path.parent)
    except OSError as e:
        raise ArtifactError(f"cannot write {path}: {e.strerror}") from None
    os.close(fd)
    os.chmod(tmp, 0o666 & ~current_umask())  # mkstemp creates 0600; give the file the usual permissions
    try:
        yield Path(tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def check_writable(path: str | Path) -> None:
    """ArtifactError now, not after a long run, if a file cannot be written at ``path``."""
    path = Path(path)
    try:
        tempfile.NamedTemporaryFile(dir=path.parent).close()
    except OSError as e:
        raise ArtifactError(f"cannot write {path}: {e.strerror}") from None


def current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask
