"""What a bench run measured: one row per backend and the run's report, as a table and as JSON."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from ..atomic import atomic_path
from ..errors import OptionError
from ..weights import FP32, compute_precision, weight_format
from .options import BACKENDS
from .peer import PeerRun, table as peer_table
from .rows import bench_row

SCHEMA = "rwkv-edge.bench/1"


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
    steady_rss_mib: float = 0.0  # its resident set after the timed decode steps (mapped weights included)
    details: dict[str, Any] = field(default_factory=dict)  # versions, prefill chunk, ...
    vs_bound: float | None = None  # median decode latency / this row's bound
    vs_onnxruntime: float | None = None  # median decode latency / onnxruntime's
    weights: str = "fp32"  # the format its weights are stored in (fp16: GPU rows only)
    compute: str = "fp32"  # what its projections compute in (int8: a TVM bundle's integer dot products)
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
    peer: list[PeerRun] = field(default_factory=list)  # llama.cpp beside our rows (bench/peer.py), when asked for

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
        return cls(**{**fields, "runs": [BackendRun(**r) for r in fields["runs"]],
                      "peer": [PeerRun(**r) for r in fields.get("peer", [])]})

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
            *(["compute   " + "; ".join(f"{r.backend}: {r.compute}" for r in self.runs if r.ok)
               + " (int8: activations rounded per group, integer dot products)"]
              if any(compute_precision(r.compute) != FP32 for r in self.runs) else []),
            *([f"busy      the machine was busy before the run (load average {m['load_average_start'][0]:.2f} on "
               f"{m['usable_cpus']} CPUs): the figures include contention"] if self.busy else []),
            "",
        ]
        if gpu:
            lines.append(f"{'backend':<12} {'weights':>7} {'decode ms/token':>15} {'p10-p90':>17} {'x bound':>8} "
                         f"{'x torch':>7} {'prefill tok/s':>13} {'peak RSS MiB':>12} {'steady':>7} {'(base)':>7}")
        else:
            lines.append(f"{'backend':<12} {'decode ms/token':>15} {'p10-p90':>17} {'x bound':>8} {'x ORT':>6} "
                         f"{'prefill tok/s':>13} {'peak RSS MiB':>12} {'steady':>7} {'(base)':>7}")
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
                             f"{r.steady_rss_mib:7.0f} {f'({r.base_rss_mib:.0f})':>7}")
                continue
            vs_ort = f"{r.vs_onnxruntime:6.2f}" if r.vs_onnxruntime is not None else f"{'-':>6}"
            lines.append(f"{r.backend:<12} {d['median']:15.3f} {_span(d['p10'], d['p90']):>17} {r.vs_bound:8.2f} "
                         f"{vs_ort} {prefill} {r.peak_rss_mib:12.0f} {r.steady_rss_mib:7.0f} "
                         f"{f'({r.base_rss_mib:.0f})':>7}")
        return "\n".join(lines + peer_table(self.peer))


def _layout(backend: str, weights: str) -> str:
    """How a row stores its weights, in words."""
    if weight_format(weights).full_precision:
        return f"every weight {weights}"
    if bench_row(backend).every_weight:
        return f"every weight {weights}"
    return f"GEMV weights {weights}, the rest fp32"


def _prefill_mode(run: BackendRun) -> str:
    chunk = run.details.get("prefill_chunk", 0)
    return bench_row(run.backend).prefill or (f"{chunk}-token prefill graph calls" if chunk else "one step per token")


def _span(lo: float, hi: float) -> str:
    return f"{lo:.3f}-{hi:.3f}"


def save_report(report: BenchReport, path: str | Path) -> Path:
    path = Path(path)
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(report.to_json(), indent=2) + "\n")
    return path
