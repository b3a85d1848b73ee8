"""``rwkv-edge bench``: decode latency, prefill speed and memory of each backend, against the
memory-bandwidth bound of the machine it runs on.

A decode step of an RWKV model reads every weight once (the embedding: one row) and does about
two flops per weight read, so on a CPU its speed is set by how fast memory delivers the weights.
The bound is ``weight bytes per token / read bandwidth``, both measured in the same run.

On a GPU (``device="cuda"``) the same rows run there: PyTorch eagerly with the model and state on
the GPU, the TVM bundle compiled for the GPU's CUDA target (GEMV weights fp32 or fp16), onnxruntime
where its CUDA provider is installed. Each timed step ends with a synchronisation, the read
bandwidth is that of GPU memory (torch.amax timed with CUDA events), and each row's bound counts
the bytes its own weights take (2 per GEMV weight with fp16 weights).

Every backend runs in its own subprocess (``python -m rwkv_edge.runtime.bench decode SPEC``), one
after the other, with the same thread count, so that the peak RSS is that backend's alone and no
two of the bench's measurements overlap; the read bandwidth is measured the same way before and
after them. The parent prepares what the backends need (an ONNX export, a
TVM bundle) by running the ``rwkv-edge`` command in a subprocess too: the runtime never imports
the exporter or the compiler, and a compiler's memory never lands in a measured process.

Numbers are medians over one run on one machine; nothing here emulates another machine.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from ..atomic import atomic_path
from ..errors import ArtifactError, OptionError, RwkvEdgeError
from ..artifact import open_artifact, sha256_file
from ..model import ARCHITECTURES, DEMO_CHECKPOINT, detect_version
from ..model.checkpoint import StateDict, n_layers, open_checkpoint

SCHEMA = "rwkv-edge.bench/1"
BACKENDS = ("torch", "onnxruntime", "tvm")  # in the order a run reports them
DEVICES = ("cpu", "cuda")
WEIGHTS = ("fp32", "fp16")  # what the torch and TVM rows store their weights in (fp16: GPU only)
ARTIFACT_KINDS = {"onnxruntime": "onnx", "tvm": "tvm"}  # the manifest kind each backend runs
BYTES_PER_VALUE = 4  # every backend computes in fp32 here
GPU_BANDWIDTH_MIB = 2048  # the GPU's read-bandwidth buffer: 40 x an H100's 50 MB L2
_TIMESTAMP = re.compile(r"^\[\d\d:\d\d:\d\d\] ")  # TVM's log prefix
THREAD_VARIABLES = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "TVM_NUM_THREADS")


@dataclass(frozen=True)
class BenchOptions:
    backends: tuple[str, ...] = BACKENDS
    steps: int = 128  # timed decode steps
    warmup: int = 16  # untimed decode steps before them
    prefill: int = 64  # prompt tokens through backend.prefill; 0 skips the prefill measurement
    prefill_repeats: int = 3  # timed prefill calls (after one untimed), the median is reported
    threads: int | None = None  # per backend; None: every core this process may use
    bandwidth_mib: int | None = None  # read-bandwidth buffer; None: max(512 MiB, 16 x last-level cache)
    bandwidth_repeats: int = 10  # timed reductions before and again after the backends
    onnx_prefill_chunk: int = 16  # the ONNX export's prefill graph; 0: prefill runs as single steps
    tvm_target: str | None = None  # None: x86_64-host, or on "cuda" the newest CUDA target the GPU runs
    rebuild: bool = False  # export / compile again even when the cached artifact matches
    seed: int = 0  # the token ids fed to every backend
    device: str = "cpu"  # where every row runs: "cpu" or "cuda" (an NVIDIA GPU)
    tvm_weights: str = "fp32"  # GPU bundles: the GEMV weights' dtype (compile --weights)
    torch_weights: str = "fp32"  # the PyTorch model's dtype (fp16: on the GPU only)

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
        for name in ("tvm_weights", "torch_weights"):
            if getattr(self, name) not in WEIGHTS:
                raise OptionError(f"{name.replace('_', ' ')} must be one of {', '.join(WEIGHTS)}, got {getattr(self, name)!r}")
            if self.device == "cpu" and getattr(self, name) != "fp32":
                raise OptionError(f"{getattr(self, name)} weights ({name}) run on a GPU only: add --device cuda "
                                  "(on the CPU every backend computes with fp32 weights)")
        if self.tvm_target is not None:
            check_target_device(self.tvm_target, self.device)

    def resolved_threads(self) -> int:
        return self.threads or len(os.sched_getaffinity(0))

    def weights_of(self, backend: str) -> str:
        """The dtype ``backend``'s row keeps its weights in (onnxruntime: the fp32 export)."""
        return {"torch": self.torch_weights, "tvm": self.tvm_weights}.get(backend, "fp32")


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


