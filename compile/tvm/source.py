"""The ONNX export a TVM bundle compiles: the export given, or a fresh export of the checkpoint given."""

from __future__ import annotations

import gc
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from ...artifact import Artifact, open_artifact
from ...errors import ArtifactError
from ...targets import GpuTarget, TvmTarget
from ...targets.compute import resolve_compute
from ...weights import compute_precision, weight_format
from .options import TvmOptions


@dataclass(frozen=True)
class OnnxExport:
    """The opened ONNX export, and whether its reference rollout is already the int8-compute one (a
    fresh export for an int8-compute bundle records it from the model in memory)."""

    artifact: Artifact
    int8_reference: bool


def open_export(source: Path, scratch: Path, target: TvmTarget | GpuTarget, options: TvmOptions, chunk: int,
                log: Callable[[str], None]) -> OnnxExport:
    """The ONNX export of ``source``: itself, its parent (model.onnx), or a fresh export into ``scratch``
    (int8/int4 when those weights are asked for, else fp32; with a prefill graph of ``chunk`` tokens,
    none if 0)."""
    from ...model.huggingface import is_model_folder

    if source.is_dir() and not is_model_folder(source):
        return OnnxExport(open_artifact(source, kind="onnx"), False)
    if source.suffix == ".onnx":
        return OnnxExport(open_artifact(source.parent, kind="onnx"), False)
    if not source.exists():
        raise ArtifactError(f"{source}: no such file or directory")
    from ...export import OnnxOptions, export_onnx

    weights = options.weights if options.weights is not None and weight_format(options.weights).quantized else "fp32"
    compute = resolve_compute(target, options.compute, weights)
    export = OnnxOptions(weights, prefill_chunk=chunk, group_size=options.group_size, reference_compute=compute)
    log(f"exporting {source} to ONNX first ({export.weights} weights)")
    export_onnx(source, scratch, export, log=lambda line: log(f"  {line}"))
    _release_memory()
    return OnnxExport(open_artifact(scratch, kind="onnx"), compute_precision(compute).integer)


def _release_memory() -> None:
    """Hand the export's freed memory back before the build: its model and programs hold reference cycles,
    and glibc keeps freed heap pages (weights under its 32 MB mmap threshold) unless asked to trim."""
    import ctypes
    import ctypes.util

    gc.collect()
    libc = ctypes.util.find_library("c")
    trim = getattr(ctypes.CDLL(libc), "malloc_trim", None) if libc else None
    if trim is not None:
        trim(0)
