"""What ``verify`` can say of a GPU bundle away from its GPU: built, not executed, and the build intact.

The checks read the device code only (nothing runs): every kernel of the CUDA source has a PTX
entry and the fatbin holds a cubin for the bundle's arch, or the Metal source declares its
kernels; the library and the weights file match the manifest.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import tarfile
from dataclasses import dataclass, field
from pathlib import Path

from ..architectures import IMAGE, LANGUAGE
from ..atomic import atomic_path
from ..artifact import Artifact
from ..artifact.files import CUDA_SOURCE, FATBIN, MSL, PTX
from ..artifact.params import map_params
from ..contract import IMAGE_GRAPH
from ..errors import ArtifactError, printable

MAIN_GRAPHS = {LANGUAGE: "step", IMAGE: IMAGE_GRAPH}  # family -> the role whose library and weights are checked
NOT_EXECUTED_EXIT = 3  # `rwkv-edge verify`: the build is intact but nothing ran (no pass, no failure)
FATBIN_MAGIC = bytes.fromhex("50ed55ba")  # 0xBA55ED50, little-endian
_CUDA_KERNEL = re.compile(r'extern "C" __global__ void (?:__launch_bounds__\(\d+\) )?(\w+)\(')
_PTX_ENTRY = re.compile(r"\.entry (\w+)\(")
_METAL_KERNEL = re.compile(r"kernel void (\w+)\(")


@dataclass
class BuildReport:
    """The verdict ``BUILT, NOT EXECUTED`` (or the problems that make the build unusable)."""

    directory: str
    target: str
    reason: str  # why nothing ran here
    checks: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return False  # nothing was executed, so nothing is proven to compute what PyTorch computes

    @property
    def exit_code(self) -> int:
        return 1 if self.problems else NOT_EXECUTED_EXIT

    def summary(self) -> str:
        verdict = "BUILD BROKEN" if self.problems else "BUILT, NOT EXECUTED"
        lines = [f"{verdict}  {self.target} bundle {self.directory}: {self.reason}"]
        lines += [f"  - {problem}" for problem in self.problems]
        lines += [f"  {check}" for check in self.checks]
        return "\n".join(map(printable, lines))  # manifest text escaped: one line stays one line

    def save(self, directory: str | Path, manifest_sha256: str | None = None) -> list[Path]:
        """parity.json in ``directory``, atomically, naming the manifest judged."""
        path = Path(directory) / "parity.json"
        record = {"status": "built, not executed", "executed": False, "passed": False, "target": self.target,
                  "reason": self.reason, "checks": self.checks, "problems": self.problems,
                  "manifest_sha256": manifest_sha256}
        with atomic_path(path) as tmp:
            tmp.write_text(json.dumps(record, indent=1) + "\n")
        return [path]


def check_gpu_build(artifact: Artifact, reason: str) -> BuildReport:
    """Read the bundle's device code, library and weights file; nothing is executed."""
    role = MAIN_GRAPHS[artifact.manifest.family]
    target, step = artifact.manifest.target, artifact.manifest.graphs[role]
    report = BuildReport(str(artifact.directory), target.name, reason)
    if target.device == "cuda":
        _check_cuda(report, artifact, target.arch)
    else:
        _check_metal(report, artifact)
    _check_library(report, artifact.graph(role))
    _check_params(report, artifact.path(step.params), step.num_params)
    return report


def _check_cuda(report: BuildReport, artifact: Artifact, arch: str) -> None:
    kernels = sorted(set(_CUDA_KERNEL.findall(artifact.path(CUDA_SOURCE).read_text())))
    entries = set(_PTX_ENTRY.findall(artifact.path(PTX).read_text()))
    missing = [k for k in kernels if k not in entries]
    if not kernels or missing:
        report.problems.append(f"kernels.ptx lacks {len(missing)} of the {len(kernels)} kernels of kernels.cu")
    else:
        report.checks.append(f"kernels.cu: {len(kernels)} kernels, each with a PTX entry in kernels.ptx")
    fatbin = artifact.path(FATBIN).read_bytes()
    if not fatbin.startswith(FATBIN_MAGIC):
        report.problems.append("kernels.fatbin is not a CUDA fatbin")
        return
    cuobjdump = shutil.which("cuobjdump")
    if cuobjdump is None:
        report.checks.append(f"kernels.fatbin: a fatbin, {len(fatbin)} bytes (cuobjdump absent: its cubins not listed)")
        return
    listing = subprocess.run([cuobjdump, "--list-elf", "--list-ptx", str(artifact.path(FATBIN))],
                             capture_output=True, text=True).stdout
    if f".{arch}." not in listing:
        report.problems.append(f"kernels.fatbin holds no cubin for {arch}")
    else:
        report.checks.append(f"kernels.fatbin: cubin for {arch}" + (" + PTX" if ".ptx" in listing else "")
                             + " (cuobjdump)")


def _check_metal(report: BuildReport, artifact: Artifact) -> None:
    kernels = sorted(set(_METAL_KERNEL.findall(artifact.path(MSL).read_text())))
    if not kernels:
        report.problems.append("kernels.metal declares no kernel")
    else:
        report.checks.append(f"kernels.metal: {len(kernels)} Metal kernels (source; compiled by the Apple device)")


def _check_library(report: BuildReport, library: Path) -> None:
    if library.suffix == ".tar":
        with tarfile.open(library) as tar:
            objects = [n for n in tar.getnames() if n.endswith(".o")]
        report.checks.append(f"{library.name}: {len(objects)} objects to link on the device ({', '.join(objects)})")
    elif library.read_bytes()[:4] != b"\x7fELF":
        report.problems.append(f"{library.name} is not an ELF library")
    else:
        report.checks.append(f"{library.name}: host library (ELF), {library.stat().st_size} bytes")


def _check_params(report: BuildReport, path: Path, expected: int) -> None:
    try:
        map_params(path, expected)
    except ArtifactError as e:
        report.problems.append(str(e))
    else:
        report.checks.append(f"{path.name}: {expected} weight tensors, 64-byte aligned, as main takes")
