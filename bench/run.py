"""``rwkv-edge bench``: decode latency, prefill speed and memory of each backend, against the
memory-bandwidth bound of the machine it runs on (bench/bound.py).

On a GPU (``device="cuda"``) the same rows run there: PyTorch eagerly with the model and state on
the GPU, the TVM bundle compiled for the GPU's CUDA target (GEMV weights fp32 or fp16), onnxruntime
where its CUDA provider is installed. Each timed step ends with a synchronisation, the read
bandwidth is that of GPU memory (torch.amax timed with CUDA events), and each row's bound counts
the bytes its own weights take (2 per GEMV weight with fp16 weights).

The bench prepares what the backends need (an ONNX export, a TVM bundle) with the library's own
``export_onnx`` and ``compile_tvm``, cached by checkpoint sha256 and settings. Every measurement
runs in a process of its own (bench/workers.py), one after the other, with the same thread count,
so that the peak RSS is that backend's alone and no two measurements overlap; the read bandwidth
is measured the same way before and after them.

Numbers are medians over one run on one machine; nothing here emulates another machine.
"""

from __future__ import annotations

import os
import platform
import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from ..artifact import TvmBuild, open_artifact, sha256_file
from ..compile.tvm import PREFILL_CHUNK
from ..errors import ArtifactError, OptionError, RwkvEdgeError
from ..model import LANGUAGE_ARCHITECTURES, DEMO_CHECKPOINT, detect_version
from ..model.checkpoint import StateDict, n_layers, open_checkpoint
from ..platforms import cuda_device_arch, gpu_unavailable, host_triple, sm_number
from ..runtime.registry import BACKENDS as RUNNERS
from . import peer as peers, workers
from .bound import (BYTES_PER_VALUE, bandwidth_buffer_bytes, bound_ms, machine_info, row_weight_bytes,
                    weight_bytes_per_token)
from .report import BACKENDS, BackendRun, BenchReport
from .workers import BandwidthSpec, DecodeSpec, in_own_process

DEVICES = ("cpu", "cuda")
WEIGHTS = ("fp32", "fp16", "int8", "int4")  # the rows' weight format: fp16 on a GPU, int8/int4 on the CPU
QUANTIZED = ("int8", "int4")  # onnxruntime and TVM hold them (quantize.py, groups of 32); torch runs fp32
ARTIFACT_KINDS = {b: RUNNERS[b].kind for b in BACKENDS if RUNNERS[b].kind}  # bench row -> the manifest kind it runs
GPU_BANDWIDTH_MIB = 2048  # the GPU's read-bandwidth buffer: 40 x an H100's 50 MB L2


