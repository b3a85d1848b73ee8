"""The options of an ONNX export, and the weight formats it holds."""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch

from ..errors import OptionError
from ..model.checkpoint import StoredWeights
from ..weights import COMPUTES, WEIGHT_FORMATS, check_weights, compute_precision, weight_format

# the formats an export holds -> the precision it computes in (int8/int4: MatMulNBits, fp32 activations)
WEIGHTS = {name: getattr(torch, f.float_dtype) for name, f in WEIGHT_FORMATS.items()}
REFERENCE_COMPUTES = tuple(c.name for c in COMPUTES.values() if not c.half)  # what a reference rollout computes in


@dataclass(frozen=True)
class OnnxOptions:
    # the weight format; fp16 also computes in fp16; the state stays fp32 at the interface. None: as the source
    # stores its matrices where a format holds them exactly (a GGUF of Q8_0 / Q4_0: int8 / int4), else fp32
    weights: str | None = None
    prefill_chunk: int = 16  # tokens per prefill call; 0: no prefill graph
    prefill_all_logits: bool = False  # prefill returns (B, T, V) instead of the last position
    dynamic_batch: bool = False  # a symbolic batch axis instead of batch 1
    opset: int = 18
    group_size: int | None = None  # int8/int4: weights per scale (default: the format's)
    image_size: int | None = None  # image models: the graph's fixed resolution (default: the trained one)
    # what the reference rollout computes: "fp32" (the export's own numbers); "int8" (int8/int4 weights) the
    # projections' inputs rounded per group too, with the rounding spread: the reference of the int8-compute
    # TVM bundle that compile_tvm builds from this export (not of the ONNX graphs, which compute in fp32)
    reference_compute: str = "fp32"

    def __post_init__(self) -> None:
        if self.weights is not None:
            check_weights(self.weights, tuple(WEIGHTS), "an ONNX export").check_group(self.group_size)
        if self.reference_compute not in REFERENCE_COMPUTES:
            raise OptionError(f"unknown reference compute {self.reference_compute!r}; expected "
                              f"{' or '.join(REFERENCE_COMPUTES)}")
        if compute_precision(self.reference_compute).integer and not weight_format(self.weights or "fp32").quantized:
            raise OptionError(f"an int8-compute reference takes int8 or int4 weights, not {self.weights or 'fp32'}")
        if self.prefill_chunk < 0:
            raise OptionError(f"prefill chunk must be >= 0, got {self.prefill_chunk}")
        if self.opset < 18:
            raise OptionError(f"opset must be >= 18, got {self.opset}")
        if self.image_size is not None and self.image_size <= 0:
            raise OptionError(f"image size must be positive, got {self.image_size}")

    def for_source(self, stored: StoredWeights | None) -> "OnnxOptions":
        """These options with the weight format settled: where none was given, the format that holds the
        source's matrices exactly (``Checkpoint.stored``: GGUF Q8_0 -> int8, Q4_0 -> int4, groups of 32),
        else fp32."""
        if self.weights is not None:
            return self
        if stored is None or stored.format is None:
            return replace(self, weights="fp32")
        return replace(self, weights=stored.format, group_size=self.group_size or stored.group)
