"""TVM CPU targets: the LLVM target, the cross-compiler, the core to emulate, the tuned schedule data.

The schedule data of each target lives in ``targets/tuned/NAME.json`` (GEMV tile width, K unroll,
vector width; int8/int4 bundles under their format's key where their timings chose other values),
written by ``scripts/tune_schedules.py``: measured on the host for ``x86_64-host``,
derived from the core's vector registers for the ARM targets (no ARM hardware was timed; emulated
timings say nothing about ARM speed).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..platforms import host_triple
from ..weights import quantized_formats

TUNED = Path(__file__).parent / "tuned"


@dataclass(frozen=True)
class TvmTarget:
    """A CPU for ``rwkv-edge compile --target``: TVM compiles the ONNX step with the project's schedules."""

    name: str
    description: str
    triple: str  # LLVM target triple; also what the bundle's model.so runs on
    mcpu: str | None  # None: the build machine's own CPU (native)
    mattr: tuple[str, ...] = ()
    cores: int | None = None  # threads the schedules plan for; None: this machine's
    cross_compiler: str | None = None  # links model.so; None: the host's cc
    cross_package: str | None = None  # the Debian package that provides it
    qemu_cpu: str | None = None  # the oldest core of the family, for -cpu under qemu-aarch64
    link_note: str | None = None  # what a final link needs beyond this machine
    weight_formats: tuple[str, ...] = ("fp32", "int8", "int4")  # what --weights may be
    # int8/int4 weights compute in int8 where dot_product() names an instruction (--compute), else fp32
    kind: str = field(default="tvm")  # the compiler family (compile.COMPILERS)

    def tvm_target(self) -> dict[str, Any]:
        """The TVM target as a JSON dict (TVM 0.27 takes no CLI strings)."""
        target: dict[str, Any] = {"kind": "llvm", "mtriple": self.triple, "mcpu": self.mcpu or host_cpu(),
                                  "num-cores": self.cores or os.cpu_count() or 1}
        if self.mattr:
            target["mattr"] = list(self.mattr)
        return target

    def schedule_data(self, weights: str = "fp32") -> dict[str, Any]:
        """The committed tuning record of ``weights``: {"params": {...}, "source": "...", "table": [...]};
        an int8/int4 format without a record of its own takes fp32's."""
        data = json.loads((TUNED / f"{self.name}.json").read_text())
        return data.get(weights, {k: v for k, v in data.items() if k not in quantized_formats()})

    def dot_product(self) -> str | None:
        """The 4-way int8 dot instruction that int8-compute bundles use (``compile/tvm/intdot.py``): "sdot"
        (ARM with +dotprod in the target's features), "vnni" (x86 with AVX-512 VNNI: zmm), "avxvnni"
        (x86 with AVX-VNNI only: ymm), asked of LLVM for the target's CPU; or None."""
        if self.triple.startswith("aarch64"):
            return "sdot" if "+dotprod" in self.mattr else None
        from tvm.target import Target, codegen

        target = Target(self.tvm_target())
        for isa, feature in (("vnni", "avx512vnni"), ("avxvnni", "avxvnni")):
            if codegen.llvm_cpu_has_features(feature, target):
                return isa
        return None

    def computes(self) -> tuple[str, ...]:
        """What ``--compute`` may be, the default first: int8 where the dot instruction exists."""
        return ("int8", "fp32") if self.dot_product() else ("fp32",)

    def runs_here(self) -> bool:
        return host_triple() == self.triple

    def settings(self) -> dict[str, str]:
        settings = {"backend": "TVM (ONNX -> Relax, rwkv-edge CPU schedules)", "description": self.description,
                    "triple": self.triple, "cpu": self.mcpu or "native (this machine's)",
                    "features": ",".join(self.mattr) or "default for the cpu",
                    "weights": " or ".join(self.weight_formats) + " (fp32 state)",
                    "compute": self._compute_setting(),
                    "linker": self.cross_compiler or ("the Android NDK's clang ($TVM_NDK_CC)" if self.link_note
                                                      else "host cc")}
        params = self.schedule_data()["params"]
        settings["schedules"] = (f"GEMV tile {params['tile']}, K unroll {params['unroll']}, vector {params['vector']} "
                                 f"(targets/tuned/{self.name}.json)")
        if self.qemu_cpu:
            settings["emulated as"] = f"qemu-aarch64 -cpu {self.qemu_cpu}"
        if self.link_note:
            settings["note"] = self.link_note
        return settings


    def _compute_setting(self) -> str:
        dot = self.dot_product()
        if dot is None:
            return "fp32 (no int8 dot instruction: int8/int4 weights dequantized in registers)"
        instruction = {"sdot": "sdot", "vnni": "vpdpbusd (AVX-512 VNNI)", "avxvnni": "vpdpbusd (AVX-VNNI)"}[dot]
        return f"int8/int4 weights: int8 (activations rounded per group, {instruction}; default) or fp32; fp32 weights: fp32"


def host_cpu() -> str:
    from tvm.target import codegen

    return str(codegen.llvm_get_system_cpu())


_AARCH64 = {"triple": "aarch64-linux-gnu", "cross_compiler": "aarch64-linux-gnu-gcc",
            "cross_package": "gcc-aarch64-linux-gnu"}

TVM_TARGETS = {
    "x86_64-host": TvmTarget("x86_64-host", "this x86-64 Linux machine, native LLVM", "x86_64-linux-gnu", None),
    "aarch64-linux": TvmTarget("aarch64-linux", "64-bit ARM Linux, ARMv8-A + NEON (Cortex-A53 baseline)",
                               mcpu="cortex-a53", mattr=("+neon",), cores=4, qemu_cpu="cortex-a53", **_AARCH64),
    "raspberry-pi-4": TvmTarget("raspberry-pi-4", "Raspberry Pi 4 (Cortex-A72, 64-bit OS)", mcpu="cortex-a72",
                                mattr=("+neon",), cores=4, qemu_cpu="cortex-a72", **_AARCH64),
    "raspberry-pi-5": TvmTarget("raspberry-pi-5", "Raspberry Pi 5 (Cortex-A76, 64-bit OS)", mcpu="cortex-a76",
                                mattr=("+neon", "+dotprod"), cores=4, qemu_cpu="cortex-a76", **_AARCH64),
    "android-arm64": TvmTarget("android-arm64", "Android phones, ARMv8.2-A + dotprod + fp16 (arm64-v8a)",
                               triple="aarch64-linux-android", mcpu="cortex-a55",
                               mattr=("+v8.2a", "+neon", "+dotprod", "+fullfp16"), cores=8, qemu_cpu=None,
                               cross_compiler=None, cross_package=None,
                               link_note="model.so is linked with the Android NDK's clang: set TVM_NDK_CC; "
                                         "without it the bundle holds model.tar (objects to link)"),
}
