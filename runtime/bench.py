"""``rwkv-edge bench``: decode latency, prefill speed and memory of each backend, against the
memory-bandwidth bound of the machine it runs on.

A decode step of an RWKV model reads every weight once (the embedding: one row) and does about
two flops per weight read, so on a CPU its speed is set by how fast memory delivers the weights.
The bound is ``weight bytes per token / read bandwidth``, both measured in the same run.

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
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from ..atomic import atomic_path
from ..errors import ArtifactError, OptionError, RwkvEdgeError
from ..manifest import check_hashes, read_manifest, sha256_file
from ..model import ARCHITECTURES, DEMO_CHECKPOINT, detect_version
from ..model.base import n_layers
from ..model.checkpoint import StateDict, read_checkpoint

SCHEMA = "rwkv-edge.bench/1"
BACKENDS = ("torch", "onnxruntime", "tvm")  # in the order a run reports them
ARTIFACT_KINDS = {"onnxruntime": "onnx", "tvm": "tvm"}  # the manifest kind each backend runs
BYTES_PER_VALUE = 4  # every backend computes in fp32 here
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
    tvm_target: str = "x86_64-host"
    rebuild: bool = False  # export / compile again even when the cached artifact matches
    seed: int = 0  # the token ids fed to every backend

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

    def resolved_threads(self) -> int:
        return self.threads or len(os.sched_getaffinity(0))


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
    vs_bound: float | None = None  # median decode latency / bound
    vs_onnxruntime: float | None = None  # median decode latency / onnxruntime's

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
        """The run as text: the machine, the bound, one row per backend."""
        m, w, bw, o = self.machine, self.weights, self.bandwidth, self.options
        lines = [
            f"model     {self.model['label']}: {self.model['n_layer']} layers x {self.model['n_embd']}, "
            f"vocab {self.model['vocab_size']}, {self.model['parameters']:,} parameters ({self.model['checkpoint']})",
            f"machine   {m['cpu']}, {m['physical_cores']} cores / {m['logical_cpus']} logical CPUs, "
            f"{m['threads']} threads per backend; load average {m['load_average_start'][0]:.2f} at start, "
            f"{m['load_average_end'][0]:.2f} at end",
            f"weights   {w['bytes_per_token'] / 1e6:.2f} MB read per decode token ({w['precision']}, "
            f"embedding: one row)" + (f"; they fit in the {m['last_level_cache_mib']:.0f} MiB last-level cache, "
                                      "so the DRAM bound need not bind" if w["fits_in_cache"] else ""),
            f"bandwidth {bw['gb_s']:.1f} GB/s read (median of {len(bw['samples_gb_s'])}: {bw['method']}; "
            f"range {min(bw['samples_gb_s']):.1f}-{max(bw['samples_gb_s']):.1f})",
            f"bound     {self.bound_ms:.3f} ms/token = {1e3 / self.bound_ms:.0f} tokens/s",
            f"decode    {o['warmup']} warm-up + {o['steps']} timed steps; prefill {o['prefill']} tokens, "
            f"median of {o['prefill_repeats']} calls",
            "prefill   " + "; ".join(f"{r.backend}: {_prefill_mode(r)}" for r in self.runs if r.ok),
            *([f"busy      the machine was busy before the run (load average {m['load_average_start'][0]:.2f} on "
               f"{m['usable_cpus']} CPUs): the figures include contention"] if self.busy else []),
            "",
            f"{'backend':<12} {'decode ms/token':>15} {'p10-p90':>17} {'x bound':>8} {'x ORT':>6} "
            f"{'prefill tok/s':>13} {'peak RSS MiB':>12} {'(base)':>7}",
        ]
        for r in self.runs:
            if not r.ok:
                lines.append(f"{r.backend:<12} {r.status}: {r.reason}")
                continue
            d = r.decode_ms
            prefill = f"{r.prefill_tok_s:13.0f}" if r.prefill_tok_s is not None else f"{'-':>13}"
            vs_ort = f"{r.vs_onnxruntime:6.2f}" if r.vs_onnxruntime is not None else f"{'-':>6}"
            lines.append(f"{r.backend:<12} {d['median']:15.3f} {_span(d['p10'], d['p90']):>17} {r.vs_bound:8.2f} "
                         f"{vs_ort} {prefill} {r.peak_rss_mib:12.0f} {f'({r.base_rss_mib:.0f})':>7}")
        return "\n".join(lines)


def _prefill_mode(run: BackendRun) -> str:
    if run.backend == "torch":
        return "the whole prompt per forward call"
    chunk = run.details.get("prefill_chunk", 0)
    return f"{chunk}-token prefill graph calls" if chunk else "one step per token"


def _span(lo: float, hi: float) -> str:
    return f"{lo:.3f}-{hi:.3f}"


# -- the memory-bandwidth bound -------------------------------------------------------------------
def weight_bytes_per_token(tensors: StateDict, bytes_per_value: int = BYTES_PER_VALUE) -> int:
    """Bytes of weights one decode step reads: every tensor the model uses once, except the
    embedding, of which one row (the token's)."""
    unused = set(ARCHITECTURES[detect_version(tensors)].model_class.unused_keys)
    values = sum(t.shape[-1] if name == "emb.weight" else t.numel()
                 for name, t in tensors.items() if name not in unused)
    return values * bytes_per_value


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
    None for the demo model). Exports and compiles go to ``work`` (default: ~/.cache/rwkv-edge/bench)."""
    start, started = time.perf_counter(), datetime.now(timezone.utc).isoformat(timespec="seconds")
    threads = options.resolved_threads()
    machine = machine_info(threads)
    checkpoint, given = _resolve_source(source, options)
    tensors = read_checkpoint(checkpoint)
    sha = sha256_file(checkpoint)
    model = _model_info(checkpoint, sha, tensors)
    weights = {"bytes_per_token": weight_bytes_per_token(tensors), "precision": "fp32",
               "bytes_per_value": BYTES_PER_VALUE}
    weights["fits_in_cache"] = weights["bytes_per_token"] <= machine["last_level_cache_mib"] * (1 << 20)
    del tensors
    log(f"bench {checkpoint}: {model['label']} {model['n_layer']} x {model['n_embd']}, "
        f"backends {', '.join(options.backends)}, {threads} threads")

    work = Path(work) if work is not None else default_work_dir()
    sources, runs, preparation = {}, {}, {}
    for backend in options.backends:
        if backend == "torch":
            sources[backend] = checkpoint
            continue
        try:
            sources[backend] = given.get(backend) or _prepare(backend, checkpoint, sha, options, work, log, preparation,
                                                              onnx=sources.get("onnxruntime"))
        except _Unavailable as e:
            runs[backend] = BackendRun(backend, "unavailable", str(e), threads=threads)
            log(f"{backend}: unavailable: {e}")
        except ArtifactError as e:
            runs[backend] = BackendRun(backend, "failed", str(e), threads=threads)
            log(f"{backend}: failed: {e}")

    buffer = (options.bandwidth_mib << 20) if options.bandwidth_mib else bandwidth_buffer_bytes()
    samples = measure_bandwidth(buffer, options.bandwidth_repeats, threads, log)
    for backend in options.backends:
        if backend not in runs:
            runs[backend] = _measure(backend, sources[backend], options, threads, log)
    samples += measure_bandwidth(buffer, options.bandwidth_repeats, threads, log)
    gb_s = float(np.median(samples))
    bandwidth = {"gb_s": gb_s, "samples_gb_s": samples, "buffer_mib": buffer >> 20,
                 "method": f"torch.amax over {buffer >> 20} MiB of fp32, {threads} threads, before and after the backends"}
    bound = bound_ms(weights["bytes_per_token"], gb_s)

    ordered = [runs[b] for b in options.backends]
    reference = runs.get("onnxruntime")
    for r in ordered:
        if r.ok:
            r.vs_bound = r.decode_ms["median"] / bound
            if reference is not None and reference.ok:
                r.vs_onnxruntime = r.decode_ms["median"] / reference.decode_ms["median"]
    machine["load_average_end"] = list(os.getloadavg())
    return BenchReport(machine, model, {**asdict(options), "backends": list(options.backends), "threads": threads}, weights, bandwidth, bound, ordered,
                       preparation, started, time.perf_counter() - start)


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


def _resolve_source(source: str | Path | None, options: BenchOptions) -> tuple[Path, dict[str, Path]]:
    """(checkpoint, {backend: artifact directory given by the user})."""
    if source is None:
        return DEMO_CHECKPOINT, {}
    source = Path(source)
    if not source.is_dir():
        return source, {}
    manifest = read_manifest(source)
    backend = next((b for b, kind in ARTIFACT_KINDS.items() if kind == manifest.kind), None)
    if backend is None:
        raise OptionError(f"{source}: a {manifest.kind} artifact; bench runs {', '.join(ARTIFACT_KINDS.values())} "
                          "artifacts, or a checkpoint")
    if manifest.precision != "fp32":
        raise OptionError(f"{source}: a {manifest.precision} artifact; bench compares backends at fp32 "
                          "(export or compile with --precision fp32)")
    check_hashes(manifest, source)
    checkpoint = Path(manifest.source["checkpoint"])
    if not checkpoint.is_file():
        raise ArtifactError(f"{source}: its source checkpoint {checkpoint} is gone; bench needs it for torch and the bound")
    if sha256_file(checkpoint) != manifest.source["sha256"]:
        raise ArtifactError(f"{checkpoint} is not the checkpoint {source} was made from (sha256 differs)")
    return checkpoint, {backend: source} if backend in options.backends else {}


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
    there. TVM compiles the ONNX export ``onnx`` where this run has one (the same graph, exported once)."""
    if backend == "tvm" and (why := tvm_unavailable(options.tvm_target)):
        raise _Unavailable(why)
    out = work / f"{checkpoint.stem}-{sha[:12]}"
    if backend == "onnxruntime":
        out /= f"onnx-fp32-prefill{options.onnx_prefill_chunk}"
        what, argv = "export onnx", ["export", "onnx", str(checkpoint), "-o", str(out),
                                     "--prefill-chunk", str(options.onnx_prefill_chunk)]
    else:
        out /= f"tvm-{options.tvm_target}"
        what, argv = f"compile {options.tvm_target}", ["compile", str(onnx or checkpoint), "--target",
                                                       options.tvm_target, "-o", str(out)]
    if not options.rebuild and _cached(backend, out, sha, options):
        log(f"{backend}: reusing {out} (same checkpoint sha256, files match its manifest; --rebuild to redo)")
        preparation[backend] = {"artifact": str(out), "reused": True}
        return out
    log(f"{backend}: {what} -> {out}")
    start = time.perf_counter()
    _run_cli(argv, what, log)
    preparation[backend] = {"artifact": str(out), "reused": False, "seconds": time.perf_counter() - start}
    return out