@dataclass
class BackendRun:
    """One backend's measurements, or why there are none."""

    backend: str
    status: str  # "ok", "unavailable" (not in this build / not installed), "failed" (it broke)
    reason: str = ""
    source: str = ""  # the checkpoint or artifact directory it ran
    threads: int = 0
    load_s: float = 0.0  # opening the backend (loading weights, creating sessions)
    decode_ms: dict[str, float] = field(default_factory=dict)  # median, p10, p90, mean, min, max
    decode_steps: int = 0
    prefill_tokens: int = 0
    prefill_tok_s: float | None = None  # median over the timed calls
    prefill_s: list[float] = field(default_factory=list)  # every timed call
    peak_rss_mib: float = 0.0  # the worker process's peak resident set, imports included
    base_rss_mib: float = 0.0  # its resident set after the imports, before the backend opened
    details: dict[str, Any] = field(default_factory=dict)  # versions, prefill chunk, ...
    vs_bound: float | None = None  # median decode latency / this row's bound
    vs_onnxruntime: float | None = None  # median decode latency / onnxruntime's
    weights: str = "fp32"  # the dtype its weights are stored in (fp16: GPU rows only)
    weight_bytes_per_token: int = 0  # what its decode step reads, for its weights' dtype
    bound_ms: float | None = None  # weight_bytes_per_token / the measured read bandwidth
    vs_torch: float | None = None  # median decode latency / the torch row's

    @property
    def ok(self) -> bool:
        return self.status == "ok"


@dataclass
class BenchReport:
    machine: dict[str, Any]
    model: dict[str, Any]
    options: dict[str, Any]
    weights: dict[str, Any]  # bytes read per decode token
    bandwidth: dict[str, Any]  # measured read bandwidth
    bound_ms: float  # weights bytes per token / bandwidth
    runs: list[BackendRun]
    preparation: dict[str, Any] = field(default_factory=dict)  # exports and compiles: where, how long
    started: str = ""
    wall_s: float = 0.0

    @property
    def busy(self) -> bool:
        """Whether other work was running when the bench started (1-minute load average >= half the CPUs)."""
        return self.machine["load_average_start"][0] >= self.machine["usable_cpus"] / 2

    @property
    def failed(self) -> list[BackendRun]:
        return [r for r in self.runs if r.status == "failed"]

    def to_json(self) -> dict[str, Any]:
        return {"schema": SCHEMA, **asdict(self), "busy": self.busy}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> "BenchReport":
        """A report saved by ``save_report``; OptionError for another file."""
        if data.get("schema") != SCHEMA:
            raise OptionError(f"not an rwkv-edge bench report (schema {data.get('schema')!r}, expected {SCHEMA!r})")
        fields = {k: v for k, v in data.items() if k not in ("schema", "busy")}
        return cls(**{**fields, "runs": [BackendRun(**r) for r in fields["runs"]]})

    def table(self) -> str:
        """The run as text: the machine, the bound, one row per backend (on a GPU: with its weights' dtype)."""
        m, w, bw, o = self.machine, self.weights, self.bandwidth, self.options
        gpu = m.get("gpu")
        cache = (f"the GPU's {gpu['l2_mib']:.0f} MiB L2 cache, so the memory bound" if gpu else
                 f"the {m['last_level_cache_mib']:.0f} MiB last-level cache, so the DRAM bound")
        other = sorted({(r.backend, r.weights, r.weight_bytes_per_token, r.bound_ms) for r in self.runs
                        if r.weights != w["precision"] and r.bound_ms is not None})
        lines = [
            f"model     {self.model['label']}: {self.model['n_layer']} layers x {self.model['n_embd']}, "
            f"vocab {self.model['vocab_size']}, {self.model['parameters']:,} parameters ({self.model['checkpoint']})",
            f"machine   {m['cpu']}, {m['physical_cores']} cores / {m['logical_cpus']} logical CPUs, "
            f"{m['threads']} threads per backend; load average {m['load_average_start'][0]:.2f} at start, "
            f"{m['load_average_end'][0]:.2f} at end",
            *([f"gpu       {gpu['name']} ({gpu['arch']}, {gpu['memory_mib']:.0f} MiB, {gpu['multiprocessors']} SMs, "
               f"{gpu['l2_mib']:.0f} MiB L2; torch CUDA {gpu['torch_cuda']})"] if gpu else []),
            f"weights   {w['bytes_per_token'] / 1e6:.2f} MB read per decode token ({w['precision']}, "
            f"embedding: one row)" + (f"; they fit in {cache} need not bind" if w["fits_in_cache"] else "")
            + "".join(f"; {backend} {weights}: {n / 1e6:.2f} MB ({_layout(backend, weights)})"
                      for backend, weights, n, _ in other),
            f"bandwidth {bw['gb_s']:.1f} GB/s read (median of {len(bw['samples_gb_s'])}: {bw['method']}; "
            f"range {min(bw['samples_gb_s']):.1f}-{max(bw['samples_gb_s']):.1f})"
            + (f"; device-to-device copy {bw['copy_gb_s']:.1f} GB/s (bytes read + written)" if "copy_gb_s" in bw else ""),
            f"bound     {self.bound_ms:{'.4g' if gpu else '.3f'}} ms/token = {1e3 / self.bound_ms:.0f} tokens/s"
            + "".join(f"; {backend} {weights}: {bound:.4g} ms/token" for backend, weights, _, bound in other),
            f"decode    {o['warmup']} warm-up + {o['steps']} timed steps; prefill {o['prefill']} tokens, "
            f"median of {o['prefill_repeats']} calls" + ("; every timed call ends with a GPU synchronisation" if gpu else ""),
            "prefill   " + "; ".join(f"{r.backend}: {_prefill_mode(r)}" for r in self.runs if r.ok),
            *([f"busy      the machine was busy before the run (load average {m['load_average_start'][0]:.2f} on "
               f"{m['usable_cpus']} CPUs): the figures include contention"] if self.busy else []),
            "",
        ]
        if gpu:
            lines.append(f"{'backend':<12} {'weights':>7} {'decode ms/token':>15} {'p10-p90':>17} {'x bound':>8} "
                         f"{'x torch':>7} {'prefill tok/s':>13} {'peak RSS MiB':>12} {'(base)':>7}")
        else:
            lines.append(f"{'backend':<12} {'decode ms/token':>15} {'p10-p90':>17} {'x bound':>8} {'x ORT':>6} "
                         f"{'prefill tok/s':>13} {'peak RSS MiB':>12} {'(base)':>7}")
        for r in self.runs:
            if not r.ok:
                lines.append(f"{r.backend:<12} {r.status}: {r.reason}")
                continue
            d = r.decode_ms
            prefill = f"{r.prefill_tok_s:13.0f}" if r.prefill_tok_s is not None else f"{'-':>13}"
            if gpu:
                vs_torch = f"{r.vs_torch:7.2f}" if r.vs_torch is not None else f"{'-':>7}"
                lines.append(f"{r.backend:<12} {r.weights:>7} {d['median']:15.3f} {_span(d['p10'], d['p90']):>17} "
                             f"{r.vs_bound:8.2f} {vs_torch} {prefill} {r.peak_rss_mib:12.0f} "
                             f"{f'({r.base_rss_mib:.0f})':>7}")
                continue
            vs_ort = f"{r.vs_onnxruntime:6.2f}" if r.vs_onnxruntime is not None else f"{'-':>6}"
            lines.append(f"{r.backend:<12} {d['median']:15.3f} {_span(d['p10'], d['p90']):>17} {r.vs_bound:8.2f} "
                         f"{vs_ort} {prefill} {r.peak_rss_mib:12.0f} {f'({r.base_rss_mib:.0f})':>7}")
        return "\n".join(lines)


