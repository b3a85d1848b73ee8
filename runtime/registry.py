"""Which backend runs what: one table from a manifest kind (or a checkpoint) to the backend class.

Adding a backend is one entry here plus its own module in runtime/ implementing ``Backend``.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from pathlib import Path

from ..artifact import Artifact, open_artifact, read_manifest
from ..errors import ArtifactError, OptionError
from .backend import Backend


@dataclass(frozen=True)
class BackendEntry:
    name: str  # the --backend spelling
    kind: str | None  # the manifest kind it runs; None: a checkpoint
    module: str  # the runtime module that defines it
    cls: str
    source: str  # what it runs, for the error when given something else
    options: tuple[str, ...] = ()  # keyword options of its constructor beyond the artifact


FLAGS = {"remote": "--rpc / --tracker", "executor": "--executor"}  # how the CLI spells the options

BACKENDS: dict[str, BackendEntry] = {e.name: e for e in (
    BackendEntry("torch", None, "torch_backend", "TorchBackend", "a checkpoint (or an artifact, for its checkpoint)",
                 ("threads",)),
    BackendEntry("onnxruntime", "onnx", "ort_backend", "OrtBackend", "an artifact directory made by `rwkv-edge export onnx`",
                 ("threads",)),
    BackendEntry("coreml", "coreml", "coreml_backend", "CoreMLBackend",
                 "an artifact made by `rwkv-edge compile --target ios-coreml|macos-coreml`", ("executor",)),
    BackendEntry("tvm", "tvm", "tvm_backend", "TvmBackend",
                 "a bundle made by `rwkv-edge compile --target x86_64-host` (or another target this machine runs)",
                 ("remote",)),
)}


def backend_class(name: str) -> type:
    """The class of backend ``name``, imported on first use (onnxruntime, TVM and coremltools are heavy)."""
    entry = BACKENDS.get(name)
    if entry is None:
        raise OptionError(f"unknown backend {name!r}; choose one of {', '.join(BACKENDS)}")
    return getattr(importlib.import_module(f"{__package__}.{entry.module}"), entry.cls)


def backend_of(artifact: Artifact, **options) -> Backend:
    """The backend that runs ``artifact``, chosen by its manifest kind, with the ``options`` that are
    set (not None); OptionError for one its backend does not take."""
    kind = artifact.manifest.kind
    if artifact.manifest.is_vision:
        raise ArtifactError(f"{artifact.directory} holds an image model ({artifact.manifest.architecture}), which has "
                            "no step contract: run it with runtime.vision.open_vision (`rwkv-edge verify` checks it)")
    entry = next(e for e in BACKENDS.values() if e.kind == kind)
    given = {name: value for name, value in options.items() if value is not None}
    for name in given.keys() - set(entry.options):
        takers = [e.kind for e in BACKENDS.values() if e.kind and name in e.options]
        raise OptionError(f"{artifact.directory} holds a {kind} artifact; {FLAGS.get(name, name)} applies to "
                          f"{' and '.join(takers)} artifacts")
    return backend_class(entry.name)(artifact, **given)


def open_backend(source: str | Path | None, backend: str = "torch", threads: int | None = None) -> Backend:
    """``torch`` runs a checkpoint (an artifact directory stands for its source checkpoint; no
    source: the bundled demo model); every other backend runs an artifact of its kind. ``threads``:
    torch's and onnxruntime's intra-op threads (None: each backend's choice); OptionError for another
    backend."""
    entry = BACKENDS.get(backend)
    if entry is None:
        raise OptionError(f"unknown backend {backend!r}; choose one of {', '.join(BACKENDS)}")
    options = {"threads": threads} if threads is not None else {}
    if options and "threads" not in entry.options:
        raise OptionError(f"--threads applies to {' and '.join(e.name for e in BACKENDS.values() if 'threads' in e.options)}, "
                          f"not {backend}")
    source = Path(source) if source is not None else None
    if entry.kind is None:
        from ..model import DEMO_CHECKPOINT, load_model

        if source is not None and source.is_dir():
            source = Path(read_manifest(source).source["checkpoint"])
        return backend_class(backend)(load_model(source or DEMO_CHECKPOINT), **options)
    directory = source.parent if source is not None and source.suffix == ".mlpackage" else source
    if directory is None or not directory.is_dir():
        raise OptionError(f"--backend {backend} needs {entry.source}")
    return backend_class(backend)(open_artifact(directory, kind=entry.kind), **options)
