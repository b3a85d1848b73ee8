"""Hugging Face model folders: ``config.json`` and the weights, renamed to the official names."""

from __future__ import annotations

from collections.abc import Collection
from pathlib import Path

from .checkpoint import Checkpoint, StateDict, directory_message


def is_folder_file(path: Path) -> bool:
    """Whether ``path`` names a folder's ``config.json`` or its sharded-weights index."""
    return path.name == "config.json" or path.name.endswith(".index.json")


def is_hf_layout(tensors: Collection[str]) -> bool:
    """Whether the key names are a Hugging Face layout's rather than the official ones."""
    return False


def open_folder(path: Path, opened: Checkpoint | None = None) -> Checkpoint:
    """The checkpoint of the model folder ``path`` (or of the folder holding the file ``path``)."""
    from ..errors import CheckpointError

    raise CheckpointError(directory_message(path))
