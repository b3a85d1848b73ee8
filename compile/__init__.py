"""Compilers from a checkpoint or an ONNX export to a deployable artifact: one per target family.

A target names its family (``target.kind``); COMPILERS maps the family to the package whose
``compile_target(source, out_dir, target, request, log)`` builds it, and REQUEST_CHECKS to what the
family refuses before its compiler (TVM, coremltools, torch) loads. Adding a family is a targets/
module, a compile/ package and one entry in each.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

from ..artifact import MANIFEST, Manifest
from ..errors import OptionError
from ..targets import CoreMLTarget, Target, get_target
from ..targets.compute import resolve_compute
from ..targets.coreml import check_compute_units
from ..weights import check_weights

COMPILERS = {"tvm": "tvm", "coreml": "coreml"}  # target family -> the package in compile/


@dataclass(frozen=True)
class CompileRequest:
    """What ``rwkv-edge compile`` was asked beyond the target; each compiler refuses what it cannot hold."""

    weights: str | None = None  # weight format; None: the target's default
    schedules: bool = True  # TVM: the project's schedules (False: TVM's default lowering, for comparison)
    stateful: bool = False  # Core ML: the state in Core ML states
    compute_units: str | None = None  # Core ML
    deployment: str | None = None  # Core ML: minimum deployment target
    prefill_chunk: int | None = None  # tokens per prefill call (0: none); None: the compiler's default
    group_size: int | None = None  # int8/int4 weights: weights per scale (default: the format's)
    compute: str | None = None  # TVM CPU: int8 or fp32 for int8/int4 weights (default: int8 where the target can)
    image_size: int | None = None  # Core ML, image models: the resolution to trace at (default: the checkpoint's)

    def given(self) -> dict[str, object]:
        """The fields set away from their defaults, by their CLI names."""
        defaults = CompileRequest()
        return {f"--{name.replace('_', '-')}": value for name, value in vars(self).items()
                if value != getattr(defaults, name)}


def check_request(source: Path, target: Target, request: CompileRequest) -> None:
    """OptionError for what ``target``'s family refuses whatever the model: another family's options, a
    source it cannot compile from, a weight format it cannot hold. Needs no compiler (the CLI calls it
    before anything heavy loads)."""
    REQUEST_CHECKS[target.kind](source, target, request)


def _check_tvm(source: Path, target: Target, request: CompileRequest) -> None:
    coreml_only = [flag for flag in request.given()
                   if flag not in ("--weights", "--schedules", "--group-size", "--prefill-chunk", "--compute")]
    if coreml_only:
        raise OptionError(f"{target.name} is a TVM target: {', '.join(coreml_only)} applies to Core ML targets only")
    if request.weights is not None:
        check_weights(request.weights, target.weight_formats, f"a {target.name} bundle")
    if request.compute is not None:  # only a requested compute can be refused (x86 asks LLVM: TVM loads)
        resolve_compute(target, request.compute, request.weights)


def _check_coreml(source: Path, target: CoreMLTarget, request: CompileRequest) -> None:
    if source.suffix == ".onnx" or (source / MANIFEST).is_file():  # an export; a model folder has no manifest
        raise OptionError(f"{target.name}: Core ML converts from the PyTorch checkpoint, not from an ONNX export; "
                          f"give the .pth / .safetensors file (an export's manifest.json names it)")
    if not request.schedules:
        raise OptionError(f"{target.name} is a Core ML target: --no-schedules applies to TVM targets only")
    target.deployment(request.stateful, request.deployment)
    if request.compute_units is not None:
        check_compute_units(request.compute_units)


REQUEST_CHECKS = {"tvm": _check_tvm, "coreml": _check_coreml}  # target family -> what it refuses before compiling


def compile_for(source: str | Path, out_dir: str | Path, target: str, request: CompileRequest = CompileRequest(),
                log: Callable[[str], None] = print) -> Manifest:
    """Build the artifact of ``target`` from ``source`` into ``out_dir``."""
    resolved = get_target(target)
    check_request(Path(source), resolved, request)
    module = importlib.import_module(f"{__package__}.{COMPILERS[resolved.kind]}")
    request = _stored_weights(request, Path(source), resolved.weight_formats, log)
    return module.compile_target(Path(source), Path(out_dir), resolved, request, log)


def _stored_weights(request: CompileRequest, source: Path, held: tuple[str, ...],
                    log: Callable[[str], None]) -> CompileRequest:
    """``request`` with the weight format, where none was asked for, that holds a quantized source's matrices
    exactly (a GGUF file of Q8_0 / Q4_0 matrices: int8 / int4 in groups of 32), if the target holds it."""
    from ..model.sources import stored_format  # torch: after the request's checks

    stored = stored_format(source) if request.weights is None and source.is_file() else None
    if stored is None or stored[0] not in held:
        return request
    log(f"weights: {stored[0]} in groups of {stored[1]}, as {source.name} stores its matrices (--weights for another)")
    return replace(request, weights=stored[0], group_size=request.group_size or stored[1])
