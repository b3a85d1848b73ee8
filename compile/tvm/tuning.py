"""What a target tunes of the CPU schedules (``targets/tuned/*.json``): ``ScheduleParams``."""

from __future__ import annotations

from dataclasses import dataclass

from ...errors import OptionError


@dataclass(frozen=True)
class ScheduleParams:
    """What a target tunes: GEMV tile width (output columns per tile, a multiple of the vector
    width), unroll depth of the K loop, the vector width of elementwise kernels (floats), the
    rows per register block of the prefill GEMMs (rows x tile accumulators, ``compile/tvm/gemm.py``), and
    the int8 dot instruction of int8-compute bundles ("vnni", "sdot"; "" for fp32 compute,
    ``compile/tvm/intdot.py``): set by the compiler from the target, not tuned."""

    tile: int = 32
    unroll: int = 4
    vector: int = 8
    rows: int = 8
    dot: str = ""

    def __post_init__(self) -> None:
        if self.tile % self.vector or self.unroll < 1 or self.rows < 1:
            raise OptionError(f"schedule parameters out of range: {self} (the tile must be a multiple of the vector "
                              "width, the unroll at least 1); fix targets/tuned/<target>.json")
