"""The CPU schedule of elementwise kernels (the WKV state update, interpolations): every intermediate
inlined, the output loops fused, split across threads and vectorised."""

from __future__ import annotations

from tvm import s_tir, tirx

from .tir import is_reduction
from .tuning import ScheduleParams

PARALLEL_MIN = 4096  # elementwise kernels smaller than this stay on one thread


def schedule_elementwise(func: tirx.PrimFunc, params: ScheduleParams) -> s_tir.Schedule | None:
    """A kernel with no reduction: intermediates inlined, output loops fused, threads x vector lanes."""
    sch = s_tir.Schedule(func)
    try:
        blocks = sch.get_child_blocks(sch.get_sblock("root"))
        if any(is_reduction(sch, b) for b in blocks):
            return None
        outputs = sch.get_output_blocks(sch.get_sblock("root"))
        for block in reversed(blocks):
            if not any(sch.get(block).same_as(sch.get(o)) for o in outputs):
                try:
                    sch.compute_inline(block)
                except s_tir.ScheduleError:
                    pass
        for block in sch.get_output_blocks(sch.get_sblock("root")):
            loops = sch.get_loops(block)
            if not loops:
                continue
            fused = sch.fuse(*loops) if len(loops) > 1 else loops[0]
            extent = int(sch.get(fused).extent)
            if extent < params.vector:
                continue
            if extent % params.vector == 0:
                outer, inner = sch.split(fused, [None, params.vector])
                sch.vectorize(inner)
                fused = outer
            if extent >= PARALLEL_MIN:
                sch.parallel(fused)
        return sch
    except (RuntimeError, ValueError, TypeError):
        return None
