"""Tile layouts of packed weights: one tile of ``tile`` output columns stored contiguously, so a
thread streams each tile's weights front to back. The fp32 GEMV and GEMM (``pack_weight``), the
quantized GEMV (``quantized.pack_quantized``) and the int8 dot (``intdot.pack_intdot``) share them."""

from __future__ import annotations

import numpy as np

from ...quantize import Quantized


def pack_weight(weight: np.ndarray, tile: int) -> np.ndarray:
    """(K, N) -> (ceil(N / tile), K, tile), zero-padded: tile j holds columns j*tile ... j*tile + tile - 1."""
    k_len, n = weight.shape
    groups = -(-n // tile)
    padded = np.zeros((k_len, groups * tile), dtype=weight.dtype)
    padded[:, :n] = weight
    return np.ascontiguousarray(padded.reshape(k_len, groups, tile).transpose(1, 0, 2))


def padded(found: Quantized, tile: int, dtype) -> tuple[np.ndarray, np.ndarray]:
    """The integers (as ``dtype``) and fp16 scales, (N', K) and (N', K / group), N' = N rounded up to
    whole tiles: the padding rows are zero, with zero scales."""
    n, k_len = found.values.shape
    rows = -(-n // tile) * tile
    values = np.zeros((rows, k_len), dtype)
    values[:n] = found.values
    scales = np.zeros((rows, k_len // found.group), np.float16)
    scales[:n] = found.scales
    return values, scales


def tiled(matrix: np.ndarray, tile: int) -> np.ndarray:
    """(N, M) with N whole tiles -> (N / tile, M, tile)."""
    n, m = matrix.shape
    return np.ascontiguousarray(matrix.reshape(n // tile, tile, m).transpose(0, 2, 1))