def _cached(backend: str, out: Path, sha: str, options: BenchOptions) -> bool:
    """Whether ``out`` holds an intact fp32 artifact of the checkpoint with this sha256, made as asked."""
    try:
        manifest = read_manifest(out)
        made_as_asked = manifest.kind == ARTIFACT_KINDS[backend] and manifest.precision == "fp32" and (
            manifest.graphs.get("prefill", {}).get("chunk", 0) == options.onnx_prefill_chunk
            if backend == "onnxruntime" else (manifest.target or {}).get("name") == options.tvm_target)
        if manifest.source.get("sha256") != sha or not made_as_asked:
            return False
        check_hashes(manifest, out)
    except (ArtifactError, KeyError, AttributeError):
        return False
    return True


def tvm_unavailable(target: str) -> str | None:
    """Why the TVM row cannot run in this build, or None."""
    import importlib.util

    from . import open as opener

    if "tvm" not in opener.BACKENDS or importlib.util.find_spec("rwkv_edge.runtime.tvm_backend") is None:
        return "this build has no TVM backend (rwkv_edge.runtime.tvm_backend)"
    if importlib.util.find_spec("tvm") is None:
        return "apache-tvm is not installed"
    from ..targets import TARGETS

    if target not in TARGETS:
        return f"no target {target!r} in this build"
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
    log(f"{backend}: {options.warmup} + {options.steps} decode steps, prefill {options.prefill} tokens, {threads} threads ...")
    spec = {"backend": backend, "source": str(source), "threads": threads, "warmup": options.warmup,
            "steps": options.steps, "prefill": options.prefill, "prefill_repeats": options.prefill_repeats,
            "seed": options.seed}
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
    start = time.perf_counter()
    backend = _open(backend_name, spec["source"], threads)
    load_s = time.perf_counter() - start
    rng = np.random.default_rng(spec["seed"])
    tokens = rng.integers(0, backend.vocab_size, spec["warmup"] + spec["steps"]).tolist()
    prompt = rng.integers(0, backend.vocab_size, spec["prefill"]).tolist()

    state = backend.init_state()
    for token in tokens[:spec["warmup"]]:
        _, state = backend.step(token, state)
    times = []
    gc.collect()
    gc.disable()
    try:
        for token in tokens[spec["warmup"]:]:
            t0 = time.perf_counter_ns()
            _, state = backend.step(token, state)
            times.append((time.perf_counter_ns() - t0) / 1e6)
        prefill_s = []
        if prompt:
            backend.prefill(prompt, backend.init_state())  # untimed: first calls of a prefill graph allocate
            for _ in range(spec["prefill_repeats"]):
                fresh = backend.init_state()
                t0 = time.perf_counter()
                backend.prefill(prompt, fresh)
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
        "peak_rss_mib": _rss_mib("VmHWM"), "base_rss_mib": base_rss, "details": _details(backend_name, backend),
    }


def _open(backend: str, source: str, threads: int):
    """The backend, with ``threads`` intra-op threads (TVM reads TVM_NUM_THREADS, set by the parent)."""
    if backend == "onnxruntime":
        from .ort_backend import OrtBackend

        return OrtBackend(source, threads=threads)
    if backend == "torch":
        import torch

        torch.set_num_threads(threads)
    from .open import open_backend

    return open_backend(source, backend)


def _details(name: str, backend) -> dict[str, Any]:
    details: dict[str, Any] = {"prefill_chunk": getattr(backend, "chunk", 0)}
    module = {"torch": "torch", "onnxruntime": "onnxruntime", "tvm": "tvm"}[name]
    details[module] = getattr(sys.modules.get(module), "__version__", None)
    if name == "torch":
        import torch

        details["intra_op_threads"] = torch.get_num_threads()
    if name == "onnxruntime":
        details["provider"] = "CPUExecutionProvider"
    manifest = getattr(backend, "manifest", None)
    if manifest is not None:
        details["artifact_target"] = manifest.target
    return details


def _bandwidth_worker(spec: dict[str, Any]) -> list[float]:
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
