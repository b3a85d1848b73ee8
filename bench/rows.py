"""The bench's row of each backend it runs, named by the backend's runtime.registry entry (``bench``).

A row knows the weight formats it holds, prepares what its backend runs (the checkpoint itself, or
an artifact made with the library's own ``export_onnx`` and ``compile_tvm``, cached by checkpoint
sha256 and settings), opens its backend in the measuring process (bench/workers.py) and says what
ran there. The preparation runs in the bench's process: the runtime never imports the exporter or
the compiler.
"""

from __future__ import annotations

import importlib.util
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..artifact import Manifest, open_artifact
from ..errors import ArtifactError, OptionError, RwkvEdgeError
from ..platforms import gpu_unavailable, host_arch
from ..runtime.registry import backend_entry, open_backend, resolve
from ..weights import weight_format

if TYPE_CHECKING:
    from .options import BenchOptions, DecodeSpec


class Unavailable(Exception):
    """A backend this build or this machine cannot run (not an error of the user's)."""


@dataclass
class Preparation:
    """What preparing the rows of one run shares: the checkpoint, the options, the work folder where
    artifacts are cached, the GPU's arch (None: the CPU), the log, the record of what was made or
    reused, and what each row prepared so far runs."""

    checkpoint: Path
    sha: str
    options: BenchOptions
    work: Path
    log: Callable[[str], None]
    arch: str | None = None
    record: dict[str, Any] = field(default_factory=dict)
    sources: dict[str, Path] = field(default_factory=dict)  # backend -> the checkpoint or artifact it runs


def bench_row(backend: str) -> BenchRow:
    """The row of ``backend`` (a runtime.registry name whose entry has one)."""
    return resolve(backend_entry(backend).bench)()


class BenchRow:
    """How the bench runs one backend."""

    name: str  # the backend's registry name: the row's and its log lines' label
    module: str  # the library whose version the row reports
    weights: tuple[str, ...] = ()  # the weight formats besides fp32 the row holds
    every_weight = False  # a format applies to every weight (a dtype); else to the GEMV weights alone
    prefill: str | None = None  # how it prefills, where not through its artifact's prefill graph
    program = False  # True: measured by running a program of its own (``runner``), not a backend in the worker

    def weights_of(self, options: BenchOptions) -> str:
        """The format this row keeps its weights in: the run's where the row holds it, else fp32."""
        return options.weights if options.weights in self.weights else "fp32"

    def given(self, source: Path, manifest: Manifest, options: BenchOptions) -> BenchOptions:
        """``options`` for an artifact the user gave (``source``): what it fixes of them."""
        return options

    def source(self, prep: Preparation) -> Path:
        """What the row runs: the checkpoint, or the artifact prepared from it (Unavailable, ArtifactError)."""
        return prep.checkpoint

    def open(self, spec: DecodeSpec):
        """The backend, in the measuring process, with ``spec.threads`` threads."""
        return open_backend(spec.source, self.name)

    def details(self, spec: DecodeSpec, backend) -> dict[str, Any]:
        """What ran, beyond the version and the prefill chunk (bench/workers.py)."""
        return {}


class TorchRow(BenchRow):
    """PyTorch on the checkpoint: every timed call on the intra-op threads; on a GPU, in fp16 or fp32."""

    name = module = "torch"
    weights = ("fp16",)
    every_weight = True
    prefill = "the whole prompt per forward call"

    def open(self, spec: DecodeSpec):
        import torch

        from ..model import load_model
        from ..runtime.torch_backend import TorchBackend

        torch.set_num_threads(spec.threads)
        dtype = {"fp32": torch.float32, "fp16": torch.float16}[spec.weights]
        return TorchBackend(load_model(spec.source, dtype=dtype), device=spec.device, threads=spec.threads)

    def details(self, spec: DecodeSpec, backend) -> dict[str, Any]:
        import torch

        details: dict[str, Any] = {"intra_op_threads": torch.get_num_threads()}
        if spec.device != "cpu":
            details["dtype"] = str(next(backend.model.parameters()).dtype).removeprefix("torch.")
            details["gpu"] = torch.cuda.get_device_name(0)
            details["gpu_peak_allocated_mib"] = torch.cuda.max_memory_allocated() / (1 << 20)
        return details


