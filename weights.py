"""Weight formats and compute precisions: how an artifact stores its weight matrices, and what its
projections compute in. One registry each, one spelling (``--weights FORMAT``, ``--compute PRECISION``
on every command that builds an artifact); each builder says which formats it holds and the manifest
records the format and the precision it used. Code asks these objects what a format or a precision
does; nothing outside this module compares their names.

The state and the WKV arithmetic stay fp32 in every format (docs/onnx-contract.md).
"""

from __future__ import annotations

from dataclasses import dataclass

from .errors import OptionError


GROUP_SIZES = (16, 32, 64, 128, 256)  # a quantized format's groups: powers of two, which onnxruntime's MatMulNBits takes


@dataclass(frozen=True)
class Compute:
    """A precision the projections compute in."""

    name: str
    description: str
    integer: bool = False  # activations rounded to int8 per group, integer dot products (int8/int4 weights only)
    half: bool = False  # float16 arithmetic


COMPUTES: dict[str, Compute] = {c.name: c for c in (
    Compute("fp32", "IEEE float32"),
    Compute("fp16", "IEEE float16", half=True),
    Compute("int8", "activations rounded to int8 per group, integer dot products", integer=True),
)}
FP32 = COMPUTES["fp32"]


@dataclass(frozen=True)
class WeightFormat:
    name: str
    bits: int  # per stored weight value
    group_size: int | None  # quantized formats: the default group (weights per scale, along the input axis)
    description: str
    float_dtype: str  # what the model's matrices are held in once stored this way (quantized: dequantized)

    @property
    def quantized(self) -> bool:
        return self.bits < 16

    @property
    def full_precision(self) -> bool:
        """Every weight as trained (fp32)."""
        return self.bits == 32

    @property
    def compute(self) -> Compute:
        """What an export in this format computes in: fp16 weights in fp16, every other format in fp32."""
        return COMPUTES[self.float_dtype.replace("float", "fp")]

    def check_group(self, group: int | None) -> int:
        """The group size: ``group`` or the format's default (0 for a float format); OptionError if not one
        of GROUP_SIZES, or given for a float format."""
        if not self.quantized:
            if group is not None:
                raise OptionError(f"--group-size applies to int8 and int4 weights, not {self.name}")
            return 0
        group = self.group_size if group is None else group
        if group not in GROUP_SIZES:
            raise OptionError(f"group size {group} is not one of {', '.join(map(str, GROUP_SIZES))}")
        return group

    def bytes_per_weight(self, group: int | None = None) -> float:
        """Stored bytes per weight value: the values, and a quantized format's fp16 scale per ``group``."""
        return self.bits / 8 + (2 / (group or self.group_size) if self.quantized else 0)


WEIGHT_FORMATS: dict[str, WeightFormat] = {f.name: f for f in (
    WeightFormat("fp32", 32, None, "IEEE float32", "float32"),
    WeightFormat("fp16", 16, None, "IEEE float16", "float16"),
    WeightFormat("int8", 8, 32, "8-bit integers, symmetric, one fp16 scale per group of weights (quantize.py)", "float32"),
    WeightFormat("int4", 4, 32, "4-bit integers, symmetric, one fp16 scale per group of weights (quantize.py)", "float32"),
)}
FP32_WEIGHTS = WEIGHT_FORMATS["fp32"]


def weight_format(name: str) -> WeightFormat:
    """The format called ``name``; OptionError listing the formats otherwise."""
    if name not in WEIGHT_FORMATS:
        raise OptionError(f"unknown weight format {name!r}; choose one of {', '.join(WEIGHT_FORMATS)}")
    return WEIGHT_FORMATS[name]


def compute_precision(name: str) -> Compute:
    """The precision called ``name``; OptionError listing the precisions otherwise."""
    if name not in COMPUTES:
        raise OptionError(f"unknown compute precision {name!r}; choose one of {', '.join(COMPUTES)}")
    return COMPUTES[name]


def quantized_formats() -> tuple[str, ...]:
    """The names of the quantized formats (int8, int4)."""
    return tuple(f.name for f in WEIGHT_FORMATS.values() if f.quantized)


def check_weights(name: str, supported: tuple[str, ...], builder: str) -> WeightFormat:
    """``name``'s format if ``builder`` holds it; OptionError naming the formats it holds otherwise."""
    found = weight_format(name)
    if name not in supported:
        held = " or ".join(supported) if len(supported) < 3 else f"{', '.join(supported[:-1])} or {supported[-1]}"
        raise OptionError(f"{builder} holds {held} weights, not {name}")
    return found