def _layout(backend: str, weights: str) -> str:
    """How a row stores its weights, in words."""
    if weights == "fp32":
        return "every weight fp32"
    if backend == "torch":
        return f"every weight {weights}"
    return f"GEMV weights {weights}, the rest fp32"


def _prefill_mode(run: BackendRun) -> str:
    if run.backend == "torch":
        return "the whole prompt per forward call"
    chunk = run.details.get("prefill_chunk", 0)
    return f"{chunk}-token prefill graph calls" if chunk else "one step per token"


def _span(lo: float, hi: float) -> str:
    return f"{lo:.3f}-{hi:.3f}"


# -- the memory-bandwidth bound -------------------------------------------------------------------
def weight_bytes_per_token(tensors: StateDict, bytes_per_value: int = BYTES_PER_VALUE,
                           gemv_bytes_per_value: int | None = None) -> int:
    """Bytes of weights one decode step reads: every tensor the model uses once, except the
    embedding, of which one row (the token's). ``gemv_bytes_per_value``: the matrices the step
    multiplies a row by (``gemv_weight_names``) take that many bytes each, the rest ``bytes_per_value``
    (a GPU bundle's fp16 weights: 2, with everything else fp32)."""
    unused = set(ARCHITECTURES[detect_version(tensors)].model_class.unused_keys)
    gemv = gemv_weight_names(tensors) if gemv_bytes_per_value is not None else set()
    total = 0
    for name, t in tensors.items():
        if name in unused:
            continue
        values = t.shape[-1] if name == "emb.weight" else t.numel()
        total += values * (gemv_bytes_per_value if name in gemv else bytes_per_value)
    return total


def gemv_weight_names(tensors: StateDict) -> set[str]:
    """The 2-D weights a decode step multiplies a row by (linear layers, LoRA matrices, the head):
    what the exported graph holds as constant MatMul operands and a GPU bundle stores in its
    ``--weights`` dtype. Found by running the model once on the meta device (no memory, no compute)
    and recording every 2-D parameter that reaches a matmul; the embedding is a gather, per-head
    parameters such as ``r_k`` are elementwise."""
    import torch
    from torch.overrides import TorchFunctionMode

    model_class = ARCHITECTURES[detect_version(tensors)].model_class
    model = model_class.from_state_dict({k: torch.empty(t.shape, dtype=torch.float32, device="meta")
                                         for k, t in tensors.items()})
    names = {id(p): name for name, p in model.named_parameters()}
    found: set[str] = set()
    matmuls = {torch.nn.functional.linear, torch.matmul, torch.Tensor.matmul, torch.Tensor.__matmul__, torch.mm}

    class Record(TorchFunctionMode):
        def __torch_function__(self, func, types, args=(), kwargs=None):
            if func in matmuls:
                found.update(names[id(a)] for a in args if isinstance(a, torch.Tensor) and id(a) in names and a.dim() == 2)
            return func(*args, **(kwargs or {}))

    with torch.device("meta"), Record(), torch.inference_mode():
        x = torch.zeros(1, model.config.n_embd)  # (T=1, C): one token past the embedding
        x, _ = model.run_blocks(x, model.init_state())
        model.head(model.ln_out(x))
    return found


