"""The CPU schedule of row-wise kernels of a prefill call (the layer norms, the activation rounding of int8
compute, the group norm's statistics): every block of the kernel runs over the same leading rows (the
chunk's tokens) and reads only its own row of what the blocks before it wrote. TVM's default lowering
runs each block over all rows in turn on one thread; here the rows become one loop, every block computed
inside it, split across threads, the last axis of each elementwise block vectorised."""

from __future__ import annotations

from tvm import s_tir, tirx

from .tir import is_reduction
from .tuning import ScheduleParams

ROWS_MIN = 2  # a decode step's kernels (one row) keep the default lowering


def schedule_rows(func: tirx.PrimFunc, params: ScheduleParams) -> s_tir.Schedule | None:
    """A kernel of two or more blocks, each over the same leading rows (spatial loops of the same
    extents) then its own axes: one parallel loop over the rows, each block's row computed inside it.
    None where the kernel is not one (one block, a single row, or a block that reads across rows)."""
    sch = s_tir.Schedule(func)
    try:
        blocks = sch.get_child_blocks(sch.get_sblock("root"))
        if len(blocks) < 2:
            return None
        depth = _row_depth(sch, blocks)
        first = sch.get_loops(blocks[0])[:depth]
        rows = sch.fuse(*first) if depth > 1 else first[0]
        if int(sch.get(rows).extent) < ROWS_MIN:
            return None
        for block in blocks[1:]:
            sch.reverse_compute_at(block, rows)
        for block in blocks:
            loops = sch.get_loops(block)
            if not is_reduction(sch, block) and len(loops) > 1 and int(sch.get(loops[-1]).extent) % params.vector == 0:
                _, inner = sch.split(loops[-1], [None, params.vector])
                sch.vectorize(inner)
        sch.parallel(rows)
        return sch
    except (RuntimeError, ValueError, TypeError, s_tir.ScheduleError):
        return None


def _row_depth(sch: s_tir.Schedule, blocks) -> int:
    """How many leading loops every block shares as rows: the longest common prefix of the extents of
    their spatial loops."""
    prefixes = []
    for block in blocks:
        loops = sch.get_loops(block)
        kinds = [iv.iter_type for iv in sch.get(block).iter_vars]
        spatial = [int(sch.get(loop).extent) for loop, kind in zip(loops, kinds) if kind == tirx.IterVar.DataPar]
        prefixes.append(spatial)
    depth = 0
    while all(len(p) > depth for p in prefixes) and len({p[depth] for p in prefixes}) == 1:
        depth += 1
    if depth == 0:
        raise ValueError("no common rows")
    return depth
