"""Quantized GEMVs for TVM CPU bundles: int8 / int4 weights dequantized in registers, summed in fp32.

An int8 or int4 export's projections are MatMulNBits nodes, whose integers and fp16 scales the
packing pass (``packing.PackConstantMatmuls``) takes from the weight table (``params.py``) and stores
in the fp32 GEMV's tile layout instead of the floats:

- values: int8, (N / tile, K, tile); int4 two to a byte along K, (N / tile, K / 2, tile) uint8, the
  even k in the low nibble, each nibble ``q + 8`` (unsigned: a mask or a shift extracts it);
- scales: fp16, (N / tile, K / group, tile), beside them.

The GEMV sums ``x[k] * q[k, j]`` over each group of K in fp32, multiplies the group's sum by its
scale and adds it to the column's total (``sum_g s[g, j] * sum_k x[k] q[k, j]``): per weight one
widening, one conversion and one fused multiply-add (int4: and a mask or shift per byte), the scale
once per group; int4 subtracts ``8 * sum_k x[k]`` from each group's sum (the x sums are computed
once per GEMV). Its schedule is the fp32 GEMV's (tiles in parallel over threads, accumulators in
vector registers, the epilogue per tile).
"""

from __future__ import annotations

import numpy as np
import tvm
from tvm import s_tir, te, tirx

from ...quantize import Quantized
from .layout import padded, tiled
from .tir import accumulate_with_epilogue, find_block, inline_producers

QGEMV_BLOCK = "qgemv"  # the total over groups, found again after fusion
QGROUP_BLOCK = "qgroup"  # the sum over one group of K, kept in registers
XSUM_BLOCK = "qxsum"  # int4: the sum of x over each group (the zero point's share), once per GEMV


def pack_quantized(found: Quantized, tile: int) -> tuple[np.ndarray, np.ndarray]:
    """Quantized (N, K) -> (values, scales): int8 (N/tile, K, tile) or, int4, (N/tile, K/2, tile) uint8
    nibble pairs of q + 8; fp16 scales (N/tile, K/group, tile). N is padded to whole tiles (zero scales)."""
    values, scales = padded(found, tile, np.int8)
    if found.bits == 4:
        unsigned = (values + 8).astype(np.uint8)  # zero point 8: [-8, 7] -> [0, 15]
        values = unsigned[:, 0::2] | (unsigned[:, 1::2] << 4)  # (N, K/2)
    return tiled(values, tile), tiled(scales, tile)


def quantized_shapes(source, tile: int, n: int) -> tuple:
    """((shape, dtype) of the values, of the scales) that ``pack_quantized`` makes of a quantized (K, N)
    weight ``source`` (its ``bits`` and ``group``), N padded to ``n``."""
    k_len = source.shape[0]
    values = ((n // tile, k_len, tile), "int8") if source.bits == 8 else ((n // tile, k_len // 2, tile), "uint8")
    return values, ((n // tile, k_len // source.group, tile), "float16")


def quantized_gemv(x: te.Tensor, values: te.Tensor, scales: te.Tensor, n: int, bits: int) -> te.Tensor:
    """y[..., j] = sum_g s[g, j] * sum_{k in g} x[..., k] * q[k, j]: (..., K) -> (..., n), n whole tiles.
    int4 sums the unsigned nibbles u = q + 8 and subtracts 8 * sum_{k in g} x[k] per group."""
    *lead, k_len = x.shape
    _, groups, tile = scales.shape
    group = k_len // groups
    kk = te.reduce_axis((0, group), "kk")
    partial = te.compute((*lead, groups, n), lambda *i: te.sum(
        x[(*i[:-2], i[-2] * group + kk)] * integer_weight(values, i[-1] // tile, i[-2] * group + kk, i[-1] % tile, bits),
        axis=kk), name=QGROUP_BLOCK)
    xsum = _group_sums(x, groups) if bits == 4 else None  # (..., groups)

    def centred(*i):  # (..., g, j): the group's sum, int4's zero point taken out
        return partial[i] if xsum is None else partial[i] - 8.0 * xsum[i[:-1]]

    g = te.reduce_axis((0, groups), "g")
    return te.compute((*lead, n), lambda *i: te.sum(
        centred(*i[:-1], g, i[-1]) * scales[i[-1] // tile, g, i[-1] % tile].astype("float32"), axis=g),
        name=QGEMV_BLOCK)


def _group_sums(x: te.Tensor, groups: int) -> te.Tensor:
    """(..., K) -> (..., groups): the sum of x over each group of K."""
    *lead, k_len = x.shape
    group = k_len // groups
    k = te.reduce_axis((0, group), "kx")
    return te.compute((*lead, groups), lambda *i: te.sum(x[(*i[:-1], i[-1] * group + k)], axis=k), name=XSUM_BLOCK)


def integer_weight(values: te.Tensor, t, k, j, bits: int):
    """The weight q[k, j] of tile t as float32; int4: the unsigned nibble of k's parity (q + 8)."""
    if bits == 8:
        return values[t, k, j].astype("float32")
    byte = values[t, k // 2, j]  # uint8
    return tirx.if_then_else(k % 2 == 0, byte & tirx.const(15, "uint8"), byte >> tirx.const(4, "uint8")).astype("float32")


def schedule_quantized_gemv(func: tirx.PrimFunc, params) -> s_tir.Schedule | None:
    """Tiles over output columns in parallel; per group, the K loop unrolled over a register tile of
    partial sums; the group's sum scaled into the tile's accumulators; epilogue per tile."""
    sch = s_tir.Schedule(func)
    total = find_block(sch, (QGEMV_BLOCK,))
    if total is None:
        return None
    try:
        partial = sch.get_sblock(QGROUP_BLOCK)
        inline_producers(sch, partial)
        *lead, n, g = sch.get_loops(total)
        tile = params.tile
        if int(sch.get(n).extent) % tile:
            return None
        n_outer, n_inner = sch.split(n, [None, tile])
        sch.reorder(*lead, n_outer, g, n_inner)
        outer = sch.fuse(*lead, n_outer)
        sch.compute_at(partial, g)
        sch.set_scope(partial, 0, "local")
        *_, pn, kk = sch.get_loops(partial)
        unroll = params.unroll if int(sch.get(kk).extent) % params.unroll == 0 else 1
        kk_outer, kk_inner = sch.split(kk, [None, unroll])
        sch.reorder(kk_outer, kk_inner, pn)
        sch.vectorize(pn)
        if unroll > 1:
            sch.unroll(kk_inner)
        accumulate_with_epilogue(sch, total, outer)
        sch.vectorize(n_inner)
        if int(sch.get(outer).extent) > 1:
            sch.parallel(outer)
        init = sch.decompose_reduction(partial, kk_outer)
        sch.vectorize(sch.get_loops(init)[-1])
        init = sch.decompose_reduction(total, g)
        sch.vectorize(sch.get_loops(init)[-1])
        return sch
    except (RuntimeError, ValueError, tvm.TVMError):
        return None