def bound_ms(bytes_per_token: int, gb_s: float) -> float:
    """Milliseconds per token at which reading the weights alone takes all the bandwidth (GB = 1e9 bytes)."""
    return bytes_per_token / (gb_s * 1e9) * 1e3


def last_level_cache_bytes() -> int:
    """The largest CPU cache of cpu0, from sysfs (0 where unknown)."""
    largest = 0
    for index in Path("/sys/devices/system/cpu/cpu0/cache").glob("index*"):
        try:
            largest = max(largest, _size_bytes((index / "size").read_text().strip()))
        except (OSError, ValueError):
            continue
    return largest


def bandwidth_buffer_bytes() -> int:
    """Large enough that no cache holds it: max(512 MiB, 16 x the last-level cache)."""
    return max(512 << 20, 16 * last_level_cache_bytes())


def _size_bytes(text: str) -> int:
    units = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}
    return int(text[:-1]) * units[text[-1]] if text[-1] in units else int(text)


# -- the machine ----------------------------------------------------------------------------------
def machine_info(threads: int) -> dict[str, Any]:
    """CPU model, cores and threads; the load average says how busy the machine was."""
    cpu, physical, core = "", set(), {}
    try:
        cpuinfo = Path("/proc/cpuinfo").read_text().splitlines() + [""]
    except OSError:
        cpuinfo = []
    for line in cpuinfo:  # one paragraph per logical CPU
        key, _, value = (part.strip() for part in line.partition(":"))
        if key == "model name" and not cpu:
            cpu = value
        elif key in ("physical id", "core id"):
            core[key] = value
        elif not key and core:
            physical.add((core.get("physical id"), core.get("core id")))
            core = {}
    return {
        "cpu": cpu or platform.processor() or platform.machine(),
        "logical_cpus": os.cpu_count(),
        "physical_cores": len(physical) or os.cpu_count(),
        "usable_cpus": len(os.sched_getaffinity(0)),
        "last_level_cache_mib": last_level_cache_bytes() / (1 << 20),
        "threads": threads,
        "system": f"{platform.system()} {platform.release()} {platform.machine()}",
        "python": platform.python_version(),
        "load_average_start": list(os.getloadavg()),
    }


# -- running a bench ------------------------------------------------------------------------------
def default_work_dir() -> Path:
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "rwkv-edge" / "bench"


def run_bench(source: str | Path | None, options: BenchOptions = BenchOptions(), work: str | Path | None = None,
              log: Callable[[str], None] = print) -> BenchReport:
    """Measure every backend of ``options`` on ``source`` (a checkpoint, an artifact directory, or
    None for the demo model). Exports and compiles go to ``work`` (default: ~/.cache/rwkv-edge/bench).
    ``options.device`` "cuda" without a usable GPU: OptionError before anything runs."""
    start, started = time.perf_counter(), datetime.now(timezone.utc).isoformat(timespec="seconds")
    threads = options.resolved_threads()
    arch = cuda_arch() if options.device == "cuda" else None
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
        + (f"; on the GPU ({arch}): torch {options.torch_weights}, TVM {options.tvm_target} with "
           f"{options.tvm_weights} weights" if arch else ""))

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
    for backend in options.backends:
        if backend not in runs:
            runs[backend] = _measure(backend, sources[backend], options, threads, log)
    if arch:
        after = measure_gpu_bandwidth(buffer, options.bandwidth_repeats, log)
        samples, copies = before["read_gb_s"] + after["read_gb_s"], before["copy_gb_s"] + after["copy_gb_s"]
        machine["gpu"] = before["gpu"]
        weights["fits_in_cache"] = weights["bytes_per_token"] <= machine["gpu"]["l2_mib"] * (1 << 20)
    else:
        samples += measure_bandwidth(buffer, options.bandwidth_repeats, threads, log)
    gb_s = float(np.median(samples))
    bandwidth = {"gb_s": gb_s, "samples_gb_s": samples, "buffer_mib": buffer >> 20,
                 "method": f"torch.amax over {buffer >> 20} MiB of fp32, {threads} threads, before and after the backends"}
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
    machine["load_average_end"] = list(os.getloadavg())
    return BenchReport(machine, model, {**asdict(options), "backends": list(options.backends), "threads": threads}, weights, bandwidth, bound, ordered,
                       preparation, started, time.perf_counter() - start)


