"""What this machine is and what it can run: its LLVM triple, the emulators that run other
architectures here, and the GPU it has. The one place that knows; targets, compilers and backends ask.

The aarch64 tools come from ``scripts/install-arm-tools.sh``: qemu-user, the cross compilers, and
under ``$RWKV_EDGE_ARM_ROOT`` (default ``~/.cache/rwkv-edge/aarch64``) an arm64 Debian root with
CPython 3.11 (``sysroot/``) and the aarch64 TVM runtime wheels unpacked (``site/``).
"""

from __future__ import annotations

import os
import platform
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path

INSTALL_SCRIPT = "scripts/install-arm-tools.sh"
INSTALL_HINT = f"run `bash {INSTALL_SCRIPT}` from the rwkv-edge repository (as root, or with sudo)"


def host_triple() -> str:
    """This machine's triple as targets spell it (``x86_64-linux-gnu``, ``aarch64-linux-gnu``,
    ``arm64-apple-macos``); the bare machine name where no target is built for it."""
    machine = platform.machine()
    if platform.system() == "Darwin" and machine == "arm64":
        return "arm64-apple-macos"
    arch = {"AMD64": "x86_64", "amd64": "x86_64", "arm64": "aarch64"}.get(machine, machine)
    return f"{arch}-linux-gnu" if arch in ("x86_64", "aarch64") else machine


def host_arch() -> str:
    """This machine's architecture in triple spelling (``x86_64``, ``aarch64``)."""
    return host_triple().split("-")[0]


def arm_root() -> Path:
    """Where ``scripts/install-arm-tools.sh`` puts the aarch64 Python root and TVM wheels."""
    return Path(os.environ.get("RWKV_EDGE_ARM_ROOT") or Path.home() / ".cache" / "rwkv-edge" / "aarch64")


@dataclass(frozen=True)
class Emulation:
    """How this host builds and runs code of another architecture: a cross compiler and qemu-user."""

    arch: str  # the emulated architecture, triple spelling
    compiler: str  # the cross C++ compiler
    compiler_package: str  # the Debian package that installs it
    toolchain_file: str  # CMake toolchain file in runtime/cpp
    qemu: str  # the user-mode emulator
    qemu_package: str
    libc_root: str  # the target's libc, installed with the cross compiler: qemu's -L for native programs

    @property
    def sysroot(self) -> Path:
        """An arm64 Debian root with CPython 3.11: qemu's -L for the emulated Python."""
        return arm_root() / "sysroot"

    @property
    def site(self) -> Path:
        """The emulated architecture's TVM runtime wheels, unpacked."""
        return arm_root() / "site"

    @property
    def python(self) -> Path:
        return self.sysroot / "usr" / "bin" / "python3.11"

    def program(self, cpu: str | None, *argv: str, libc_root: str | None = None) -> list[str]:
        """argv running a program of the emulated architecture on the emulated ``cpu``."""
        return [self.qemu, *(["-cpu", cpu] if cpu else []), "-L", libc_root or self.libc_root, *argv]

    def python_command(self, cpu: str, *python_args: str) -> list[str]:
        """argv running the emulated CPython with ``python_args`` on ``cpu``."""
        qemu = shutil.which(self.qemu) or self.qemu
        return [qemu, "-cpu", cpu, "-L", str(self.sysroot), str(self.python), *python_args]

    def python_environ(self, base: dict[str, str]) -> dict[str, str]:
        """``base`` with the host's Python and loader settings replaced by the emulated ones."""
        drop = ("PYTHONHOME", "PYTHONPATH", "PYTHONSTARTUP", "PYTHONUSERBASE", "LD_LIBRARY_PATH", "LD_PRELOAD")
        env = {k: v for k, v in base.items() if k not in drop and not k.startswith("QEMU_")}
        env["PYTHONPATH"] = str(self.site)
        return env

    def python_unavailable(self) -> str | None:
        """Why the emulated Python with TVM's runtime cannot run here, or None."""
        if not sys.platform.startswith("linux"):
            return f"{self.arch} emulation uses qemu-user, which runs on Linux only (this is {sys.platform})"
        if shutil.which(self.qemu) is None:
            return f"{self.qemu} is not on PATH (Debian package {self.qemu_package}): {INSTALL_HINT}"
        for stamp, what in (("sysroot.stamp", f"the {self.arch} Debian root with python3.11"),
                            ("site.stamp", f"the {self.arch} TVM runtime wheels")):
            if not (arm_root() / stamp).is_file():
                return f"{what} is missing or incomplete in {arm_root()} (no {stamp}): {INSTALL_HINT}"
        if not self.python.is_file() or not (self.site / "tvm").is_dir():
            return f"{arm_root()} lacks {self.python} or {self.site / 'tvm'}: {INSTALL_HINT}"
        return None


EMULATIONS: dict[tuple[str, str], Emulation] = {  # (host arch, emulated arch) -> its tools
    ("x86_64", "aarch64"): Emulation("aarch64", "aarch64-linux-gnu-g++", "g++-aarch64-linux-gnu",
                                     "aarch64-linux-gnu.cmake", "qemu-aarch64-static", "qemu-user-static",
                                     "/usr/aarch64-linux-gnu"),
}


def emulation(arch: str) -> Emulation | None:
    """How this machine emulates ``arch``, or None where it cannot."""
    return EMULATIONS.get((host_arch(), arch))


def cuda_device_arch(index: int = 0) -> str | None:
    """``"sm_90"`` for an H100 and so on; None when no CUDA GPU (or no CUDA runtime library) is usable."""
    try:
        import tvm

        device = tvm.cuda(index)
        if not device.exist:
            return None
        return "sm_" + str(device.compute_version).replace(".", "")
    except Exception:  # TVM's CUDA runtime needs libcudart.so.13 and the driver's libcuda.so.1
        return None


def gpu_unavailable(device: str, arch: str | None, triple: str) -> str | None:
    """Why a GPU bundle for ``device``/``arch`` with host ``triple`` cannot run here, or None when it can."""
    here = host_triple()
    if device == "metal":
        if platform.system() != "Darwin":
            return ("a Metal bundle runs on a Mac (Apple GPU): copy it there, link model.tar (docs/tvm-gpu.md) "
                    "and run rwkv-edge verify on the Mac")
        return None if triple == here else f"the bundle's host code is for {triple}; this Mac is {here}"
    if triple != here:
        return f"the bundle's host code is for {triple}; this machine is {here}"
    found = cuda_device_arch()
    if found is None:
        return "no CUDA GPU is visible here (a CUDA bundle needs an NVIDIA GPU, its driver and libcudart.so.13)"
    if arch is not None and sm_number(found) < sm_number(arch):
        return f"the bundle is built for {arch}; this GPU is {found}: compile for a target of {found} or older"
    return None


def sm_number(arch: str) -> int:
    """``"sm_90a"`` -> 90."""
    return int(arch.removeprefix("sm_").rstrip("a"))
