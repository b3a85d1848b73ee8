"""``rwkv-edge bench``: decode latency, prefill speed and memory of each backend, against the
memory-bandwidth bound of the machine it runs on (bench/bound.py).

On a GPU (``device="cuda"``) the same rows run there: PyTorch eagerly with the model and state on
the GPU, the TVM bundle compiled for the GPU's CUDA target (GEMV weights fp32 or fp16), onnxruntime
where its CUDA provider is installed. Each timed step ends with a synchronisation, the read
bandwidth is that of GPU memory (torch.amax timed with CUDA events), and each row's bound counts
the bytes its own weights take (2 per GEMV weight with fp16 weights).

Each backend's row (bench/rows.py, named by its runtime.registry entry) prepares what it runs (an
ONNX export, a TVM bundle) with the library's own ``export_onnx`` and ``compile_tvm``, cached by
checkpoint sha256 and settings. Every measurement
runs in a process of its own (bench/workers.py), one after the other, with the same thread count,
so that the peak RSS is that backend's alone and no two measurements overlap; the read bandwidth
is measured the same way before and after them.

Numbers are medians over one run on one machine; nothing here emulates another machine.
"""

from __future__ import annotations

import os
import platform
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from ..artifact import open_artifact, sha256_file
from ..compile.tvm import PREFILL_CHUNK
from ..bundled import source_checkpoint
from ..errors import ArtifactError, OptionError
from ..model import LANGUAGE_ARCHITECTURES, DEMO_CHECKPOINT, detect_version
from ..model.checkpoint import StateDict, n_layers
from ..model.huggingface import is_model_folder
from ..model.sources import open_checkpoint
from ..platforms import cuda_device_arch, host_triple, sm_number
from ..runtime.registry import backend_entry
from . import peer as peers, workers
from .bound import (BYTES_PER_VALUE, bandwidth_buffer_bytes, bound_ms, machine_info, row_weight_bytes,
                    weight_bytes_per_token)
from .options import BACKENDS, BandwidthSpec, BenchOptions, DecodeSpec
from .report import BackendRun, BenchReport
from .rows import OrtRow, Preparation, TorchRow, Unavailable, bench_row
from .workers import in_own_process

ARTIFACT_KINDS = {b: backend_entry(b).kind for b in BACKENDS if backend_entry(b).kind}  # row -> the manifest kind it runs
GPU_BANDWIDTH_MIB = 2048  # the GPU's read-bandwidth buffer: 40 x an H100's 50 MB L2


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
    rows = {b: bench_row(b) for b in options.backends}
    row_bytes = {b: row_weight_bytes(tensors, row.weights_of(options), row.every_weight) for b, row in rows.items()}
    del tensors
    log(f"bench {checkpoint}: {model['label']} {model['n_layer']} x {model['n_embd']}, "
        f"backends {', '.join(options.backends)}, {threads} threads"
        + (f"; on the GPU ({arch}): torch and TVM {options.tvm_target} with {options.weights} weights" if arch else ""))

    prep = Preparation(checkpoint, sha, options, Path(work) if work is not None else default_work_dir(), log, arch)
    sources, runs = prep.sources, {}
    for backend, row in rows.items():
        try:
            sources[backend] = given[backend] if backend in given else row.source(prep)
        except Unavailable as e:
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
    reference, eager = runs.get(OrtRow.name), runs.get(TorchRow.name)  # the rows the others are compared with
    for r in ordered:
        r.weights, r.weight_bytes_per_token = rows[r.backend].weights_of(options), row_bytes[r.backend]
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
                       prep.record, started, time.perf_counter() - start, list(peer_runs.values()))


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


def _resolve_source(source: str | Path | None, options: BenchOptions) -> tuple[Path, dict[str, Path], BenchOptions]:
    """(checkpoint, {backend: artifact directory given by the user}, the options with a given
    bundle's target). OptionError for a bundle of another device or weights than ``options`` ask for."""
    if source is None:
        return DEMO_CHECKPOINT, {}, options
    source = Path(source)
    if not source.is_dir() or is_model_folder(source):
        return source, {}, options
    manifest = open_artifact(source).manifest
    runs_it = [b for b, kind in ARTIFACT_KINDS.items() if kind == manifest.kind]  # tvm before native
    backend = runs_it[0] if runs_it else None
    if backend is None:
        raise OptionError(f"{source}: a {manifest.kind} artifact; bench runs {', '.join(ARTIFACT_KINDS.values())} "
                          "artifacts, or a checkpoint")
    if manifest.precision.half:
        raise OptionError(f"{source}: an artifact that computes in fp16; bench compares backends computing in fp32 "
                          "or, for int8/int4 TVM bundles, int8 (export or compile without --weights fp16)")
    options = bench_row(backend).given(source, manifest, options)
    checkpoint = source_checkpoint(manifest.source)
    if not checkpoint.exists():
        raise ArtifactError(f"{source}: its source checkpoint {checkpoint} is gone; bench needs it for torch and the bound")
    if (open_checkpoint(checkpoint).sha256 if checkpoint.is_dir() else sha256_file(checkpoint)) != manifest.source["sha256"]:
        raise ArtifactError(f"{checkpoint} is not the checkpoint {source} was made from (sha256 differs)")
    return checkpoint, {b: source for b in runs_it if b in options.backends}, options


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


# -- measurements ---------------------------------------------------------------------------------
def _measure(backend: str, source: Path, options: BenchOptions, threads: int, log: Callable[[str], None]) -> BackendRun:
    weights = bench_row(backend).weights_of(options)
    where = f" on the GPU, {weights} weights" if options.device != "cpu" else ""
    log(f"{backend}: {options.warmup} + {options.steps} decode steps, prefill {options.prefill} tokens, "
        f"{threads} threads{where} ...")
    spec = DecodeSpec(backend, str(source), threads, options.warmup, options.steps, options.prefill,
                      options.prefill_repeats, options.seed, options.device, weights)
    start = time.perf_counter()
    try:
        result = in_own_process(workers.decode, spec, threads)
    except ArtifactError as e:
        log(f"{backend}: failed: {e}")
        return BackendRun(backend, "failed", str(e), str(source), threads)
    run = BackendRun(**result)
    if source.is_dir() and not is_model_folder(source):
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