@dataclass(frozen=True)
class BenchOptions:
    backends: tuple[str, ...] = BACKENDS
    steps: int = 128  # timed decode steps
    warmup: int = 16  # untimed decode steps before them
    prefill: int = 64  # prompt tokens through backend.prefill; 0 skips the prefill measurement
    prefill_repeats: int = 3  # timed prefill calls (after one untimed), the median is reported
    threads: int | None = None  # per backend; None: every core this process may use
    bandwidth_mib: int | None = None  # read-bandwidth buffer; None: bound.bandwidth_buffer_bytes()
    bandwidth_repeats: int = 10  # timed reads before and again after the backends
    onnx_prefill_chunk: int = PREFILL_CHUNK  # the ONNX export's prefill graph, compiled into CPU TVM bundles too
    # (the bundles' own default, 32: docs/tvm.md "Prefill"); 0: single steps
    tvm_target: str | None = None  # None: x86_64-host, or on "cuda" the newest CUDA target the GPU runs
    rebuild: bool = False  # export / compile again even when the cached artifact matches
    seed: int = 0  # the token ids fed to every backend
    device: str = "cpu"  # where every row runs: "cpu" or "cuda" (an NVIDIA GPU)
    weights: str = "fp32"  # fp16: torch and TVM on a GPU (onnxruntime fp32); int8/int4: onnxruntime and TVM on
    # the CPU (torch fp32)

    def __post_init__(self) -> None:
        unknown = [b for b in self.backends if b not in BACKENDS]
        if unknown:
            raise OptionError(f"unknown backend {unknown[0]!r}; choose from {', '.join(BACKENDS)}")
        if not self.backends:
            raise OptionError(f"no backend to run; choose from {', '.join(BACKENDS)}")
        if len(set(self.backends)) != len(self.backends):
            raise OptionError(f"a backend is named twice in {','.join(self.backends)}")
        for name in ("steps", "prefill_repeats", "bandwidth_repeats"):
            if getattr(self, name) < 1:
                raise OptionError(f"{name.replace('_', ' ')} must be >= 1, got {getattr(self, name)}")
        for name in ("warmup", "prefill", "onnx_prefill_chunk"):
            if getattr(self, name) < 0:
                raise OptionError(f"{name.replace('_', ' ')} must be >= 0, got {getattr(self, name)}")
        if self.threads is not None and self.threads < 1:
            raise OptionError(f"threads must be >= 1, got {self.threads}")
        if self.bandwidth_mib is not None and self.bandwidth_mib < 1:
            raise OptionError(f"the bandwidth buffer must be >= 1 MiB, got {self.bandwidth_mib}")
        if self.device not in DEVICES:
            raise OptionError(f"unknown device {self.device!r}; choose from {', '.join(DEVICES)}")
        if self.weights not in WEIGHTS:
            raise OptionError(f"weights must be one of {', '.join(WEIGHTS)}, got {self.weights!r}")
        if self.device == "cpu" and self.weights == "fp16":
            raise OptionError("fp16 weights run on a GPU only: add --device cuda "
                              "(on the CPU the rows hold fp32, int8 or int4 weights)")
        if self.device != "cpu" and self.weights in QUANTIZED:
            raise OptionError(f"{self.weights} weights are benched on the CPU "
                              "(the bench runs GPU bundles with fp32 or fp16 weights)")
        if self.tvm_target is not None:
            check_target_device(self.tvm_target, self.device)

    def resolved_threads(self) -> int:
        return self.threads or len(os.sched_getaffinity(0))

    def weights_of(self, backend: str) -> str:
        """The format ``backend``'s row keeps its weights in: fp16 for torch and TVM only, int8/int4 for
        onnxruntime and TVM only, fp32 otherwise."""
        held = {"fp16": ("torch", "tvm"), "int8": ("onnxruntime", "tvm"), "int4": ("onnxruntime", "tvm")}
        return self.weights if backend in held.get(self.weights, RUNNERS) else "fp32"


def check_target_device(target: str, device: str) -> None:
    """OptionError if ``target`` is a TVM target of the other kind of device (CPU against GPU);
    an unknown name is left to the TVM row, which reports it unavailable."""
    from ..targets.gpu import GPU_TARGETS
    from ..targets.tvm import TVM_TARGETS

    gpu = GPU_TARGETS.get(target)
    if device == "cpu" and gpu is not None:
        raise OptionError(f"{target} is a GPU target ({gpu.device}); bench it with device cuda (--device cuda)")
    if device == "cuda" and target in TVM_TARGETS:
        raise OptionError(f"{target} is a CPU target; on device cuda the TVM row runs a CUDA target "
                          f"({', '.join(n for n, t in GPU_TARGETS.items() if t.device == 'cuda')})")
    if device == "cuda" and gpu is not None and gpu.device != "cuda":
        raise OptionError(f"{target} is a {gpu.device} target (an Apple GPU); device cuda runs CUDA targets")


def default_work_dir() -> Path:
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "rwkv-edge" / "bench"


