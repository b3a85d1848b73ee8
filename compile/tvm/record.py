"""The manifest's record of a TVM build (``TvmBuild``): what the bundle was built for, and how."""

from __future__ import annotations

from ...artifact import TvmBuild
from ...artifact.files import LIBRARY
from ...targets import GpuTarget, TvmTarget
from .gpu import device_files
from .options import TvmOptions


def target_record(target: TvmTarget | GpuTarget, options: TvmOptions, library: str, counts: dict[str, int]) -> TvmBuild:
    """The manifest's record of what a bundle was built for and how."""
    gpu = isinstance(target, GpuTarget)
    return TvmBuild(target.name, target.triple, target.tvm_target(), linked=library == LIBRARY,
                    device=target.device if gpu else "cpu", qemu_cpu=target.qemu_cpu,
                    schedules=schedule_data(target, options) if options.schedules else None, kernels=counts,
                    arch=target.arch if gpu else None, device_code=device_files(target) if gpu else [],
                    executed=_executed(target, library) if gpu else None)


def schedule_data(target: TvmTarget | GpuTarget, options: TvmOptions) -> dict:
    """The target's schedule parameters for the bundle's weights (CPU targets: per weight format)."""
    return target.schedule_data(options.weights) if isinstance(target, TvmTarget) else target.schedule_data()


def _executed(target: GpuTarget, library: str) -> str:
    """What the build machine ran of a GPU bundle: nothing; which step proves it where."""
    if target.device == "cuda":
        return (f"none of it: host code linked into {library} and device code compiled by nvcc for {target.arch} "
                f"(cubin + PTX) on the build machine; `rwkv-edge verify` on a machine with the GPU runs it")
    return (f"none of it: host objects in {library} and Metal source not compiled (no Metal compiler on Linux); "
            f"link and verify on the Apple device (docs/tvm-gpu.md)")
