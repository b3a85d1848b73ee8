"""The backends: one entry each, holding everything one is.

An entry names the ``--backend`` spelling, the manifest kind it runs (``artifact.KINDS``: that kind's
build record and its checks; None for a checkpoint), its step runner (a ``Backend``), its image
runner (``runtime/vision.py`` runs image artifacts through it), the keyword options their
constructors take, and the hooks of the layers above: the bench's row (preparation, opening in the
worker, how the row is described) and the checks verify adds to its kind's report.
Several entries may run one kind: the first is that kind's own, its artifacts' default; a later one
runs them another way when named (``--backend native``: a TVM bundle through the C library).

Everything is referenced by name, ``"package.module:attribute"`` below ``rwkv_edge``, and imported on
first use (``resolve``): onnxruntime, TVM and coremltools are heavy, and the hooks of bench/ and
verify/ lie above runtime/, which never imports them. bench/, verify/ and cli/ loop over this table
and ask an entry; none of them names a backend. Adding a backend is one entry here plus its module
in runtime/ (its step and image runners) and, where it has them, its bench row and verify checks.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from typing import TYPE_CHECKING

from ..architectures import IMAGE, LANGUAGE
from ..bundled import source_checkpoint
from ..errors import ArtifactError, OptionError

if TYPE_CHECKING:  # numpy: imported where an artifact is opened, not by the CLI's parser
    from ..artifact import Artifact
    from .backend import Backend


@dataclass(frozen=True)
class BackendEntry:
    name: str  # the --backend spelling
    kind: str | None  # the manifest kind it runs; None: a checkpoint
    label: str  # what it runs, in a word ("TVM"): the CLI's flag help, the image runner's errors
    runner: str  # the step runner: a ``Backend`` class taking (artifact or model, **options)
    source: str  # what it runs, for the error when given something else, and `--backend` help
    options: tuple[str, ...] = ()  # keyword options of its runners' constructors beyond the artifact
    image: str | None = None  # the image runner: (artifact, **options) -> ``run(images)``, ``runs_on``, ``close()``
    image_refusal: str = "{option} applies to {takers} artifacts, this is {kind}"  # an option its image runner lacks
    bench: str | None = None  # its bench row (bench/rows.py); None: the bench does not run it
    bench_default: bool = True  # whether the bench runs its row when no --backends are named
    verify: str | None = None  # what verify adds for its kind (verify/checks.py); None: the rollout alone

    def step_runner(self) -> type:
        return resolve(self.runner)


FLAGS = {"remote": "--rpc / --tracker", "executor": "--executor"}  # how the CLI spells the options

BACKENDS: dict[str, BackendEntry] = {e.name: e for e in (
    BackendEntry("torch", None, "PyTorch", "runtime.torch_backend:TorchBackend",
                 "a checkpoint (or an artifact, for its checkpoint)", ("threads",), bench="bench.rows:TorchRow"),
    BackendEntry("onnxruntime", "onnx", "ONNX", "runtime.ort_backend:OrtBackend",
                 "an artifact directory made by `rwkv-edge export onnx`", ("threads",),
                 image="runtime.ort_backend:OrtImage", bench="bench.rows:OrtRow"),
    BackendEntry("coreml", "coreml", "Core ML", "runtime.coreml_backend:CoreMLBackend",
                 "an artifact made by `rwkv-edge compile --target ios-coreml|macos-coreml`", ("executor",),
                 image="runtime.coreml_backend:CoreMLImage",
                 image_refusal="a Core ML package runs here or on a Mac, not with {option}",
                 verify="verify.checks:CoreMLChecks"),
    BackendEntry("tvm", "tvm", "TVM", "runtime.tvm_backend:TvmBackend",
                 "a bundle made by `rwkv-edge compile --target x86_64-host` (or another target this machine runs)",
                 ("remote",), image="runtime.tvm_backend:TvmImage", bench="bench.rows:TvmRow",
                 verify="verify.checks:TvmChecks"),
    # after tvm: the same kind's bundles, run by the C library (librwkv_edge.so) instead of TVM's Python
    BackendEntry("native", "tvm", "native", "runtime.native:NativeBackend",
                 "a TVM bundle for this machine's CPU, run by the C runtime (librwkv_edge.so)", ("threads",),
                 bench="bench.rows:NativeRow", bench_default=False),
)}
CHECKPOINT_BACKEND = next(e.name for e in BACKENDS.values() if e.kind is None)  # what runs a checkpoint: the default
# An artifact of each family opened as a step backend: None, or why it cannot be
STEP_REFUSALS = {LANGUAGE: None, IMAGE: "holds an image model ({architecture}), which has no step contract: run it "
                                        "with runtime.vision.open_vision (`rwkv-edge verify` checks it)"}


def resolve(reference: str) -> Any:
    """``"package.module:attribute"`` (below rwkv_edge) -> the attribute, its module imported now."""
    module, _, attribute = reference.partition(":")
    return getattr(importlib.import_module(f"..{module}", __package__), attribute)


def backend_entry(name: str) -> BackendEntry:
    """The entry of ``--backend name``; OptionError naming the choices for another."""
    entry = BACKENDS.get(name)
    if entry is None:
        raise OptionError(f"unknown backend {name!r}; choose one of {', '.join(BACKENDS)}")
    return entry


def entry_of_kind(kind: str) -> BackendEntry:
    """The entry that runs artifacts of manifest kind ``kind`` (one of artifact.KINDS) by default: the first
    of that kind (a later one runs the same artifacts another way, when named: ``--backend native``)."""
    return next(e for e in BACKENDS.values() if e.kind == kind)


def in_words(names: list[str]) -> str:
    """"a", "a and b", "a, b and c": names in a sentence, each once."""
    names = list(dict.fromkeys(names))
    return " and ".join(filter(None, [", ".join(names[:-1]), names[-1]]))


def takers(option: str) -> list[BackendEntry]:
    """The entries whose runners take keyword ``option``."""
    return [e for e in BACKENDS.values() if option in e.options]


def backend_of(artifact: Artifact, **options) -> Backend:
    """The backend that runs ``artifact``, chosen by its manifest kind, with the ``options`` that are
    set (not None); OptionError for one its backend does not take."""
    kind = artifact.manifest.kind
    refusal = STEP_REFUSALS[artifact.manifest.family]
    if refusal is not None:
        raise ArtifactError(f"{artifact.directory} {refusal.format(architecture=artifact.manifest.architecture)}")
    entry = entry_of_kind(kind)
    given = {name: value for name, value in options.items() if value is not None}
    for name in given.keys() - set(entry.options):
        kinds = [e.kind for e in takers(name) if e.kind]
        raise OptionError(f"{artifact.directory} holds a {kind} artifact; {FLAGS.get(name, name)} applies to "
                          f"{in_words(kinds)} artifacts")
    return entry.step_runner()(artifact, **given)


def open_backend(source: str | Path | None, backend: str | None = None, threads: int | None = None) -> Backend:
    """``torch`` runs a checkpoint (an artifact directory stands for its source checkpoint; no
    source: the bundled demo model); every other backend runs an artifact of its kind. ``backend``
    None: an artifact's own (its manifest's kind), torch for a checkpoint. ``threads``: torch's and
    onnxruntime's intra-op threads (None: each backend's choice); OptionError for another backend."""
    source = Path(source) if source is not None else None
    entry = backend_entry(backend) if backend is not None else default_entry(source)
    options = {"threads": threads} if threads is not None else {}
    if options and "threads" not in entry.options:
        raise OptionError(f"--threads applies to {in_words([e.name for e in takers('threads')])}, not {entry.name}")
    if entry.kind is None:
        from ..model import DEMO_CHECKPOINT, load_model
        from ..model.huggingface import is_model_folder

        if source is not None and source.is_dir() and not is_model_folder(source):
            from ..artifact import read_manifest

            source = source_checkpoint(read_manifest(source).source)
        return entry.step_runner()(load_model(source or DEMO_CHECKPOINT), **options)
    directory = artifact_directory(source)
    if directory is None:
        raise OptionError(f"--backend {entry.name} needs {entry.source}")
    from ..artifact import open_artifact

    return entry.step_runner()(open_artifact(directory, kind=entry.kind), **options)


def artifact_directory(source: Path | None) -> Path | None:
    """The artifact directory ``source`` names (itself, or the one holding a ``.mlpackage``); None for a
    checkpoint file or no source."""
    directory = source.parent if source is not None and source.suffix == ".mlpackage" else source
    return directory if directory is not None and directory.is_dir() else None


def default_entry(source: Path | None) -> BackendEntry:
    """What runs ``source`` when no backend is named: an artifact's own backend (its manifest's kind:
    what it was built to run on), the checkpoint backend for a checkpoint (a file, or a model folder:
    a directory without a manifest)."""
    from ..artifact import MANIFEST, read_manifest

    directory = artifact_directory(source)
    if directory is None or not (directory / MANIFEST).exists():
        return BACKENDS[CHECKPOINT_BACKEND]
    return entry_of_kind(read_manifest(directory).kind)
