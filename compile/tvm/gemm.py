"""CPU GEMMs for the prefill function: T rows of activations times a packed weight matrix.

A prefill call runs every projection on the T positions of its chunk at once: ``x (..., T, K) @ W
(K, N)``. The decode step's GEMV streams each weight once per token; here each weight should
cross the memory bus once per T tokens, and the arithmetic (2 T K N flops) becomes the limit.

1. **Packing** (a Relax rewrite, before fusion): every ``matmul(x, W)`` with a constant ``W`` and
   more than one row in ``x`` becomes ``packed_gemm`` over ``W`` stored exactly as the GEMV stores
   it, (N / tile, K, tile) (``layout.pack_weight``, the same tile): a weight shared by ``main``
   and ``prefill`` holds the same packed values in both (TVM's executable stores them once; a pass
   that lifts constants into a parameter file can do the same).
2. **Schedule** (TIR, after fusion): tiles of ``tile`` output columns in parallel over threads;
   inside a tile, blocks of ``rows`` rows (the target's ``rows``, or the largest divisor of T below
   it); for each block the K loop keeps ``rows x tile`` accumulators in vector registers (each
   step: ``rows`` broadcasts of x, one contiguous row of the weight tile, ``rows x tile`` FMAs). The K x tile weight block (96-384 KiB at K = 768-3072,
   tile 32) is re-read from cache by the T / rows blocks, from memory once. Producers (the
   token-shift interpolation) are inlined, the epilogue (activation, residual) applied per block.

int8/int4 bundles: a quantized matrix gets the quantized GEMV's tiles (``quantized.pack_quantized``,
the same arrays, so ``main`` and ``prefill`` share them too) and ``quantized_gemm``, whose weight
expression dequantises in registers, ``(q - zero) * scale``, exact in fp32; the loop nest and its
schedule are the fp32 GEMM's (the dequantisation runs once per row block).
"""

from __future__ import annotations

from functools import partial

import tvm
from tvm import s_tir, te, tirx

from .gemv import packed_gemv
from .packing import PackConstantMatmuls
from .params import WeightTable
from .quantized import integer_weight
from .tir import accumulate_with_epilogue, finish_tiled_reduction, inline_producers
from .tuning import ScheduleParams

GEMM_BLOCK = "gemm"  # the name of the packed GEMM's reduction block, found again after fusion
packed_gemm = partial(packed_gemv, name=GEMM_BLOCK)  # (..., T, K) x packed W -> (..., T, n): the GEMV's compute


def pack_gemm_weights(mod: tvm.IRModule, table: WeightTable, params: ScheduleParams, bits: int = 32,
                      group: int = 0) -> tuple[tvm.IRModule, int]:
    """Rewrite ``matmul(x, W)`` with a constant 2-D ``W`` and several rows in ``x`` into packed GEMMs
    (quantized ones where ``W`` is exactly a ``bits``-bit quantization); returns the module and the
    count. One-row matmuls are left to ``packing.pack_gemv_weights``."""
    rewriter = PackConstantMatmuls(mod, table, params.tile, bits, group, one_row=False,
                                   dense=(packed_gemm, GEMM_BLOCK),
                                   quantized=(quantized_gemm, GEMM_BLOCK), dot=params.dot)
    mod = rewriter.rewrite(mod)
    return mod, rewriter.dense + rewriter.quantized


def quantized_gemm(x: te.Tensor, values: te.Tensor, scales: te.Tensor, n: int, bits: int) -> te.Tensor:
    """``packed_gemm`` over a quantized matrix in ``pack_quantized``'s tiles: each weight dequantised
    in registers, ``(q - zero) * scale`` (exactly the dequantized matrix), summed in fp32."""
    *lead, k_len = x.shape
    _, groups, tile = scales.shape
    group = k_len // groups
    zero = 8.0 if bits == 4 else 0.0  # int4 tiles hold q + 8
    k = te.reduce_axis((0, k_len), "k")

    def weight(k, j):
        scale = scales[j // tile, k // group, j % tile].astype("float32")
        return (integer_weight(values, j // tile, k, j % tile, bits) - zero) * scale

    return te.compute((*lead, n), lambda *i: te.sum(x[(*i[:-1], k)] * weight(k, i[-1]), axis=k), name=GEMM_BLOCK)


@tvm.ir.transform.module_pass(opt_level=0, name="RwkvEdgeCpuGemm")
class ScheduleGemms:
    """Schedule every fused PrimFunc built around a packed GEMM; ``count`` says how many."""

    def __init__(self, params: ScheduleParams) -> None:
        self.params = params
        self.count = 0

    def transform_module(self, mod: tvm.IRModule, _ctx) -> tvm.IRModule:
        scheduled = {}
        for gvar, func in mod.functions_items():
            if isinstance(func, tirx.PrimFunc):
                sch = schedule_gemm(func, self.params)
                if sch is not None:
                    scheduled[gvar] = sch.mod["main"].with_attr("tirx.is_scheduled", True)
        for gvar, func in scheduled.items():
            mod[gvar] = func
        self.count += len(scheduled)
        return mod


def schedule_gemm(func: tirx.PrimFunc, params: ScheduleParams) -> s_tir.Schedule | None:
    """Tiles in parallel; per tile, row blocks whose ``rows x tile`` accumulators stay in registers
    over the K loop; the epilogue per row block. None unless ``func`` holds a packed GEMM."""
    sch = s_tir.Schedule(func)
    try:
        block = sch.get_sblock(GEMM_BLOCK)
    except (RuntimeError, ValueError):
        return None
    try:
        inline_producers(sch, block)
        *lead, t, n, k = sch.get_loops(block)
        t_extent, n_extent = int(sch.get(t).extent), int(sch.get(n).extent)
        if n_extent % params.tile:
            return None
        rows = max(r for r in range(1, params.rows + 1) if t_extent % r == 0)  # at most the target's, dividing T
        n_outer, n_inner = sch.split(n, [None, params.tile])
        t_outer, t_inner = sch.split(t, [None, rows])
        unroll = params.unroll if int(sch.get(k).extent) % params.unroll == 0 else 1
        k_outer, k_inner = sch.split(k, [None, unroll])
        sch.reorder(*lead, n_outer, t_outer, k_outer, k_inner, t_inner, n_inner)
        outer = sch.fuse(*lead, n_outer)
        accumulate_with_epilogue(sch, block, t_outer)
        sch.vectorize(n_inner)
        sch.unroll(t_inner)
        if unroll > 1:
            sch.unroll(k_inner)
        return finish_tiled_reduction(sch, block, outer, k_outer, n_extent // params.tile > 1)
    except (RuntimeError, ValueError):
        return None