def run_bench(source: str | Path | None, options: BenchOptions = BenchOptions(), work: str | Path | None = None,
              log: Callable[[str], None] = print, peer: peers.LlamaCpp | None = None) -> BenchReport:
    """Measure every backend of ``options`` on ``source`` (a checkpoint, an artifact directory, or
    None for the demo model). Exports and compiles go to ``work`` (default: ~/.cache/rwkv-edge/bench).
    ``peer``: llama.cpp's llama-bench on the same model in GGUF, before and after our backends (bench/peer.py).
    ``options.device`` "cuda" without a usable GPU: OptionError before anything runs."""
    start, started = time.perf_counter(), datetime.now(timezone.utc).isoformat(timespec="seconds")
    threads = options.resolved_threads()
    arch = cuda_arch() if options.device == "cuda" else None
    if peer is not None and arch:
        raise OptionError("the llama.cpp peer runs on the CPU: bench it without --device cuda")
    machine = machine_info(threads)
    checkpoint, given, options = _resolve_source(source, options)
    if options.tvm_target is None:
        options = replace(options, tvm_target=default_cuda_target(arch) if arch else "x86_64-host")
    read = open_checkpoint(checkpoint)
    tensors, sha = read.tensors, read.sha256
    del read
    model = _model_info(checkpoint, sha, tensors)
    weights = {"bytes_per_token": weight_bytes_per_token(tensors), "precision": "fp32",
               "bytes_per_value": BYTES_PER_VALUE}
    weights["fits_in_cache"] = weights["bytes_per_token"] <= machine["last_level_cache_mib"] * (1 << 20)
    row_bytes = {b: row_weight_bytes(tensors, b, options.weights_of(b)) for b in options.backends}
    del tensors
    log(f"bench {checkpoint}: {model['label']} {model['n_layer']} x {model['n_embd']}, "
        f"backends {', '.join(options.backends)}, {threads} threads"
        + (f"; on the GPU ({arch}): torch and TVM {options.tvm_target} with {options.weights} weights" if arch else ""))

    work = Path(work) if work is not None else default_work_dir()
    sources, runs, preparation = {}, {}, {}
    for backend in options.backends:
        if backend == "torch":
            sources[backend] = checkpoint
            continue
        try:
            if backend in given:
                sources[backend] = given[backend]
                continue
            if backend == "onnxruntime" and arch and (why := ort_cuda_unavailable()):
                raise _Unavailable(why)
            onnx = sources.get("onnxruntime")
            if backend == "tvm" and arch and onnx is None:  # one decode-step export for the builds of every --weights
                if why := tvm_unavailable(options.tvm_target):
                    raise _Unavailable(why)
                onnx = _prepare("onnx", checkpoint, sha, options, work, log, preparation)
            sources[backend] = _prepare(backend, checkpoint, sha, options, work, log, preparation, onnx=onnx)
        except _Unavailable as e:
            runs[backend] = BackendRun(backend, "unavailable", str(e), threads=threads)
            log(f"{backend}: unavailable: {e}")
        except ArtifactError as e:
            runs[backend] = BackendRun(backend, "failed", str(e), threads=threads)
            log(f"{backend}: failed: {e}")

    if arch:
        buffer = (options.bandwidth_mib or GPU_BANDWIDTH_MIB) << 20
        before = measure_gpu_bandwidth(buffer, options.bandwidth_repeats, log)
    else:
        buffer = (options.bandwidth_mib << 20) if options.bandwidth_mib else bandwidth_buffer_bytes()
        samples = measure_bandwidth(buffer, options.bandwidth_repeats, threads, log)
    peer_runs: dict[str, peers.PeerRun] = {}
    if peer is not None:
        peers.measure(peer, peer_runs, peers.ROUNDS[0], threads, options.steps, options.prefill, model["parameters"], log)
    for backend in options.backends:
        if backend not in runs:
            runs[backend] = _measure(backend, sources[backend], options, threads, log)
    if peer is not None:
        peers.measure(peer, peer_runs, peers.ROUNDS[1], threads, options.steps, options.prefill, model["parameters"], log)
    if arch:
        after = measure_gpu_bandwidth(buffer, options.bandwidth_repeats, log)
        samples, copies = before["read_gb_s"] + after["read_gb_s"], before["copy_gb_s"] + after["copy_gb_s"]
        machine["gpu"] = before["gpu"]
        weights["fits_in_cache"] = weights["bytes_per_token"] <= machine["gpu"]["l2_mib"] * (1 << 20)
    else:
        samples += measure_bandwidth(buffer, options.bandwidth_repeats, threads, log)
    gb_s = float(np.median(samples))
    bandwidth = {"gb_s": gb_s, "samples_gb_s": samples, "buffer_mib": buffer >> 20,
                 "method": f"{threads} threads each streaming its part of {buffer >> 20} MiB in "
                           f"{workers.STREAM_BLOCK >> 10} KiB blocks, before and after the backends"}
    if arch:
        bandwidth["method"] = (f"torch.amax over {buffer >> 20} MiB of fp32 on the GPU, timed with CUDA events, "
                               "before and after the backends")
        bandwidth.update(copy_gb_s=float(np.median(copies)), copy_samples_gb_s=copies,
                         copy_method=f"copy of {buffer >> 21} MiB from one half of the buffer to the other, "
                                     "bytes read + written")
    bound = bound_ms(weights["bytes_per_token"], gb_s)

    ordered = [runs[b] for b in options.backends]
    reference, eager = runs.get("onnxruntime"), runs.get("torch")
    for r in ordered:
        r.weights, r.weight_bytes_per_token = options.weights_of(r.backend), row_bytes[r.backend]
        r.bound_ms = bound_ms(r.weight_bytes_per_token, gb_s)
        if r.ok:
            r.vs_bound = r.decode_ms["median"] / r.bound_ms
            if reference is not None and reference.ok:
                r.vs_onnxruntime = r.decode_ms["median"] / reference.decode_ms["median"]
            if eager is not None and eager.ok:
                r.vs_torch = r.decode_ms["median"] / eager.decode_ms["median"]
    peers.compare(list(peer_runs.values()), ordered)
    machine["load_average_end"] = list(os.getloadavg())
    return BenchReport(machine, model, {**asdict(options), "backends": list(options.backends), "threads": threads}, weights, bandwidth, bound, ordered,
                       preparation, started, time.perf_counter() - start, list(peer_runs.values()))


