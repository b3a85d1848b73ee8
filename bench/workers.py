"""The bench's measurements, each in a process of its own: one backend's decode and prefill timings
(so that the peak RSS is that backend's alone), the machine's read bandwidth.

Each runs in a fresh interpreter (multiprocessing's spawn) with its thread count set before any
numerical library loads; its spec is a dataclass and its result comes back through a pipe.
Nothing here imports torch, TVM or onnxruntime at module level: the child imports what its
backend needs.
"""

from __future__ import annotations

import dataclasses
import gc
import multiprocessing
import os
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import ArtifactError, OptionError, one_line
from .options import BandwidthSpec, DecodeSpec
from .rows import bench_row

THREAD_VARIABLES = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "TVM_NUM_THREADS")
STREAM_BLOCK = 64 * 4096 * 4  # bytes a bandwidth thread reads per call: a GEMV tile, 64 rows of K = 4096 fp32


def in_own_process(work: Callable[[Any], Any], spec: Any, threads: int) -> Any:
    """``work(spec)`` in a fresh interpreter with ``threads`` threads; ArtifactError with its last words
    when it fails or dies."""
    context = multiprocessing.get_context("spawn")
    receive, send = context.Pipe(duplex=False)
    process = context.Process(target=_child, args=(work, spec, threads, send), daemon=True)
    process.start()
    send.close()
    try:
        status, value = receive.recv()
    except EOFError:  # it died without a word: a crash in native code, or killed
        status, value = "error", "no result (the worker died)"
    process.join()
    if status != "ok":
        raise ArtifactError(f"worker exited with {process.exitcode}: {value}")
    return value


def _child(work: Callable[[Any], Any], spec: Any, threads: int, send) -> None:
    os.environ.update(dict.fromkeys(THREAD_VARIABLES, str(threads)))
    try:
        send.send(("ok", work(spec)))
    except BaseException as e:  # noqa: BLE001 -- reported to the parent, one line
        send.send(("error", f"{type(e).__name__}: {one_line(e)}"))
    finally:
        send.close()


def decode(spec: DecodeSpec) -> dict[str, Any]:
    """Decode ``spec.warmup`` + ``spec.steps`` tokens and prefill ``spec.prefill`` tokens on one backend."""
    if bench_row(spec.backend).program:
        return program_decode(spec)
    base_rss = _rss_mib()
    start = time.perf_counter()
    backend = _open(spec)
    # on a GPU a step returns once its kernels are queued: every timed call waits for them
    sync = backend.sync if spec.device != "cpu" and hasattr(backend, "sync") else None
    load_s = time.perf_counter() - start
    rng = np.random.default_rng(spec.seed)
    tokens = rng.integers(0, backend.vocab_size, spec.warmup + spec.steps).tolist()
    prompt = rng.integers(0, backend.vocab_size, spec.prefill).tolist()

    state = backend.init_state()
    for token in tokens[:spec.warmup]:
        _, state = backend.step(token, state)
    if sync:
        sync()
    times, prefill_s = [], []
    gc.collect()
    gc.disable()
    try:
        for token in tokens[spec.warmup:]:
            t0 = time.perf_counter_ns()
            _, state = backend.step(token, state)
            if sync:
                sync()
            times.append((time.perf_counter_ns() - t0) / 1e6)
        steady_rss = _rss_mib()
        if prompt:
            backend.prefill(prompt, backend.init_state())  # untimed: first calls of a prefill graph allocate
            if sync:
                sync()
            for _ in range(spec.prefill_repeats):
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
        "backend": spec.backend, "status": "ok", "source": spec.source, "threads": spec.threads, "load_s": load_s,
        "decode_ms": {"median": float(np.median(ms)), "p10": float(np.percentile(ms, 10)),
                      "p90": float(np.percentile(ms, 90)), "mean": float(ms.mean()), "min": float(ms.min()),
                      "max": float(ms.max())},
        "decode_steps": len(times), "prefill_tokens": len(prompt),
        "prefill_tok_s": len(prompt) / float(np.median(prefill_s)) if prefill_s else None, "prefill_s": prefill_s,
        "peak_rss_mib": _rss_mib("VmHWM"), "base_rss_mib": base_rss, "steady_rss_mib": steady_rss,
        "details": _details(spec, backend),
    }


