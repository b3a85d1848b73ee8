"""Linking a built executable into the bundle's library: with the target's linker (or
cross-compiler), or as objects in a tar where none can link here (no NDK, Apple hosts)."""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable
from pathlib import Path

from ...errors import ToolError
from ...targets import GpuTarget, TvmTarget
from ...targets.tvm import host_triple


def find_linker(target: TvmTarget | GpuTarget) -> Callable | None:
    """The function that links model.so; None where only objects can be written (no NDK, Apple hosts)."""
    from tvm.support import cc

    if target.triple == "aarch64-linux-android":
        from tvm.support import ndk

        return ndk.create_shared if os.environ.get("TVM_NDK_CC") else None
    if target.cross_compiler is None:
        return cc.create_shared if target.triple == host_triple() else None
    if shutil.which(target.cross_compiler) is None:
        raise ToolError(f"{target.cross_compiler} not found: install the Debian package {target.cross_package} "
                        f"(or run scripts/install-arm-tools.sh)")
    return cc.cross_compiler(target.cross_compiler)


def export_library(executable, path: Path, linker: Callable | None) -> None:
    """Write ``executable`` to ``path``: linked by ``linker``, or where it is None objects in a tar."""
    if linker is None:
        from tvm.support import tar

        executable.export_library(str(path), fcompile=tar.tar)
    else:
        executable.export_library(str(path), fcompile=linker)