class ArtifactRow(BenchRow):
    """A row whose backend runs an artifact the bench makes under its work folder, or reuses from there."""

    kind: str  # the manifest kind it makes

    def prefill_chunk(self, options: BenchOptions) -> int:
        """Tokens per prefill call of the artifact (0: none)."""
        raise NotImplementedError

    def folder(self, options: BenchOptions) -> str:
        """The cache folder of the artifact, below the checkpoint's."""
        raise NotImplementedError

    def what(self, options: BenchOptions) -> str:
        """What makes the artifact, in the log."""
        raise NotImplementedError

    def made_as_asked(self, manifest: Manifest, options: BenchOptions) -> bool:
        """Whether a cached artifact's manifest is the one ``options`` ask for (its prefill graph aside)."""
        return manifest.kind == self.kind and manifest.weights == self.weights_of(options)

    def build(self, source: Path, out: Path, options: BenchOptions, log: Callable[[str], None]) -> None:
        """Make the artifact from ``source`` in ``out``."""
        raise NotImplementedError

    def check_tools(self, options: BenchOptions) -> None:
        """Unavailable where what the build needs is missing."""

    def prepare(self, prep: Preparation, source: Path | None = None) -> Path:
        """The artifact, made from ``source`` (default: the checkpoint) under the work folder unless a
        matching one is there."""
        options = prep.options
        out = prep.work / f"{prep.checkpoint.stem}-{prep.sha[:12]}" / self.folder(options)
        what = self.what(options)
        if not options.rebuild and self.cached(out, prep.sha, options):
            prep.log(f"{self.name}: reusing {out} (same checkpoint sha256, files match its manifest; --rebuild to redo)")
            prep.record[self.name] = {"artifact": str(out), "reused": True}
            return out
        self.check_tools(options)
        prep.log(f"{self.name}: {what} -> {out}")
        start = time.perf_counter()
        try:
            self.build(source or prep.checkpoint, out, options, lambda line: prep.log(f"    {line}"))
        except RwkvEdgeError as e:
            raise ArtifactError(f"{what} failed: {e}") from None
        prep.record[self.name] = {"artifact": str(out), "reused": False, "seconds": time.perf_counter() - start}
        return out

    def cached(self, out: Path, sha: str, options: BenchOptions) -> bool:
        """Whether ``out`` holds an intact artifact of the checkpoint with this sha256, made as asked
        (the same prefill graph included)."""
        try:
            manifest = open_artifact(out).manifest
            made_as_asked = (self.made_as_asked(manifest, options)
                             and getattr(manifest.graphs.get("prefill"), "chunk", 0) == self.prefill_chunk(options))
            if manifest.source.get("sha256") != sha or not made_as_asked:
                return False
        except (ArtifactError, KeyError, AttributeError):
            return False
        return True


class OrtRow(ArtifactRow):
    """onnxruntime on an ONNX export with the run's prefill chunk; on a GPU, its CUDA provider."""

    name, module, kind = "onnxruntime", "onnxruntime", "onnx"
    weights = ("int8", "int4")

    def source(self, prep: Preparation) -> Path:
        if prep.arch and (why := ort_cuda_unavailable()):
            raise Unavailable(why)
        return self.prepare(prep)

    def prefill_chunk(self, options: BenchOptions) -> int:
        return options.onnx_prefill_chunk

    def folder(self, options: BenchOptions) -> str:
        return f"onnx-{self.weights_of(options)}-prefill{self.prefill_chunk(options)}"

    def what(self, options: BenchOptions) -> str:
        return f"export onnx (prefill chunk {self.prefill_chunk(options)})"

    def build(self, source: Path, out: Path, options: BenchOptions, log: Callable[[str], None]) -> None:
        from ..export import OnnxOptions, export_onnx

        export_onnx(source, out, OnnxOptions(self.weights_of(options), prefill_chunk=self.prefill_chunk(options)), log)

    def open(self, spec: DecodeSpec):
        from ..runtime.ort_backend import OrtBackend

        backend = OrtBackend(spec.source, threads=spec.threads)
        if spec.device == "cuda":
            _use_cuda_provider(backend)
        return backend

    def details(self, spec: DecodeSpec, backend) -> dict[str, Any]:
        return {"provider": backend.step_session.get_providers()[0] if spec.device != "cpu" else "CPUExecutionProvider"}


class DecodeExport(OrtRow):
    """The decode step's ONNX export alone, fp32: what the GPU bundles of every --weights compile from
    where the onnxruntime row made none."""

    name = "onnx"
    weights = ()

    def prefill_chunk(self, options: BenchOptions) -> int:
        return 0


