"""Open a backend by name over a checkpoint file or an artifact directory."""

from __future__ import annotations

from pathlib import Path

from ..errors import OptionError
from ..artifact import read_manifest
from ..model import DEMO_CHECKPOINT, load_model
from .backend import Backend, TorchBackend

BACKENDS = ("torch", "onnxruntime", "coreml", "tvm")


def open_backend(source: str | Path | None, backend: str = "torch") -> Backend:
    """``torch`` runs a checkpoint (an artifact directory stands for its source checkpoint);
    ``onnxruntime`` runs an artifact directory made by ``export onnx``, ``coreml`` one made by
    ``compile --target *-coreml``, ``tvm`` a bundle made by ``compile --target <cpu>``. No source: the demo model."""
    source = Path(source) if source is not None else None
    if backend == "torch":
        if source is not None and source.is_dir():
            source = Path(read_manifest(source).source["checkpoint"])
        return TorchBackend(load_model(source or DEMO_CHECKPOINT))
    if backend == "onnxruntime":
        if source is None or not source.is_dir():
            raise OptionError("--backend onnxruntime needs an artifact directory made by `rwkv-edge export onnx`")
        from .ort_backend import OrtBackend

        return OrtBackend(source)
    if backend == "coreml":
        from .coreml_backend import CoreMLBackend, artifact_directory

        if source is None or not artifact_directory(source).is_dir():
            raise OptionError("--backend coreml needs an artifact made by `rwkv-edge compile --target ios-coreml|macos-coreml`")
        return CoreMLBackend(source)
    if backend == "tvm":
        if source is None or not source.is_dir():
            raise OptionError("--backend tvm needs a bundle made by `rwkv-edge compile --target x86_64-host` (or "
                              "another CPU target this machine runs)")
        from .tvm_backend import TvmBackend

        return TvmBackend(source)
    raise OptionError(f"unknown backend {backend!r}; choose one of {', '.join(BACKENDS)}")
