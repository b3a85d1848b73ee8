"""GGUF files written by llama.cpp for RWKV models, read with the ``gguf`` package."""

from __future__ import annotations

from pathlib import Path

from .checkpoint import Checkpoint

MAGIC = b"GGUF"


def is_gguf(path: Path) -> bool:
    """Whether ``path`` is a regular file that starts with the GGUF magic."""
    try:
        with open(path, "rb") as f:
            return f.read(4) == MAGIC
    except OSError:
        return False


def open_gguf(path: Path) -> Checkpoint:
    from ..errors import CheckpointError

    raise CheckpointError(f"{path}: is a GGUF file; GGUF input is not supported yet")