def row_weight_bytes(tensors: StateDict, backend: str, weights: str) -> int:
    """Bytes of weights ``backend``'s decode step reads with its weights in ``weights``: PyTorch in
    fp16 holds every weight in fp16; a GPU bundle's ``--weights fp16`` the GEMV weights alone."""
    if weights == "fp32":
        return weight_bytes_per_token(tensors)
    if backend == "torch":
        return weight_bytes_per_token(tensors, bytes_per_value=2)
    return weight_bytes_per_token(tensors, gemv_bytes_per_value=2)


# -- the GPU ----------------------------------------------------------------------------------------
def cuda_arch() -> str:
    """The arch of the GPU bench runs on (``"sm_90"``); OptionError saying what is missing where
    PyTorch cannot use a CUDA GPU here (the torch row and the bandwidth probe run through it)."""
    import torch

    if torch.cuda.is_available():
        major, minor = torch.cuda.get_device_capability(0)
        return f"sm_{major}{minor}"
    from .cuda import cuda_device_arch

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
    from ..targets.tvm import host_triple

    here = [t for t in GPU_TARGETS.values() if t.device == "cuda" and t.triple == host_triple()]
    if not here:
        raise OptionError(f"no CUDA target has this machine's host ({platform.machine()}); "
                          f"CUDA targets: {', '.join(t.name for t in GPU_TARGETS.values() if t.device == 'cuda')}")
    fits = [t for t in here if _sm(t.arch) <= _sm(arch)]
    return max(fits, key=lambda t: _sm(t.arch)).name if fits else min(here, key=lambda t: _sm(t.arch)).name


def _sm(arch: str) -> int:
    return int(arch.removeprefix("sm_").rstrip("a"))


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


def save_report(report: BenchReport, path: str | Path) -> Path:
    path = Path(path)
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(report.to_json(), indent=2) + "\n")
    return path


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
    if manifest.precision != "fp32":
        raise OptionError(f"{source}: a {manifest.precision} artifact; bench compares backends at fp32 "
                          "(export or compile with --precision fp32)")
    if backend == "tvm":
        options = _bundle_options(source, manifest.target or {}, options)
    checkpoint = Path(manifest.source["checkpoint"])
    if not checkpoint.is_file():
        raise ArtifactError(f"{source}: its source checkpoint {checkpoint} is gone; bench needs it for torch and the bound")
    if sha256_file(checkpoint) != manifest.source["sha256"]:
        raise ArtifactError(f"{checkpoint} is not the checkpoint {source} was made from (sha256 differs)")
    return checkpoint, {backend: source} if backend in options.backends else {}, options


def _bundle_options(source: Path, target: dict[str, Any], options: BenchOptions) -> BenchOptions:
    """``options`` for the TVM bundle ``source`` (its ``target`` record): same device, same weights,
    its target name."""
    name, device, weights = target.get("name"), target.get("device", "cpu"), target.get("weights", "fp32")
    if (device == "cpu") != (options.device == "cpu"):
        flag = "leave out --device cuda" if device == "cpu" else f"add --device {device}"
        raise OptionError(f"{source}: a TVM bundle for {name} ({device}); bench runs it on device {options.device}: {flag}")
    if weights != options.tvm_weights:
        raise OptionError(f"{source}: a bundle with {weights} weights; pass --weights {weights}")
    if options.tvm_target not in (None, name):
        raise OptionError(f"{source}: a bundle for {name}, not {options.tvm_target} (--target)")
    return replace(options, tvm_target=name)


