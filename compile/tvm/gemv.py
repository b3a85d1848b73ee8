"""The fp32 GEMV of the decode step: one row of activations times a packed weight matrix.

Its weights are packed (N / tile, K, tile) (``layout.pack_weight``) by the packing rewrite
(``packing.py``). Its schedule: producers inlined (the interpolation is recomputed per tile: K flops
against K x tile loads), tiles in parallel over threads, the K loop unrolled, ``tile`` accumulators
held in vector registers, the epilogue applied to each tile as it completes.
"""

from __future__ import annotations

from tvm import s_tir, te, tirx

from .tir import accumulate_with_epilogue, find_block, finish_tiled_reduction, inline_producers
from .tuning import ScheduleParams

GEMV_BLOCK = "gemv"  # the name of the packed GEMV's reduction block, found again after fusion
MATMUL_BLOCK = "matmul"  # TVM's matmul: one row times an activation matrix (the WKV read-out r @ S)


def packed_gemv(x: te.Tensor, packed: te.Tensor, n: int, name: str = GEMV_BLOCK) -> te.Tensor:
    """y[..., j] = sum_k x[..., k] * W[k, j] with W stored as packed[j // tile, k, j % tile]: (..., K) -> (..., n),
    n a multiple of the tile (the padding columns are zero). Over T rows ((..., T, K)) it is the prefill
    GEMM's compute too, under the block name its schedule looks for (``compile/tvm/gemm.py``)."""
    *lead, k_len = x.shape
    tile = packed.shape[2]
    k = te.reduce_axis((0, k_len), "k")
    return te.compute((*lead, n), lambda *i: te.sum(x[(*i[:-1], k)] * packed[i[-1] // tile, k, i[-1] % tile], axis=k),
                      name=name)


def schedule_gemv(func: tirx.PrimFunc, params: ScheduleParams) -> s_tir.Schedule | None:
    """Tiles over output columns in parallel, K unrolled, accumulators in registers, epilogue per tile.

    Also schedules TVM's own ``matmul`` of one row by a matrix whose columns are contiguous (the
    WKV read-out, per head): the same loop nest over an unpacked matrix."""
    sch = s_tir.Schedule(func)
    block = find_block(sch, (GEMV_BLOCK, MATMUL_BLOCK))
    if block is None:
        return None
    try:
        inline_producers(sch, block)
        *lead, n, k = sch.get_loops(block)
        n_extent = int(sch.get(n).extent)  # a multiple of the tile: the rewrite pads N
        tile = params.tile
        if n_extent % tile:
            return None
        n_outer, n_inner = sch.split(n, [None, tile])
        unroll = params.unroll if int(sch.get(k).extent) % params.unroll == 0 else 1
        k_outer, k_inner = sch.split(k, [None, unroll])
        sch.reorder(*lead, n_outer, k_outer, k_inner, n_inner)
        outer = sch.fuse(*lead, n_outer)
        accumulate_with_epilogue(sch, block, outer)
        sch.vectorize(n_inner)
        if unroll > 1:
            sch.unroll(k_inner)
        return finish_tiled_reduction(sch, block, outer, k_outer, n_extent // tile > 1)
    except (RuntimeError, ValueError):
        return None