def program_decode(spec: DecodeSpec) -> dict[str, Any]:
    """``decode`` for a row measured by a program of its own (the native runner): one run steps a token and
    then ``warmup + steps`` greedy decode steps (``--repeat``), each call of the model timed by the program;
    each prefill repeat is one more run (``--prefill``), timed over its calls. The peak RSS is the decode
    run's as the program reports it (its VmHWM: the program alone, no Python), its load time the run's wall
    time less its calls."""
    import tempfile

    from ..artifact import open_artifact

    row = bench_row(spec.backend)
    runner = row.runner()
    manifest = open_artifact(spec.source, kind="tvm").manifest
    vocab_size = manifest.vocab_size
    rng = np.random.default_rng(spec.seed)
    first = int(rng.integers(0, vocab_size))
    prompt = rng.integers(0, vocab_size, spec.prefill).tolist()
    with tempfile.TemporaryDirectory(prefix="rwkv-edge-bench-") as tmp:
        def run(*args: str) -> tuple[np.ndarray, float, float]:
            """(each call's ms, the run's wall seconds, its peak RSS in MiB)."""
            t0 = time.perf_counter()
            done = subprocess.run([str(runner), spec.source, "--out", tmp, *args], capture_output=True, text=True)
            if done.returncode != 0:
                raise ArtifactError(f"{runner.name} failed (exit {done.returncode}): "
                                    f"{one_line(done.stderr.strip() or done.stdout.strip())}")
            peak = next(float(line.split()[2]) for line in done.stdout.splitlines() if line.startswith("peak RSS:"))
            return np.load(Path(tmp) / "step_ms.npy"), time.perf_counter() - t0, peak

        calls, wall, peak = run("--tokens", str(first), "--repeat", str(spec.warmup + spec.steps))
        ms = calls[1 + spec.warmup:]
        prefill_s = [float(run("--prefill", "--tokens", ",".join(map(str, prompt)))[0].sum()) / 1e3
                     for _ in range(spec.prefill_repeats)] if prompt else []
    return {
        "backend": spec.backend, "status": "ok", "source": spec.source, "threads": spec.threads,
        "load_s": wall - calls.sum() / 1e3,
        "decode_ms": {"median": float(np.median(ms)), "p10": float(np.percentile(ms, 10)),
                      "p90": float(np.percentile(ms, 90)), "mean": float(ms.mean()), "min": float(ms.min()),
                      "max": float(ms.max())},
        "decode_steps": len(ms), "prefill_tokens": len(prompt),
        "prefill_tok_s": len(prompt) / float(np.median(prefill_s)) if prefill_s else None, "prefill_s": prefill_s,
        "peak_rss_mib": peak, "base_rss_mib": 0.0, "steady_rss_mib": peak,
        "details": {"program": str(runner), "prefill_chunk": manifest.graphs["prefill"].chunk
                    if "prefill" in manifest.graphs else 0,
                    "measured": "the program's own calls of the model; its VmHWM as peak and steady RSS (it "
                    "reports no other), no base (no interpreter, no imports)"},
    }


def _open(spec: DecodeSpec):
    """The backend, opened by its row (bench/rows.py) with ``spec.threads`` intra-op threads (TVM reads
    TVM_NUM_THREADS); on ``cuda`` where the row runs it on the GPU."""
    return bench_row(spec.backend).open(spec)


def _details(spec: DecodeSpec, backend) -> dict[str, Any]:
    import sys

    row = bench_row(spec.backend)
    details: dict[str, Any] = {"prefill_chunk": getattr(backend, "chunk", 0)}
    details[row.module] = getattr(sys.modules.get(row.module), "__version__", None)
    details.update(row.details(spec, backend))
    if spec.device != "cpu" and getattr(backend, "where", None):
        details["where"] = backend.where
    manifest = getattr(backend, "manifest", None)
    if manifest is not None:
        details["artifact_target"] = dataclasses.asdict(manifest.target) if manifest.target else None
    return details


def bandwidth(spec: BandwidthSpec) -> list[float] | dict[str, Any]:
    """GB/s of ``spec.repeats`` timed reads of a buffer of ``spec.bytes`` (on a GPU: also copies). On
    the CPU, as a decode step's GEMV reads its weights: ``spec.threads`` threads, each streaming its own
    contiguous part, block by block (``_stream``); a sample is the bytes over the time until the last
    thread is done."""
    if spec.device != "cpu":
        return _gpu_bandwidth(spec)
    from concurrent.futures import ThreadPoolExecutor

    # written once, so every page is resident; distinct values, so no page can be shared (KSM, zero page)
    words = np.arange(spec.bytes // 8, dtype=np.uint64)
    parts = np.array_split(words, spec.threads)
    with ThreadPoolExecutor(spec.threads) as pool:
        def read() -> float:
            t0 = time.perf_counter()
            list(pool.map(_stream, parts))
            return words.nbytes / (time.perf_counter() - t0) / 1e9

        read()  # untimed: the pool's threads start
        return [read() for _ in range(spec.repeats)]


def _stream(part: np.ndarray) -> None:
    """Read ``part`` from start to end in STREAM_BLOCK-byte blocks. numpy's reductions let go of the GIL,
    so the threads read in parallel; a bitwise or has the least arithmetic per byte (numpy's max and
    float sum measured the same or slower)."""
    step = STREAM_BLOCK // part.itemsize
    for start in range(0, part.size, step):
        np.bitwise_or.reduce(part[start:start + step])


def _gpu_bandwidth(spec: BandwidthSpec) -> dict[str, Any]:
    import torch

    if not torch.cuda.is_available():
        raise OptionError(f"torch {torch.__version__} sees no CUDA GPU")
    n = spec.bytes // 4
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
    reads = [n * 4 / seconds(read) / 1e9 for _ in range(spec.repeats)]
    copies = [2 * half * 4 / seconds(copy) / 1e9 for _ in range(spec.repeats)]
    props = torch.cuda.get_device_properties(0)
    gpu = {"name": props.name, "arch": f"sm_{props.major}{props.minor}", "memory_mib": props.total_memory / (1 << 20),
           "multiprocessors": props.multi_processor_count, "l2_mib": getattr(props, "L2_cache_size", 0) / (1 << 20),
           "torch_cuda": torch.version.cuda}
    return {"read_gb_s": reads, "copy_gb_s": copies, "gpu": gpu}


def _rss_mib(field_name: str = "VmRSS") -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field_name + ":"):
            return int(line.split()[1]) / 1024
    return 0.0