class TvmRow(ArtifactRow):
    """A TVM bundle for the run's target (``options.tvm_target``), compiled from the ONNX export where the
    run has one, else from the checkpoint."""

    name, module, kind = "tvm", "tvm", "tvm"
    weights = ("fp16", "int8", "int4")

    def given(self, source: Path, manifest: Manifest, options: BenchOptions) -> BenchOptions:
        """The bundle's own target, on the same device with the same weights; OptionError otherwise."""
        name, device, weights = manifest.target.name, manifest.target.device, manifest.weights
        if (device == "cpu") != (options.device == "cpu"):
            flag = "leave out --device cuda" if device == "cpu" else f"add --device {device}"
            raise OptionError(f"{source}: a TVM bundle for {name} ({device}); bench runs it on device {options.device}: {flag}")
        if weights != options.weights:
            raise OptionError(f"{source}: a bundle with {weights} weights; pass --weights {weights}")
        if options.tvm_target not in (None, name):
            raise OptionError(f"{source}: a bundle for {name}, not {options.tvm_target} (--target)")
        return replace(options, tvm_target=name)

    def source(self, prep: Preparation) -> Path:
        onnx = prep.sources.get(OrtRow.name)
        if prep.arch and onnx is None:  # one decode-step export for the builds of every --weights
            if why := tvm_unavailable(prep.options.tvm_target):
                raise Unavailable(why)
            onnx = DecodeExport().prepare(prep)
        return self.prepare(prep, onnx)

    def prepare(self, prep: Preparation, source: Path | None = None) -> Path:
        if why := tvm_unavailable(prep.options.tvm_target):
            raise Unavailable(why)
        return super().prepare(prep, source)

    def prefill_chunk(self, options: BenchOptions) -> int:
        """CPU bundles: the export's prefill graph; GPU bundles hold none."""
        return 0 if gpu_target(options.tvm_target) else options.onnx_prefill_chunk

    def folder(self, options: BenchOptions) -> str:
        return tvm_bundle_name(options.tvm_target, self.weights_of(options))

    def what(self, options: BenchOptions) -> str:
        return f"compile {options.tvm_target}, {self.weights_of(options)} weights"

    def made_as_asked(self, manifest: Manifest, options: BenchOptions) -> bool:
        return (super().made_as_asked(manifest, options) and manifest.target.name == options.tvm_target
                and "interface" in manifest.graphs)  # older bundles' libraries lack interface()

    def check_tools(self, options: BenchOptions) -> None:
        gpu = gpu_target(options.tvm_target)
        if gpu and gpu.device == "cuda" and shutil.which("nvcc") is None:
            raise Unavailable("nvcc not found: compiling for a CUDA target needs the CUDA toolkit's nvcc on PATH")

    def build(self, source: Path, out: Path, options: BenchOptions, log: Callable[[str], None]) -> None:
        from ..compile.tvm import TvmOptions, compile_tvm

        compile_tvm(source, out, TvmOptions(options.tvm_target, weights=self.weights_of(options),
                                            prefill_chunk=self.prefill_chunk(options)), log)


class NativeRow(TvmRow):
    """The embeddable C runtime (runtime/cpp) on the TVM row's bundle, measured in a process of its own
    with no Python in it: ``rwkv-edge-runner`` (a thin client of librwkv_edge) steps and prefills, its
    peak RSS is that program's alone (bench/workers.py ``program_decode``)."""

    name = "native"
    module = "librwkv_edge"
    weights = ("int8", "int4")  # TVM's CPU formats
    program = True  # measured by running the runner, not by opening a backend in the worker

    def source(self, prep: Preparation) -> Path:
        if prep.arch:
            raise Unavailable("the native runtime runs CPU bundles; bench it without --device cuda")
        from ..runtime.native_runner import runner_unavailable

        if why := runner_unavailable(host_arch()):
            raise Unavailable(why)
        given = prep.sources.get(TvmRow.name)
        return given if given is not None else self.prepare(prep)

    def runner(self, log: Callable[[str], None] = lambda _: None) -> Path:
        """The host runner, built (or found in its cache) now."""
        from ..runtime.native_runner import build_runner

        return build_runner(host_arch(), log=log)


def tvm_bundle_name(target: str, weights: str) -> str:
    """The cache directory of a bundle: the target, and its weights unless fp32 on a CPU."""
    return f"tvm-{target}-{weights}" if gpu_target(target) or not weight_format(weights).full_precision else f"tvm-{target}"


def gpu_target(name: str):
    """The GPU target ``name``, or None for a CPU one."""
    from ..targets.gpu import GPU_TARGETS

    return GPU_TARGETS.get(name)


def tvm_unavailable(target: str) -> str | None:
    """Why the TVM row cannot run in this build or on this machine, or None."""
    if importlib.util.find_spec("rwkv_edge.runtime.tvm_backend") is None:
        return "this build has no TVM backend (rwkv_edge.runtime.tvm_backend)"
    if importlib.util.find_spec("tvm") is None:
        return "apache-tvm is not installed"
    from ..targets import TARGETS

    if target not in TARGETS:
        return f"no target {target!r} in this build"
    gpu = gpu_target(target)
    if gpu is not None and not gpu.runs_here():
        return f"{target}: {gpu_unavailable(gpu.device, gpu.arch, gpu.triple)}"
    return None


def ort_cuda_unavailable() -> str | None:
    """Why onnxruntime cannot run on the GPU here, or None."""
    if importlib.util.find_spec("onnxruntime") is None:
        return "onnxruntime is not installed"
    import onnxruntime

    if "CUDAExecutionProvider" in onnxruntime.get_available_providers():
        return None
    return (f"onnxruntime {onnxruntime.__version__} here has no CUDA provider (that is the onnxruntime-gpu "
            "package); it runs on the CPU only")


def _use_cuda_provider(backend) -> None:
    """Rebuild an OrtBackend's sessions on onnxruntime's CUDA provider (inputs and outputs still
    cross as numpy arrays, so every call copies the state to the GPU and back)."""
    import onnxruntime as ort

    options = backend.step_session.get_session_options()
    for attribute, role in (("step_session", "step"), ("prefill_session", "prefill")):
        if getattr(backend, attribute) is not None:
            path = backend.artifact.graph(role)
            setattr(backend, attribute, ort.InferenceSession(str(path), options, providers=["CUDAExecutionProvider"]))