# -- the GPU ----------------------------------------------------------------------------------------
def cuda_arch() -> str:
    """The arch of the GPU bench runs on (``"sm_90"``); OptionError saying what is missing where
    PyTorch cannot use a CUDA GPU here (the torch row and the bandwidth probe run through it)."""
    import torch

    if torch.cuda.is_available():
        major, minor = torch.cuda.get_device_capability(0)
        return f"sm_{major}{minor}"
    if cuda_device_arch() is None:
        raise OptionError("--device cuda: no CUDA GPU is visible here (neither PyTorch nor TVM's CUDA runtime "
                          "finds one); run it on a machine with an NVIDIA GPU and its driver, or bench the CPU")
    raise OptionError(f"--device cuda: torch {torch.__version__} cannot use this machine's GPU (a CPU-only build?); "
                      "the torch row and the bandwidth probe need a CUDA build of torch")


def default_cuda_target(arch: str) -> str:
    """The newest CUDA target of GPU_TARGETS whose arch a GPU of ``arch`` runs (an sm_80 cubin runs
    on sm_86; PTX carries sm_90 onto newer GPUs) and whose host is this machine; where none fits,
    the oldest, and the TVM row says why it cannot run."""
    from ..targets.gpu import GPU_TARGETS

    here = [t for t in GPU_TARGETS.values() if t.device == "cuda" and t.triple == host_triple()]
    if not here:
        raise OptionError(f"no CUDA target has this machine's host ({platform.machine()}); "
                          f"CUDA targets: {', '.join(t.name for t in GPU_TARGETS.values() if t.device == 'cuda')}")
    fits = [t for t in here if sm_number(t.arch) <= sm_number(arch)]
    return max(fits, key=lambda t: sm_number(t.arch)).name if fits else min(here, key=lambda t: sm_number(t.arch)).name


def ort_cuda_unavailable() -> str | None:
    """Why onnxruntime cannot run on the GPU here, or None."""
    import importlib.util

    if importlib.util.find_spec("onnxruntime") is None:
        return "onnxruntime is not installed"
    import onnxruntime

    if "CUDAExecutionProvider" in onnxruntime.get_available_providers():
        return None
    return (f"onnxruntime {onnxruntime.__version__} here has no CUDA provider (that is the onnxruntime-gpu "
            "package); it runs on the CPU only")


