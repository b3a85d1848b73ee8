"""What a TVM bundle is asked for (``TvmOptions``); the compute precision it resolves to is ``targets.compute``'s."""

from __future__ import annotations

from dataclasses import dataclass

from ...errors import OptionError
from ...targets.compute import check_compute
from ...weights import compute_precision
PREFILL_CHUNK = 32  # tokens per prefill call of a bundle compiled from a checkpoint (docs/tvm.md: 1.4-1.6x T=16)


@dataclass(frozen=True)
class TvmOptions:
    target: str = "x86_64-host"
    schedules: bool = True  # False: TVM's default lowering (scalar, one thread), for comparison only
    weights: str | None = None  # None: the ONNX export's (fp32 from a checkpoint); CPU targets hold int8 and int4
    # (from an export in that format), GPU targets fp16 (GEMV weights fp16, summed in fp32), int8 and int4
    group_size: int | None = None  # int8/int4 from a checkpoint: weights per scale (default: the format's)
    # tokens per call of the prefill function; None: the ONNX export's prefill graph (a checkpoint is
    # exported with PREFILL_CHUNK); 0: none (prompts run one step per token). CPU targets only.
    prefill_chunk: int | None = None
    # what the quantized projections compute in: "int8" (activations rounded per group, integer dot
    # products: compile/tvm/intdot.py), "fp32" (dequantized in registers); None: int8 for int8/int4
    # weights where the target has the dot instruction (TvmTarget.dot_product), else fp32
    compute: str | None = None

    @property
    def integer_compute(self) -> bool:
        """Whether the projections round their inputs to int8 and take integer dot products."""
        return self.compute is not None and compute_precision(self.compute).integer

    def __post_init__(self) -> None:
        if self.prefill_chunk is not None and self.prefill_chunk < 0:
            raise OptionError(f"prefill chunk must be >= 0, got {self.prefill_chunk}")
        check_compute(self.compute)
