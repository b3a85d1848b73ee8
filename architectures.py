"""The architectures an artifact may hold: one registry, each entry its family, how its checkpoint
keys are recognised, and the model/ module that defines it.

Free of torch, so that a runtime-only install can tell what an artifact or a checkpoint's key names
hold. The family decides which builder each stage runs: a ``language`` model takes tokens through
the step contract (state, tokenizer, prefill); an ``image`` model is one whole-image graph.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Collection
from dataclasses import dataclass

from .errors import UnknownArchitectureError

LANGUAGE, IMAGE = "language", "image"
FAMILIES = (LANGUAGE, IMAGE)


@dataclass(frozen=True)
class Architecture:
    name: str  # the manifest's ``architecture``
    label: str
    family: str  # one of FAMILIES
    detect: Callable[[Collection[str]], bool]  # the checkpoint's key names (wrapper prefix removed) -> is it this one
    module: str  # the model/ module that defines it
    cls: str  # its model class there: ``from_checkpoint`` builds it, ``config_class`` reads its config

    def model_class(self) -> type:
        """The PyTorch class (imports torch)."""
        return getattr(importlib.import_module(f"{__package__}.model.{self.module}"), self.cls)


def _attention(keys: Collection[str]) -> set[str]:
    """Block 0's attention tensors, by the name after ``blocks.0.att.``; none where the keys are an image
    model's or lack an RWKV language model's embedding and first block."""
    if _image(keys) or "emb.weight" not in keys or "blocks.0.ffn.key.weight" not in keys:
        return set()
    return {k.split(".", 3)[3] for k in keys if k.startswith("blocks.0.att.")}


def _v4(keys: Collection[str]) -> bool:
    att = _attention(keys)
    return {"time_first", "time_decay", "time_mix_k"} <= att and not {"x_r", "time_maa_x", "ln_x.weight"} & att


def _v5(keys: Collection[str]) -> bool:
    att = _attention(keys)
    return {"ln_x.weight", "time_faaaa", "gate.weight"} <= att and not {"x_r", "time_maa_x"} & att


def _v6(keys: Collection[str]) -> bool:
    att = _attention(keys)
    return "time_maa_x" in att and "x_r" not in att


def _v7(keys: Collection[str]) -> bool:
    """x_r is v7's alone; its config reader then names any other missing key."""
    return "x_r" in _attention(keys)


def _image(keys: Collection[str]) -> bool:
    """A patch embedding, or mmcls ``backbone.`` keys: Vision-RWKV's (or another image model's, which its
    config reader then names)."""
    return any(k.removeprefix("module.").startswith(("backbone.", "patch_embed.")) for k in keys)


ARCHITECTURES: dict[str, Architecture] = {a.name: a for a in (
    Architecture("v4", "RWKV-4", LANGUAGE, _v4, "v4", "RWKV4"),
    Architecture("v5", 'RWKV-5 "Eagle" (x052)', LANGUAGE, _v5, "v5", "RWKV5"),
    Architecture("v6", 'RWKV-6 "Finch" (x060)', LANGUAGE, _v6, "v6", "RWKV6"),
    Architecture("v7", 'RWKV-7 "Goose" (x070)', LANGUAGE, _v7, "v7", "RWKV7"),
    Architecture("vrwkv", "Vision-RWKV", IMAGE, _image, "vision", "VisionRWKV"),
)}


def of_family(family: str) -> list[str]:
    """The names of the architectures of ``family``."""
    return [a.name for a in ARCHITECTURES.values() if a.family == family]


def detect(keys: Collection[str]) -> Architecture:
    """The architecture a checkpoint's key names identify (the detectors exclude each other: an image
    model's keys are never a language model's); UnknownArchitectureError, saying what was found, where
    none does."""
    for architecture in ARCHITECTURES.values():
        if architecture.detect(keys):
            return architecture
    if "emb.weight" not in keys or "blocks.0.ffn.key.weight" not in keys:
        names = sorted(keys)
        raise UnknownArchitectureError(
            "not an RWKV checkpoint: expected keys 'emb.weight' and 'blocks.0.ffn.key.weight' "
            f"(found {', '.join(names[:5])}{', ...' if len(names) > 5 else ''})")
    att = _attention(keys)
    if "ln_x.weight" in att:
        raise UnknownArchitectureError(
            "an RWKV-5 preview checkpoint (v5.0/v5.1, no 'time_faaaa'); only RWKV-5.2 (x052) is supported")
    raise UnknownArchitectureError(
        f"unknown RWKV architecture: block 0 attention has {', '.join(sorted(att)) or 'no tensors'}; "
        f"supported: {', '.join(ARCHITECTURES[name].label for name in of_family(LANGUAGE))}")