def check_output(path: str | Path) -> None:
    """ArtifactError now, not after a long run, if the report cannot be written at ``path``."""
    path = Path(path)
    try:
        tempfile.NamedTemporaryFile(dir=path.parent).close()
    except OSError as e:
        raise ArtifactError(f"cannot write {path}: {e.strerror}") from None


class _Unavailable(Exception):
    """A backend this build or this machine cannot run (not an error of the user's)."""


def _resolve_source(source: str | Path | None, options: BenchOptions) -> tuple[Path, dict[str, Path], BenchOptions]:
    """(checkpoint, {backend: artifact directory given by the user}, the options with a given
    bundle's target). OptionError for a bundle of another device or weights than ``options`` ask for."""
    if source is None:
        return DEMO_CHECKPOINT, {}, options
    source = Path(source)
    if not source.is_dir():
        return source, {}, options
    manifest = open_artifact(source).manifest
    backend = next((b for b, kind in ARTIFACT_KINDS.items() if kind == manifest.kind), None)
    if backend is None:
        raise OptionError(f"{source}: a {manifest.kind} artifact; bench runs {', '.join(ARTIFACT_KINDS.values())} "
                          "artifacts, or a checkpoint")
    if manifest.compute == "fp16":
        raise OptionError(f"{source}: an artifact that computes in fp16; bench compares backends computing in fp32 "
                          "or, for int8/int4 TVM bundles, int8 (export or compile without --weights fp16)")
    if backend == "tvm":
        options = _bundle_options(source, manifest.target, manifest.weights, options)
    checkpoint = Path(manifest.source["checkpoint"])
    if not checkpoint.is_file():
        raise ArtifactError(f"{source}: its source checkpoint {checkpoint} is gone; bench needs it for torch and the bound")
    if sha256_file(checkpoint) != manifest.source["sha256"]:
        raise ArtifactError(f"{checkpoint} is not the checkpoint {source} was made from (sha256 differs)")
    return checkpoint, {backend: source} if backend in options.backends else {}, options


def _bundle_options(source: Path, target: TvmBuild, manifest_weights: str, options: BenchOptions) -> BenchOptions:
    """``options`` for the TVM bundle ``source`` (its ``target`` record): same device, same weights,
    its target name."""
    name, device, weights = target.name, target.device, manifest_weights
    if (device == "cpu") != (options.device == "cpu"):
        flag = "leave out --device cuda" if device == "cpu" else f"add --device {device}"
        raise OptionError(f"{source}: a TVM bundle for {name} ({device}); bench runs it on device {options.device}: {flag}")
    if weights != options.weights:
        raise OptionError(f"{source}: a bundle with {weights} weights; pass --weights {weights}")
    if options.tvm_target not in (None, name):
        raise OptionError(f"{source}: a bundle for {name}, not {options.tvm_target} (--target)")
    return replace(options, tvm_target=name)


def _model_info(checkpoint: Path, sha: str, tensors: StateDict) -> dict[str, Any]:
    version = detect_version(tensors)
    unused = LANGUAGE_ARCHITECTURES[version].model_class().unused_keys  # v7 layer 0's value-residual weights
    vocab_size, n_embd = tensors["emb.weight"].shape
    return {
        "checkpoint": str(checkpoint), "sha256": sha, "architecture": version,
        "label": LANGUAGE_ARCHITECTURES[version].label, "n_layer": n_layers(tensors),
        "n_embd": int(n_embd), "vocab_size": int(vocab_size),
        "parameters": sum(t.numel() for name, t in tensors.items() if name not in unused),  # as `rwkv-edge info`
    }


