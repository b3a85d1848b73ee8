"""What a bench run is asked: its options, and the specs of the measurements its workers run."""

from __future__ import annotations

import os
from dataclasses import dataclass

from ..compile.tvm import PREFILL_CHUNK
from ..errors import OptionError
from ..runtime.registry import BACKENDS as REGISTRY
from ..weights import WEIGHT_FORMATS, weight_format

BACKENDS = tuple(e.name for e in REGISTRY.values() if e.bench)  # the backends with a bench row, in report order
DEFAULT_BACKENDS = tuple(e.name for e in REGISTRY.values() if e.bench and e.bench_default)  # without --backends
DEVICES = ("cpu", "cuda")
WEIGHTS = tuple(WEIGHT_FORMATS)  # the rows' weight format: fp16 on a GPU; int8/int4 on the CPU, where onnxruntime and
# TVM hold them (quantize.py, groups of 32) and torch runs fp32


@dataclass(frozen=True)
class BenchOptions:
    backends: tuple[str, ...] = DEFAULT_BACKENDS
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
        if self.device == "cpu" and weight_format(self.weights).compute.half:
            raise OptionError("fp16 weights run on a GPU only: add --device cuda "
                              "(on the CPU the rows hold fp32, int8 or int4 weights)")
        if self.device != "cpu" and weight_format(self.weights).quantized:
            raise OptionError(f"{self.weights} weights are benched on the CPU "
                              "(the bench runs GPU bundles with fp32 or fp16 weights)")
        if self.tvm_target is not None:
            check_target_device(self.tvm_target, self.device)

    def resolved_threads(self) -> int:
        return self.threads or len(os.sched_getaffinity(0))


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


@dataclass(frozen=True)
class DecodeSpec:
    backend: str  # runtime.registry name
    source: str  # the checkpoint (torch) or the artifact directory
    threads: int
    warmup: int
    steps: int
    prefill: int  # prompt tokens; 0: no prefill timing
    prefill_repeats: int
    seed: int
    device: str = "cpu"
    weights: str = "fp32"  # the torch row's dtype on a GPU


@dataclass(frozen=True)
class BandwidthSpec:
    bytes: int
    repeats: int
    threads: int
    device: str = "cpu"
