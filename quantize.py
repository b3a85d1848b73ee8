"""The project's one weight quantizer: a matrix -> integers and per-group scales, and back.

Every backend consumes the numbers this module produces, so quantized artifacts agree with each other
and with the PyTorch model (whose matrices are replaced by ``dequantize(quantize(W))``) to rounding:

- groups of ``group`` consecutive weights along the input axis K of each output row, one fp16 scale
  per group (as llama.cpp's Q8_0 / Q4_0 store them);
- int8: ``d = amax / 127``, ``q = round(w / d)`` in [-127, 127];
- int4: ``d = m / -8`` with ``m`` the group's weight of largest magnitude, ``q = round(w / d)`` clipped
  to [-8, 7] (16 levels: the extreme maps to -8 exactly);
- an all-zero group has ``d = 0`` and ``q = 0``; a nonzero ``|d|`` below fp16's smallest normal number
  (2^-14) is raised to it: such a group's weights are resolved in steps of 2^-14.

Quantizing a dequantized matrix gives back the same integers and scales (the extreme of every group
is exactly the scale times the extreme level, and fp16 scales times small integers are exact in
fp32), except in a group whose integers are all zero (weights far below the smallest scale), which
comes back with scale 0: the same matrix either way. The export quantizes the model's (dequantized)
matrices again as it writes MatMulNBits.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .errors import OptionError

SMALLEST_SCALE = np.float16(2**-14)  # fp16's smallest normal number
ROWS = 4096  # rows quantized or dequantized at a time: temporaries of a few MB


@dataclass(frozen=True)
class Quantized:
    """A matrix (N, K) as integers and scales: ``W[n, k] = values[n, k] * scales[n, k // group]``."""

    values: np.ndarray  # (N, K) int8: in [-127, 127] (int8) or [-8, 7] (int4)
    scales: np.ndarray  # (N, K // group) float16
    bits: int

    @property
    def group(self) -> int:
        return self.values.shape[1] // self.scales.shape[1]

    def dequantize(self, out: np.ndarray | None = None) -> np.ndarray:
        """(N, K) float32, exactly the matrix every backend computes with (ROWS rows at a time), written
        into ``out`` where given (say the matrix's own memory: no second copy)."""
        n, k = self.values.shape
        if out is None:
            out = np.empty((n, k), np.float32)
        elif out.shape != (n, k) or out.dtype != np.float32 or not out.flags.writeable:
            raise ValueError(f"dequantize into a writable ({n}, {k}) float32 array, not {out.dtype} {out.shape}")
        for start in range(0, n, ROWS):
            rows = slice(start, start + ROWS)
            scales = self.scales[rows].astype(np.float32)[..., None]  # (rows, K / group, 1)
            out[rows] = (self.values[rows].reshape(-1, k // self.group, self.group) * scales).reshape(-1, k)
        return out

    def unsigned(self) -> np.ndarray:
        """(N, K) uint8 with the zero point 2^(bits-1) added: what MatMulNBits and the TVM kernels store."""
        return (self.values.astype(np.int16) + (1 << (self.bits - 1))).astype(np.uint8)

    def packed(self) -> np.ndarray:
        """(N, K * bits / 8) uint8: the unsigned values, int4 two to a byte with the lower k in the low nibble."""
        unsigned = self.unsigned()
        if self.bits == 8:
            return unsigned
        return unsigned[:, 0::2] | (unsigned[:, 1::2] << 4)


def quantize(weight: np.ndarray, bits: int, group: int) -> Quantized:
    """(N, K) float -> Quantized; K must be a multiple of ``group`` (OptionError otherwise). Rows are
    quantized ROWS at a time, so the temporaries stay small beside the matrix (a 65536-row head)."""
    n, k = weight.shape
    if k % group:
        raise OptionError(f"a group size of {group} does not divide the input dimension {k} of a {n} x {k} matrix")
    if bits not in (8, 4):
        raise OptionError(f"no {bits}-bit quantization: int8 and int4 only")
    values, scales = np.empty((n, k), np.int8), np.empty((n, k // group), np.float16)
    for start in range(0, n, ROWS):
        rows = slice(start, start + ROWS)
        values[rows], scales[rows] = _quantize_rows(weight[rows], bits, group)
    return Quantized(values, scales, bits)


def _quantize_rows(weight: np.ndarray, bits: int, group: int) -> tuple[np.ndarray, np.ndarray]:
    """``quantize`` of a few rows: (values (n, K) int8, scales (n, K / group) fp16)."""
    n, k = weight.shape
    w = weight.astype(np.float32).reshape(n, k // group, group)
    if bits == 8:
        low, high, extreme = -127, 127, np.abs(w).max(axis=2) / np.float32(127)
    else:
        low, high = -8, 7
        at = np.abs(w).argmax(axis=2)[..., None]
        extreme = np.take_along_axis(w, at, axis=2)[..., 0] / np.float32(-8)
    with np.errstate(over="ignore"):
        scales = extreme.astype(np.float16)  # (n, K / group)
    if not np.isfinite(scales).all():
        raise OptionError(f"weights of magnitude {np.abs(w).max():.3g} are beyond fp16 scales")
    tiny = (scales != 0) & (np.abs(scales) < SMALLEST_SCALE)  # no subnormal scales: they would not round-trip
    scales[tiny] = np.copysign(SMALLEST_SCALE, scales[tiny])
    d = scales.astype(np.float32)[..., None]
    with np.errstate(divide="ignore", invalid="ignore"):
        values = np.where(d != 0, np.rint(w / np.where(d != 0, d, 1)), 0)
    return np.clip(values, low, high).astype(np.int8).reshape(n, k), scales