# -- preparing artifacts (in a subprocess: the runtime does not import the exporter or compiler) ---
def _prepare(backend: str, checkpoint: Path, sha: str, options: BenchOptions, work: Path,
             log: Callable[[str], None], preparation: dict[str, Any], onnx: Path | None = None) -> Path:
    """The artifact ``backend`` runs, made from ``checkpoint`` under ``work`` unless a matching one is
    there. TVM compiles the ONNX export ``onnx`` where this run has one (the same graph, exported once).
    ``backend`` "onnx": the decode-step export alone, for the GPU builds when onnxruntime does not run."""
    if backend == "tvm" and (why := tvm_unavailable(options.tvm_target)):
        raise _Unavailable(why)
    out = work / f"{checkpoint.stem}-{sha[:12]}"
    if backend in ("onnxruntime", "onnx"):
        chunk = _prefill_chunk(backend, options)
        out /= f"onnx-{options.weights_of(backend)}-prefill{chunk}"
        what, source = f"export onnx (prefill chunk {chunk})", checkpoint
    else:
        gpu = _gpu_target(options.tvm_target)
        out /= tvm_bundle_name(options.tvm_target, options.weights_of("tvm"))
        what, source = f"compile {options.tvm_target}, {options.weights_of('tvm')} weights", onnx or checkpoint
    if not options.rebuild and _cached(backend, out, sha, options):
        log(f"{backend}: reusing {out} (same checkpoint sha256, files match its manifest; --rebuild to redo)")
        preparation[backend] = {"artifact": str(out), "reused": True}
        return out
    if backend == "tvm" and gpu and gpu.device == "cuda" and shutil.which("nvcc") is None:
        raise _Unavailable("nvcc not found: compiling for a CUDA target needs the CUDA toolkit's nvcc on PATH")
    log(f"{backend}: {what} -> {out}")
    start = time.perf_counter()
    try:
        build(backend, source, out, options, lambda line: log(f"    {line}"))
    except RwkvEdgeError as e:
        raise ArtifactError(f"{what} failed: {e}") from None
    preparation[backend] = {"artifact": str(out), "reused": False, "seconds": time.perf_counter() - start}
    return out


def tvm_bundle_name(target: str, weights: str) -> str:
    """The cache directory of a bundle: the target, and its weights unless fp32 on a CPU."""
    return f"tvm-{target}-{weights}" if _gpu_target(target) or weights != "fp32" else f"tvm-{target}"


def _gpu_target(name: str):
    from ..targets.gpu import GPU_TARGETS

    return GPU_TARGETS.get(name)


def _prefill_chunk(backend: str, options: BenchOptions) -> int:
    """Tokens per prefill call of ``backend``'s artifact: onnxruntime's export and CPU TVM bundles
    (GPU bundles and the decode-only export hold none)."""
    cpu_tvm = backend == "tvm" and not _gpu_target(options.tvm_target)
    return options.onnx_prefill_chunk if backend == "onnxruntime" or cpu_tvm else 0


def _cached(backend: str, out: Path, sha: str, options: BenchOptions) -> bool:
    """Whether ``out`` holds an intact fp32 artifact of the checkpoint with this sha256, made as asked:
    an export with the same prefill graph, a bundle for the same target with the same weights and prefill."""
    try:
        manifest = open_artifact(out).manifest
        if backend == "tvm":
            made_as_asked = (manifest.kind == "tvm" and manifest.target.name == options.tvm_target
                             and manifest.weights == options.weights_of("tvm")
                             and "interface" in manifest.graphs)  # older bundles' libraries lack interface()
        else:
            made_as_asked = manifest.kind == "onnx" and manifest.weights == options.weights_of(backend)
        made_as_asked &= getattr(manifest.graphs.get("prefill"), "chunk", 0) == _prefill_chunk(backend, options)
        if manifest.source.get("sha256") != sha or not made_as_asked:
            return False
    except (ArtifactError, KeyError, AttributeError):
        return False
    return True


