"""The supported architectures, one version detector, and loading a checkpoint into a model."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from ..errors import UnknownArchitectureError
from .base import RWKVModel
from .checkpoint import StateDict, check_values, open_checkpoint
from .v4 import RWKV4
from .v5 import RWKV5
from .v6 import RWKV6
from .v7 import RWKV7
from .vision import VisionRWKV, is_vision_checkpoint


DEMO_CHECKPOINT = Path(__file__).parent / "demo" / "rwkv7-demo.pth"  # trained by model/demo/train.py
VISION_DEMO_CHECKPOINT = Path(__file__).parent / "demo" / "vrwkv-demo.pth"  # trained by model/demo/train_vision.py


@dataclass(frozen=True)
class Architecture:
    version: str
    label: str
    model_class: type[RWKVModel]


ARCHITECTURES: dict[str, Architecture] = {
    a.version: a
    for a in (
        Architecture("v4", "RWKV-4", RWKV4),
        Architecture("v5", 'RWKV-5 "Eagle" (x052)', RWKV5),
        Architecture("v6", 'RWKV-6 "Finch" (x060)', RWKV6),
        Architecture("v7", 'RWKV-7 "Goose" (x070)', RWKV7),
    )
}


def detect_version(tensors: StateDict) -> str:
    """The architecture version ("v4" ... "v7") that the key names identify."""
    if is_vision_checkpoint(tensors):
        raise UnknownArchitectureError(
            "an image-model checkpoint (it has patch_embed or backbone. keys), not an RWKV language model; this "
            "takes a language model (Vision-RWKV checkpoints load with load_vision_checkpoint; `rwkv-edge info` "
            "shows their config)"
        )
    if "emb.weight" not in tensors or "blocks.0.ffn.key.weight" not in tensors:
        raise UnknownArchitectureError(
            "not an RWKV checkpoint: expected keys 'emb.weight' and 'blocks.0.ffn.key.weight' "
            f"(found {', '.join(sorted(tensors)[:5])}{', ...' if len(tensors) > 5 else ''})"
        )
    att = {k.split(".", 3)[3] for k in tensors if k.startswith("blocks.0.att.")}
    if "x_r" in att:  # v7 only; its config then names any other missing key
        return "v7"
    if "time_maa_x" in att:
        return "v6"
    if "ln_x.weight" in att:
        if "time_faaaa" in att and "gate.weight" in att:
            return "v5"
        raise UnknownArchitectureError(
            "an RWKV-5 preview checkpoint (v5.0/v5.1, no 'time_faaaa'); only RWKV-5.2 (x052) is supported"
        )
    if {"time_first", "time_decay", "time_mix_k"} <= att:
        return "v4"
    raise UnknownArchitectureError(
        f"unknown RWKV architecture: block 0 attention has {', '.join(sorted(att)) or 'no tensors'}; "
        f"supported: {', '.join(a.label for a in ARCHITECTURES.values())}"
    )


def model_from_state_dict(tensors: StateDict, dtype: torch.dtype = torch.float32, source: str = "checkpoint") -> RWKVModel:
    """Check the values, detect the version and build the model, checking every key and shape."""
    check_values(tensors, source)
    return _build(tensors, dtype, source)


def load_checkpoint(path: str | Path, dtype: torch.dtype = torch.float32) -> tuple[RWKVModel, str]:
    """Load a ``.pth`` or ``.safetensors`` checkpoint of any supported version (computed in ``dtype``),
    and the sha256 of the exact bytes it was built from."""
    checkpoint = open_checkpoint(path)  # values checked
    return _build(checkpoint.tensors, dtype, str(path)), checkpoint.sha256


def load_model(path: str | Path, dtype: torch.dtype = torch.float32) -> RWKVModel:
    """Load a ``.pth`` or ``.safetensors`` checkpoint of any supported version (computed in ``dtype``)."""
    return load_checkpoint(path, dtype)[0]


def load_any_model(path: str | Path, dtype: torch.dtype = torch.float32) -> RWKVModel | VisionRWKV:
    """A language model (v4-v7) or a Vision-RWKV model, whichever the checkpoint's keys name."""
    checkpoint = open_checkpoint(path)
    if is_vision_checkpoint(checkpoint.tensors):
        return VisionRWKV.from_state_dict(checkpoint.tensors, dtype, str(path), checkpoint.meta)
    return _build(checkpoint.tensors, dtype, str(path))


def _build(tensors: StateDict, dtype: torch.dtype, source: str) -> RWKVModel:
    return ARCHITECTURES[detect_version(tensors)].model_class.from_state_dict(tensors, dtype=dtype, source=source)