def _model_info(checkpoint: Path, sha: str, tensors: StateDict) -> dict[str, Any]:
    version = detect_version(tensors)
    vocab_size, n_embd = tensors["emb.weight"].shape
    return {
        "checkpoint": str(checkpoint), "sha256": sha, "architecture": version,
        "label": ARCHITECTURES[version].label, "n_layer": n_layers(tensors),
        "n_embd": int(n_embd), "vocab_size": int(vocab_size), "parameters": sum(t.numel() for t in tensors.values()),
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
        out /= f"onnx-fp32-prefill{chunk}"
        what, argv = "export onnx", ["export", "onnx", str(checkpoint), "-o", str(out), "--prefill-chunk", str(chunk)]
    else:
        gpu = _gpu_target(options.tvm_target)
        out /= tvm_bundle_name(options.tvm_target, options.tvm_weights)
        what = f"compile {options.tvm_target}" + (f" --weights {options.tvm_weights}" if gpu else "")
        argv = ["compile", str(onnx or checkpoint), "--target", options.tvm_target, "-o", str(out)]
        argv += ["--weights", options.tvm_weights] if gpu else []
    if not options.rebuild and _cached(backend, out, sha, options):
        log(f"{backend}: reusing {out} (same checkpoint sha256, files match its manifest; --rebuild to redo)")
        preparation[backend] = {"artifact": str(out), "reused": True}
        return out
    if backend == "tvm" and gpu and gpu.device == "cuda" and shutil.which("nvcc") is None:
        raise _Unavailable("nvcc not found: compiling for a CUDA target needs the CUDA toolkit's nvcc on PATH")
    log(f"{backend}: {what} -> {out}")
    start = time.perf_counter()
    _run_cli(argv, what, log)
    preparation[backend] = {"artifact": str(out), "reused": False, "seconds": time.perf_counter() - start}
    return out


def tvm_bundle_name(target: str, weights: str) -> str:
    """The cache directory of a bundle: the target, and for GPU targets the weights' dtype."""
    return f"tvm-{target}-{weights}" if _gpu_target(target) else f"tvm-{target}"


def _gpu_target(name: str):
    from ..targets.gpu import GPU_TARGETS

    return GPU_TARGETS.get(name)


def _prefill_chunk(backend: str, options: BenchOptions) -> int:
    return options.onnx_prefill_chunk if backend == "onnxruntime" else 0


def _cached(backend: str, out: Path, sha: str, options: BenchOptions) -> bool:
    """Whether ``out`` holds an intact fp32 artifact of the checkpoint with this sha256, made as asked:
    an export with the same prefill graph, a bundle for the same target with the same weights."""
    try:
        manifest = open_artifact(out).manifest
        if backend == "tvm":
            target = manifest.target or {}
            made_as_asked = (manifest.kind == "tvm" and manifest.precision == "fp32"
                             and target.get("name") == options.tvm_target
                             and target.get("weights", "fp32") == options.tvm_weights)
        else:
            made_as_asked = (manifest.kind == "onnx" and manifest.precision == "fp32"
                             and manifest.graphs.get("prefill", {}).get("chunk", 0) == _prefill_chunk(backend, options))
        if manifest.source.get("sha256") != sha or not made_as_asked:
            return False
    except (ArtifactError, KeyError, AttributeError):
        return False
    return True


def tvm_unavailable(target: str) -> str | None:
    """Why the TVM row cannot run in this build or on this machine, or None."""
    import importlib.util

    from . import open as opener

    if "tvm" not in opener.BACKENDS or importlib.util.find_spec("rwkv_edge.runtime.tvm_backend") is None:
        return "this build has no TVM backend (rwkv_edge.runtime.tvm_backend)"
    if importlib.util.find_spec("tvm") is None:
        return "apache-tvm is not installed"
    from ..targets import TARGETS

    if target not in TARGETS:
        return f"no target {target!r} in this build"
    gpu = _gpu_target(target)
    if gpu is not None and not gpu.runs_here():
        from ..targets.gpu import unavailable_reason

        return f"{target}: {unavailable_reason(gpu.device, gpu.arch, gpu.triple)}"
    return None


def _run_cli(argv: list[str], what: str, log: Callable[[str], None]) -> None:
    """Run ``rwkv-edge ARGV`` with its output indented into the log; ArtifactError if it fails."""
    proc = subprocess.Popen([sys.executable, "-m", "rwkv_edge.cli", *argv], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    last, repeated = "", 0
    assert proc.stdout is not None
    for line in proc.stdout:
        if not line.strip():
            continue
        if _TIMESTAMP.sub("", line.strip()) == _TIMESTAMP.sub("", last):  # a warning per kernel, say
            repeated += 1
            continue
        if repeated:
            log(f"    (the line above {repeated} more times)")
        last, repeated = line.strip(), 0
        log(f"    {line.rstrip()}")
    if repeated:
        log(f"    (the line above {repeated} more times)")
    if proc.wait() != 0:
        raise ArtifactError(f"{what} failed (exit {proc.returncode}): {last.removeprefix('rwkv-edge: error: ')}")


# -- workers --------------------------------------------------------------------------------------
def _measure(backend: str, source: Path, options: BenchOptions, threads: int, log: Callable[[str], None]) -> BackendRun:
    where = f" on the GPU, {options.weights_of(backend)} weights" if options.device != "cpu" else ""
    log(f"{backend}: {options.warmup} + {options.steps} decode steps, prefill {options.prefill} tokens, "
        f"{threads} threads{where} ...")
    spec = {"backend": backend, "source": str(source), "threads": threads, "warmup": options.warmup,
            "steps": options.steps, "prefill": options.prefill, "prefill_repeats": options.prefill_repeats,
            "seed": options.seed, "device": options.device, "weights": options.weights_of(backend)}
    start = time.perf_counter()
    try:
        result = _run_worker("decode", spec, threads)
    except ArtifactError as e:
        log(f"{backend}: failed: {e}")
        return BackendRun(backend, "failed", str(e), str(source), threads)
    run = BackendRun(**result)
    log(f"{backend}: median {run.decode_ms['median']:.3f} ms/token, peak RSS {run.peak_rss_mib:.0f} MiB "
        f"({time.perf_counter() - start:.0f} s)")
    return run


def measure_bandwidth(buffer_bytes: int, repeats: int, threads: int, log: Callable[[str], None] = print) -> list[float]:
    """GB/s of ``repeats`` timed multithreaded reductions over a ``buffer_bytes`` buffer, in a subprocess."""
    log(f"read bandwidth: {repeats} x torch.amax over {buffer_bytes >> 20} MiB, {threads} threads ...")
    samples = _run_worker("bandwidth", {"bytes": buffer_bytes, "repeats": repeats, "threads": threads}, threads)
    log(f"read bandwidth: median {np.median(samples):.1f} GB/s")
    return samples


def measure_gpu_bandwidth(buffer_bytes: int, repeats: int, log: Callable[[str], None] = print) -> dict[str, Any]:
    """GPU memory in a subprocess: ``repeats`` timed torch.amax reductions over a ``buffer_bytes``
    buffer (read GB/s) and as many copies of one half of it to the other (GB/s read + written),
    each timed with CUDA events; and what the GPU is."""
    log(f"GPU bandwidth: {repeats} x torch.amax over {buffer_bytes >> 20} MiB, {repeats} copies of "
        f"{buffer_bytes >> 21} MiB ...")
    result = _run_worker("bandwidth", {"bytes": buffer_bytes, "repeats": repeats, "threads": 1, "device": "cuda"}, 1)
    log(f"GPU bandwidth: median {np.median(result['read_gb_s']):.1f} GB/s read, "
        f"{np.median(result['copy_gb_s']):.1f} GB/s copied (read + written), {result['gpu']['name']}")
    return result


def _run_worker(mode: str, spec: dict[str, Any], threads: int) -> Any:
    env = {**os.environ, **dict.fromkeys(THREAD_VARIABLES, str(threads))}
    with tempfile.TemporaryDirectory(prefix="rwkv-edge-bench-") as tmp:
        spec_path, out_path = Path(tmp) / "spec.json", Path(tmp) / "result.json"
        spec_path.write_text(json.dumps({**spec, "out": str(out_path)}))
        proc = subprocess.run([sys.executable, "-m", "rwkv_edge.runtime.bench", mode, str(spec_path)],
                              env=env, capture_output=True, text=True)
        if proc.returncode != 0 or not out_path.is_file():
            lines = [line for line in (proc.stderr + proc.stdout).strip().splitlines() if line.strip()]
            raise ArtifactError(f"worker exited with {proc.returncode}: {lines[-1].strip() if lines else 'no output'}")
        return json.loads(out_path.read_text())


def _rss_mib(field_name: str = "VmRSS") -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field_name + ":"):
            return int(line.split()[1]) / 1024
    return 0.0


def _decode_worker(spec: dict[str, Any]) -> dict[str, Any]:
    base_rss = _rss_mib()
    backend_name, threads = spec["backend"], spec["threads"]
    device, weights = spec.get("device", "cpu"), spec.get("weights", "fp32")
    start = time.perf_counter()
    backend = _open(backend_name, spec["source"], threads, device, weights)
    # on a GPU a step returns once its kernels are queued: every timed call waits for them
    sync = backend.sync if device != "cpu" and hasattr(backend, "sync") else None
    load_s = time.perf_counter() - start
    rng = np.random.default_rng(spec["seed"])
    tokens = rng.integers(0, backend.vocab_size, spec["warmup"] + spec["steps"]).tolist()
    prompt = rng.integers(0, backend.vocab_size, spec["prefill"]).tolist()

    state = backend.init_state()
    for token in tokens[:spec["warmup"]]:
        _, state = backend.step(token, state)
    if sync:
        sync()
    times = []
    gc.collect()
    gc.disable()
    try:
        for token in tokens[spec["warmup"]:]:
            t0 = time.perf_counter_ns()
            _, state = backend.step(token, state)
            if sync:
                sync()
            times.append((time.perf_counter_ns() - t0) / 1e6)
        prefill_s = []
        if prompt:
            backend.prefill(prompt, backend.init_state())  # untimed: first calls of a prefill graph allocate
            if sync:
                sync()
            for _ in range(spec["prefill_repeats"]):
                fresh = backend.init_state()
                t0 = time.perf_counter()
                backend.prefill(prompt, fresh)
                if sync:
                    sync()
                prefill_s.append(time.perf_counter() - t0)
    finally:
        gc.enable()
    ms = np.asarray(times)
    return {
        "backend": backend_name, "status": "ok", "source": spec["source"], "threads": threads, "load_s": load_s,
        "decode_ms": {"median": float(np.median(ms)), "p10": float(np.percentile(ms, 10)),
                      "p90": float(np.percentile(ms, 90)), "mean": float(ms.mean()), "min": float(ms.min()),
                      "max": float(ms.max())},
        "decode_steps": len(times), "prefill_tokens": len(prompt),
        "prefill_tok_s": len(prompt) / float(np.median(prefill_s)) if prefill_s else None, "prefill_s": prefill_s,
        "peak_rss_mib": _rss_mib("VmHWM"), "base_rss_mib": base_rss,
        "details": _details(backend_name, backend, device),
    }


def _open(backend: str, source: str, threads: int, device: str = "cpu", weights: str = "fp32"):
    """The backend, with ``threads`` intra-op threads (TVM reads TVM_NUM_THREADS, set by the parent);
    on ``device`` "cuda": PyTorch's model moved to the GPU in ``weights``, onnxruntime's CUDA provider,
    the TVM bundle where its manifest says (a CUDA bundle runs on the GPU)."""
    if backend == "onnxruntime":
        from .ort_backend import OrtBackend

        ort_backend = OrtBackend(source, threads=threads)
        if device == "cuda":
            _use_cuda_provider(ort_backend)
        return ort_backend
    if backend == "torch":
        import torch

        torch.set_num_threads(threads)
        if device != "cpu":
            from ..model import load_model
            from .backend import TorchBackend

            return TorchBackend(load_model(source, dtype={"fp32": torch.float32, "fp16": torch.float16}[weights]),
                                device=device)
    from .open import open_backend

    return open_backend(source, backend)


def _use_cuda_provider(backend) -> None:
    """Rebuild an OrtBackend's sessions on onnxruntime's CUDA provider (inputs and outputs still
    cross as numpy arrays, so every call copies the state to the GPU and back)."""
    import onnxruntime as ort

    options = backend.step_session.get_session_options()
    for attribute, role in (("step_session", "step"), ("prefill_session", "prefill")):
        if getattr(backend, attribute) is not None:
            path = backend.artifact.graph(role)
            setattr(backend, attribute, ort.InferenceSession(str(path), options, providers=["CUDAExecutionProvider"]))


def _details(name: str, backend, device: str = "cpu") -> dict[str, Any]:
    details: dict[str, Any] = {"prefill_chunk": getattr(backend, "chunk", 0)}
    module = {"torch": "torch", "onnxruntime": "onnxruntime", "tvm": "tvm"}[name]
    details[module] = getattr(sys.modules.get(module), "__version__", None)
    if name == "torch":
        import torch

        details["intra_op_threads"] = torch.get_num_threads()
        if device != "cpu":
            details["dtype"] = str(next(backend.model.parameters()).dtype).removeprefix("torch.")
            details["gpu"] = torch.cuda.get_device_name(0)
            details["gpu_peak_allocated_mib"] = torch.cuda.max_memory_allocated() / (1 << 20)
    if name == "onnxruntime":
        details["provider"] = backend.step_session.get_providers()[0] if device != "cpu" else "CPUExecutionProvider"
    if device != "cpu" and getattr(backend, "where", None):
        details["where"] = backend.where
    manifest = getattr(backend, "manifest", None)
    if manifest is not None:
        details["artifact_target"] = manifest.target
    return details


def _bandwidth_worker(spec: dict[str, Any]) -> list[float] | dict[str, Any]:
    if spec.get("device", "cpu") != "cpu":
        return _gpu_bandwidth_worker(spec)
    import torch

    torch.set_num_threads(spec["threads"])
    # written once, so every page is resident; distinct values, so no page can be shared (KSM, zero page)
    buffer = torch.arange(spec["bytes"] // 4, dtype=torch.float32)
    # torch.amax: a pure read with the least arithmetic per byte; torch.sum measured 15-35% lower
    # (41 vs 49 GB/s) on the same buffer, and a bound from a slow probe is no bound
    buffer.amax()
    samples = []
    for _ in range(spec["repeats"]):
        t0 = time.perf_counter()
        buffer.amax().item()
        samples.append(buffer.numel() * 4 / (time.perf_counter() - t0) / 1e9)
    return samples


def _gpu_bandwidth_worker(spec: dict[str, Any]) -> dict[str, Any]:
    import torch

    if not torch.cuda.is_available():
        raise OptionError(f"torch {torch.__version__} sees no CUDA GPU")
    n = spec["bytes"] // 4
    half = n // 2
    buffer = torch.arange(n, dtype=torch.float32, device="cuda")  # (n,): written once, every page resident
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)

    def seconds(work: Callable[[], Any]) -> float:
        start.record()
        work()
        end.record()
        end.synchronize()
        return start.elapsed_time(end) / 1e3

    def read() -> Any:
        return buffer.amax()

    def copy() -> Any:
        return buffer[half:2 * half].copy_(buffer[:half])

    read(), copy()  # warm-up: kernels loaded, clocks up
    reads = [n * 4 / seconds(read) / 1e9 for _ in range(spec["repeats"])]
    copies = [2 * half * 4 / seconds(copy) / 1e9 for _ in range(spec["repeats"])]
    props = torch.cuda.get_device_properties(0)
    gpu = {"name": props.name, "arch": f"sm_{props.major}{props.minor}", "memory_mib": props.total_memory / (1 << 20),
           "multiprocessors": props.multi_processor_count, "l2_mib": getattr(props, "L2_cache_size", 0) / (1 << 20),
           "torch_cuda": torch.version.cuda}
    return {"read_gb_s": reads, "copy_gb_s": copies, "gpu": gpu}


def _worker_main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(prog="python -m rwkv_edge.runtime.bench",
                                     description="one measurement of rwkv-edge bench, in its own process")
    parser.add_argument("mode", choices=["decode", "bandwidth"])
    parser.add_argument("spec", type=Path, help="JSON written by the parent; the result goes to its 'out'")
    args = parser.parse_args(argv)
    spec = json.loads(args.spec.read_text())
    try:
        result = _decode_worker(spec) if args.mode == "decode" else _bandwidth_worker(spec)
    except RwkvEdgeError as e:  # the parent reports the last line
        sys.exit(f"error: {e}")
    with atomic_path(spec["out"]) as tmp:
        tmp.write_text(json.dumps(result))


if __name__ == "__main__":
    _worker_main(sys.argv[1:])