def tvm_unavailable(target: str) -> str | None:
    """Why the TVM row cannot run in this build or on this machine, or None."""
    import importlib.util

    if "tvm" not in RUNNERS or importlib.util.find_spec("rwkv_edge.runtime.tvm_backend") is None:
        return "this build has no TVM backend (rwkv_edge.runtime.tvm_backend)"
    if importlib.util.find_spec("tvm") is None:
        return "apache-tvm is not installed"
    from ..targets import TARGETS

    if target not in TARGETS:
        return f"no target {target!r} in this build"
    gpu = _gpu_target(target)
    if gpu is not None and not gpu.runs_here():
        return f"{target}: {gpu_unavailable(gpu.device, gpu.arch, gpu.triple)}"
    return None




def build(backend: str, source: Path, out: Path, options: BenchOptions, log: Callable[[str], None]) -> None:
    """Export (``onnxruntime``, ``onnx``: the decode step alone) or compile (``tvm``) ``source`` into ``out``."""
    if backend in ("onnxruntime", "onnx"):
        from ..export import OnnxOptions, export_onnx

        export_onnx(source, out, OnnxOptions(options.weights_of(backend), prefill_chunk=_prefill_chunk(backend, options)),
                    log)
    else:
        from ..compile.tvm import TvmOptions, compile_tvm

        compile_tvm(source, out, TvmOptions(options.tvm_target, weights=options.weights_of("tvm"),
                                            prefill_chunk=_prefill_chunk(backend, options)), log)


# -- measurements ---------------------------------------------------------------------------------
def _measure(backend: str, source: Path, options: BenchOptions, threads: int, log: Callable[[str], None]) -> BackendRun:
    where = f" on the GPU, {options.weights_of(backend)} weights" if options.device != "cpu" else ""
    log(f"{backend}: {options.warmup} + {options.steps} decode steps, prefill {options.prefill} tokens, "
        f"{threads} threads{where} ...")
    spec = DecodeSpec(backend, str(source), threads, options.warmup, options.steps, options.prefill,
                      options.prefill_repeats, options.seed, options.device, options.weights_of(backend))
    start = time.perf_counter()
    try:
        result = in_own_process(workers.decode, spec, threads)
    except ArtifactError as e:
        log(f"{backend}: failed: {e}")
        return BackendRun(backend, "failed", str(e), str(source), threads)
    run = BackendRun(**result)
    if source.is_dir():
        run.compute = open_artifact(source).manifest.compute
    log(f"{backend}: median {run.decode_ms['median']:.3f} ms/token, peak RSS {run.peak_rss_mib:.0f} MiB, steady {run.steady_rss_mib:.0f} MiB "
        f"({time.perf_counter() - start:.0f} s)")
    return run


def measure_bandwidth(buffer_bytes: int, repeats: int, threads: int, log: Callable[[str], None] = print) -> list[float]:
    """GB/s of ``repeats`` timed reads of a ``buffer_bytes`` buffer by ``threads`` threads, each streaming its
    own contiguous part (workers.bandwidth), in a subprocess."""
    log(f"read bandwidth: {repeats} reads of {buffer_bytes >> 20} MiB, {threads} threads streaming ...")
    samples = in_own_process(workers.bandwidth, BandwidthSpec(buffer_bytes, repeats, threads), threads)
    log(f"read bandwidth: median {np.median(samples):.1f} GB/s")
    return samples


def measure_gpu_bandwidth(buffer_bytes: int, repeats: int, log: Callable[[str], None] = print) -> dict[str, Any]:
    """GPU memory in a subprocess: ``repeats`` timed torch.amax reductions over a ``buffer_bytes``
    buffer (read GB/s) and as many copies of one half of it to the other (GB/s read + written),
    each timed with CUDA events; and what the GPU is."""
    log(f"GPU bandwidth: {repeats} x torch.amax over {buffer_bytes >> 20} MiB, {repeats} copies of "
        f"{buffer_bytes >> 21} MiB ...")
    result = in_own_process(workers.bandwidth, BandwidthSpec(buffer_bytes, repeats, 1, "cuda"), 1)
    log(f"GPU bandwidth: median {np.median(result['read_gb_s']):.1f} GB/s read, "
        f"{np.median(result['copy_gb_s']):.1f} GB/s copied (read + written), {result['gpu']['name']}")
    return result
