"""TVM GPU targets: CUDA (desktop/server GPUs, Jetson) and Metal (Apple GPUs), each with its host.

A GPU bundle holds host code for the machine that drives the GPU (x86-64 or aarch64 Linux, an
Apple arm64 Mac or iPhone) and device code: a CUDA fatbin (cubin for the target's arch plus PTX
that newer GPUs JIT) or Metal Shading Language source that the Mac compiles when it loads the
library. Everything builds on Linux without a GPU; what runs where is recorded in the manifest.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ..platforms import gpu_unavailable

# Threads and shared memory of one block for the kernels dlight schedules; the WKV rules use one block per head.
GPU_THREADS = {"cuda": 1024, "metal": 256}
SHARED_MEMORY = {"cuda": 49152, "metal": 32768}


@dataclass(frozen=True)
class GpuTarget:
    """A GPU for ``rwkv-edge compile --target``: the decode step's kernels on the GPU, weights in params.safetensors."""

    name: str
    description: str
    device: str  # "cuda" | "metal"
    arch: str | None  # CUDA: "sm_80"...; Metal: None
    triple: str  # the host's LLVM triple: what model.so (or model.tar's objects) is built for
    mcpu: str | None = None
    cross_compiler: str | None = None  # links model.so; None: the host's cc (or no link at all, see ``linkable``)
    cross_package: str | None = None
    link_note: str | None = None  # how the library is finished where no Linux linker can make it
    weight_formats: tuple[str, ...] = ("fp32", "fp16", "int8", "int4")  # all summed in fp32
    kind: str = field(default="tvm")  # the compiler family (compile.COMPILERS)

    @property
    def linkable(self) -> bool:
        """Whether model.so can be linked on Linux (a Mach-O library cannot: Apple bundles ship model.tar)."""
        return "apple" not in self.triple

    @property
    def qemu_cpu(self) -> None:
        return None  # a GPU bundle cannot run under an emulator

    def tvm_target(self) -> dict[str, Any]:
        host: dict[str, Any] = {"kind": "llvm", "mtriple": self.triple}
        if self.mcpu:
            host["mcpu"] = self.mcpu
        device: dict[str, Any] = {"kind": self.device, "max_num_threads": GPU_THREADS[self.device],
                                  "max_shared_memory_per_block": SHARED_MEMORY[self.device]}
        if self.arch:
            device["arch"] = self.arch
        return {**device, "host": host}

    def schedule_data(self) -> dict[str, Any]:
        return {"params": {"max_threads_per_block": GPU_THREADS[self.device]},
                "source": "rules, not tuning: rwkv-edge WKV per-head rule, then TVM dlight GEMV/Reduction/"
                          "GeneralReduction/Fallback (compile/tvm/gpu_schedules.py)"}

    def runs_here(self) -> bool:
        """Whether this machine can run the bundle: a CUDA GPU new enough, or a Mac for Metal."""
        return gpu_unavailable(self.device, self.arch, self.triple) is None

    def settings(self) -> dict[str, str]:
        settings = {"backend": "TVM (ONNX -> Relax, GPU schedules)", "description": self.description,
                    "device": f"{self.device} {self.arch}" if self.arch else self.device,
                    "host": f"{self.triple}" + (f" ({self.mcpu})" if self.mcpu else ""),
                    "weights": " or ".join(self.weight_formats) + " (fp32 compute and state)",
                    "device code": "CUDA fatbin (cubin + PTX, nvcc)" if self.device == "cuda"
                                   else "Metal Shading Language source (compiled on the Apple device)",
                    "linker": self.cross_compiler or ("host cc" if self.linkable else "none on Linux: model.tar"),
                    "schedules": "WKV per-head rule + dlight GPU rules"}
        if self.link_note:
            settings["note"] = self.link_note
        return settings


_NOTE_APPLE = ("no Mach-O linker on Linux: the bundle holds model.tar (host objects + the Metal library's source); "
               "on the Mac: `tar xf model.tar && clang -shared -o model.so *.o` (docs/tvm-gpu.md)")

GPU_TARGETS = {
    "cuda-sm80": GpuTarget("cuda-sm80", "NVIDIA Ampere (A100, A30), x86-64 Linux host", "cuda", "sm_80",
                           "x86_64-linux-gnu"),
    "cuda-sm89": GpuTarget("cuda-sm89", "NVIDIA Ada (L4, L40S, RTX 40xx), x86-64 Linux host", "cuda", "sm_89",
                           "x86_64-linux-gnu"),
    "cuda-sm90": GpuTarget("cuda-sm90", "NVIDIA Hopper (H100, H200), x86-64 Linux host", "cuda", "sm_90",
                           "x86_64-linux-gnu"),
    "jetson-orin": GpuTarget("jetson-orin", "NVIDIA Jetson AGX Orin / Orin NX / Orin Nano (sm_87, Cortex-A78AE, "
                             "JetPack 6+ with CUDA 13)", "cuda", "sm_87", "aarch64-linux-gnu", mcpu="cortex-a78ae",
                             cross_compiler="aarch64-linux-gnu-gcc", cross_package="gcc-aarch64-linux-gnu"),
    "apple-m-metal": GpuTarget("apple-m-metal", "Apple silicon Macs (M1 and later), Metal, macOS arm64 host",
                               "metal", None, "arm64-apple-macos", mcpu="apple-m1", link_note=_NOTE_APPLE),
    "ios-metal": GpuTarget("ios-metal", "iPhone / iPad (A14 and later), Metal, iOS arm64 host", "metal", None,
                           "arm64-apple-ios", mcpu="apple-a14", link_note=_NOTE_APPLE.replace(
                               "`tar xf model.tar && clang -shared -o model.so *.o`",
                               "link the objects into the app (Xcode) or a framework")),
}
