"""Every form a checkpoint comes in, opened as one ``Checkpoint`` under the official (BlinkDL) names.

- a BlinkDL ``.pth`` or ``.safetensors`` file: read as it is (``checkpoint.open_file``);
- a Hugging Face model folder (``config.json`` and single or sharded weights), the folder itself or a
  file in it: renamed by its layout's table (``huggingface.py``);
- a GGUF file (llama.cpp's ``rwkv6`` / ``rwkv7``): read with the ``gguf`` package (``gguf.py``).

What a path is comes from the path and the file's first bytes, never from its name's extension alone.
"""

from __future__ import annotations

from pathlib import Path

from . import gguf, huggingface
from .checkpoint import Checkpoint, open_file


def open_checkpoint(path: str | Path) -> Checkpoint:
    """Open ``path`` in whichever supported form it is, its values checked; CheckpointError or
    UnknownArchitectureError, in one line, where it is none of them."""
    path = Path(path)
    if path.is_dir() or huggingface.is_folder_file(path):
        return huggingface.open_folder(path)
    if gguf.is_gguf(path):
        return gguf.open_gguf(path)
    checkpoint = open_file(path)
    if huggingface.is_hf_layout(checkpoint.tensors):
        return huggingface.open_folder(path, opened=checkpoint)
    return checkpoint
