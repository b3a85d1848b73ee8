"""What a TVM bundle's quantized projections compute in, given its target and weight format."""

from __future__ import annotations

from ..errors import OptionError
from ..weights import COMPUTES as PRECISIONS, compute_precision, weight_format
from .gpu import GpuTarget
from .tvm import TvmTarget

COMPUTES = tuple(c.name for c in PRECISIONS.values() if not c.half)  # what TVM bundles compute in: fp32, int8


def check_compute(compute: str | None) -> None:
    """OptionError for a compute precision no TVM bundle has (None: the default)."""
    if compute not in (None, *COMPUTES):
        raise OptionError(f"unknown compute {compute!r}; TVM CPU bundles compute in {' or '.join(COMPUTES)}")


def resolve_compute(target: TvmTarget | GpuTarget, compute: str | None, weights: str | None) -> str | None:
    """The bundle's compute precision once the weights are known (None before; default: int8 for int8/int4
    weights where the target has the dot instruction, else fp32); OptionError where int8 compute is asked
    of a GPU target, a target without the dot instruction or float weights."""
    check_compute(compute)
    dot = target.dot_product() if isinstance(target, TvmTarget) else None
    quantized = weights is not None and weight_format(weights).quantized
    integer = compute is not None and compute_precision(compute).integer
    if integer and isinstance(target, GpuTarget):
        raise OptionError(f"{target.name} bundles compute in fp32 (int8 compute is for CPU targets with an int8 "
                          "dot-product instruction): drop --compute int8")
    if integer and dot is None:
        raise OptionError(f"{target.name} has no int8 dot-product instruction (ARM +dotprod, x86 AVX-512 VNNI): "
                          "compile with --compute fp32")
    if integer and weights is not None and not quantized:
        raise OptionError(f"int8 compute takes int8 or int4 weights, not {weights}: add --weights int8 (or int4), "
                          "or drop --compute int8")
    if weights is None:
        return compute
    return compute or ("int8" if quantized and dot else "fp32")
