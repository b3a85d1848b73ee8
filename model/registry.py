"""The supported architectures, one version detector, and loading a checkpoint into a model."""

from __future__ import annotations

from pathlib import Path

import torch

from ..architectures import ARCHITECTURES, LANGUAGE, Architecture, detect
from ..errors import UnknownArchitectureError
from .base import RWKVModel
from .checkpoint import Checkpoint, StateDict, check_values
from .sources import open_checkpoint
from .vision import VisionRWKV


LANGUAGE_ARCHITECTURES: dict[str, Architecture] = {a.name: a for a in ARCHITECTURES.values() if a.family == LANGUAGE}


def detect_version(tensors: StateDict) -> str:
    """The language architecture ("v4" ... "v7") that the key names identify."""
    architecture = detect(tensors)
    if architecture.family != LANGUAGE:
        raise UnknownArchitectureError(
            "an image-model checkpoint (it has patch_embed or backbone. keys), not an RWKV language model, which "
            "this command takes: run a Vision-RWKV with `rwkv-edge classify`, `rwkv-edge trace --images`, "
            "`rwkv-edge export onnx` or `rwkv-edge compile` (`rwkv-edge info` shows its config)"
        )
    return architecture.name


def model_from_state_dict(tensors: StateDict, dtype: torch.dtype = torch.float32, source: str = "checkpoint") -> RWKVModel:
    """Check the values, detect the version and build the model, checking every key and shape."""
    check_values(tensors, source)
    return _build(tensors, dtype, source)


def model_from_checkpoint(checkpoint: Checkpoint, dtype: torch.dtype = torch.float32,
                          source: str = "checkpoint") -> RWKVModel:
    """The language model of an opened (values checked) checkpoint, with its source's constants."""
    return _build(checkpoint.tensors, dtype, source, checkpoint.constants)


def load_checkpoint(path: str | Path, dtype: torch.dtype = torch.float32) -> tuple[RWKVModel, str]:
    """Load a checkpoint of any supported version (computed in ``dtype``), and the sha256 of the exact
    bytes it was built from."""
    checkpoint = open_checkpoint(path)  # values checked
    return model_from_checkpoint(checkpoint, dtype, str(path)), checkpoint.sha256


def load_model(path: str | Path, dtype: torch.dtype = torch.float32) -> RWKVModel:
    """Load a ``.pth`` or ``.safetensors`` checkpoint of any supported version (computed in ``dtype``)."""
    return load_checkpoint(path, dtype)[0]


def load_any_model(path: str | Path, dtype: torch.dtype = torch.float32) -> RWKVModel | VisionRWKV:
    """A language model (v4-v7) or a Vision-RWKV model, whichever the checkpoint's keys name."""
    return open_any_model(path, dtype)[0]


def open_any_model(path: str | Path, dtype: torch.dtype = torch.float32) -> tuple[RWKVModel | VisionRWKV, Checkpoint]:
    """``load_any_model``'s model and the opened checkpoint it was built from (its source's layout)."""
    checkpoint = open_checkpoint(path)
    return detect(checkpoint.tensors).model_class().from_checkpoint(checkpoint, dtype, str(path)), checkpoint


def _build(tensors: StateDict, dtype: torch.dtype, source: str, constants: dict | None = None) -> RWKVModel:
    model_class = ARCHITECTURES[detect_version(tensors)].model_class()
    return model_class.from_state_dict(tensors, dtype=dtype, source=source, constants=constants)
