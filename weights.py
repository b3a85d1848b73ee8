"""Weight formats: how an artifact stores its weight matrices. One registry, one spelling
(``--weights FORMAT`` on every command that builds an artifact); each builder says which formats
it holds and the manifest records the one it used, with the compute precision beside it.

The state and the WKV arithmetic stay fp32 in every format (docs/onnx-contract.md).
"""

from __future__ import annotations

from dataclasses import dataclass

from .errors import OptionError


@dataclass(frozen=True)
class WeightFormat:
    name: str
    bits: int  # per stored weight value
    group_size: int | None  # quantized formats: the default group (weights per scale, along the input axis)
    description: str

    @property
    def quantized(self) -> bool:
        return self.bits < 16


WEIGHT_FORMATS: dict[str, WeightFormat] = {f.name: f for f in (
    WeightFormat("fp32", 32, None, "IEEE float32"),
    WeightFormat("fp16", 16, None, "IEEE float16"),
    WeightFormat("int8", 8, 32, "8-bit integers, symmetric, one fp16 scale per group of weights (quantize.py)"),
    WeightFormat("int4", 4, 32, "4-bit integers, symmetric, one fp16 scale per group of weights (quantize.py)"),
)}


def weight_format(name: str) -> WeightFormat:
    """The format called ``name``; OptionError listing the formats otherwise."""
    if name not in WEIGHT_FORMATS:
        raise OptionError(f"unknown weight format {name!r}; choose one of {', '.join(WEIGHT_FORMATS)}")
    return WEIGHT_FORMATS[name]


def check_weights(name: str, supported: tuple[str, ...], builder: str) -> WeightFormat:
    """``name``'s format if ``builder`` holds it; OptionError naming the formats it holds otherwise."""
    found = weight_format(name)
    if name not in supported:
        held = " or ".join(supported) if len(supported) < 3 else f"{', '.join(supported[:-1])} or {supported[-1]}"
        raise OptionError(f"{builder} holds {held} weights, not {name}")
    return found
