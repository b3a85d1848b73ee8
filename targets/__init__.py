"""Named deployment targets: frozen dataclasses in one registry keyed by a readable name."""

from __future__ import annotations

from ..errors import UnknownTargetError
from .coreml import COREML_TARGETS, CoreMLTarget, coreml_name
from .gpu import GPU_TARGETS, GpuTarget
from .tvm import TVM_TARGETS, TvmTarget

Target = CoreMLTarget | TvmTarget | GpuTarget
TARGETS: dict[str, Target] = {**TVM_TARGETS, **GPU_TARGETS, **COREML_TARGETS}


def get_target(name: str) -> Target:
    """The target called ``name``; UnknownTargetError listing the valid names otherwise."""
    if name not in TARGETS:
        raise UnknownTargetError(f"unknown target {name!r}; valid targets: {', '.join(sorted(TARGETS))}")
    return TARGETS[name]


__all__ = ["TARGETS", "CoreMLTarget", "GpuTarget", "Target", "TvmTarget", "coreml_name", "get_target"]
