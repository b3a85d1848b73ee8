"""TIR schedule steps that several kernels' schedules share (the GEMV, quantized GEMV, int8 dot, GEMM
and GPU rules): finding a block by name, inlining a kernel's producers, and register accumulators
with the elementwise epilogue applied per tile."""

from __future__ import annotations

from tvm import s_tir, tirx


def find_block(sch: s_tir.Schedule, names: tuple[str, ...]):
    """The first block of ``sch`` named one of ``names``; None if there is none."""
    for name in names:
        try:
            return sch.get_sblock(name)
        except (RuntimeError, ValueError):
            continue
    return None


def inline_producers(sch: s_tir.Schedule, block) -> None:
    """Inline every elementwise block that is not an output into its consumers: the interpolation
    feeding the GEMV, and side inputs of the epilogue (which must not stay outside the tile loop)."""
    root = sch.get_sblock("root")
    keep = [sch.get(b) for b in sch.get_output_blocks(root)] + [sch.get(block)]
    for other in reversed(sch.get_child_blocks(root)):
        if any(sch.get(other).same_as(k) for k in keep) or is_reduction(sch, other):
            continue
        try:
            sch.compute_inline(other)
        except s_tir.ScheduleError:
            pass


def accumulate_with_epilogue(sch: s_tir.Schedule, block, at) -> None:
    """``block``'s sums in registers (a local cache written back under loop ``at``, vectorised), and
    the elementwise epilogue after it (activation, residual) inlined into the write-back, or applied
    under ``at`` where it reads another tensor as well."""
    accumulate = sch.cache_write(block, 0, "local")
    sch.reverse_compute_at(accumulate, at)
    sch.vectorize(sch.get_loops(accumulate)[-1])
    for consumer in _epilogue(sch, accumulate):
        try:
            sch.reverse_compute_inline(consumer)
        except s_tir.ScheduleError:
            sch.reverse_compute_at(consumer, at)
            sch.vectorize(sch.get_loops(consumer)[-1])


def finish_tiled_reduction(sch: s_tir.Schedule, block, outer, k_outer, parallel: bool) -> s_tir.Schedule:
    """The last steps of a tiled reduction: its outer loop parallel where there is more than one tile,
    the initialisation split off at ``k_outer`` and vectorised (last: loops cannot be annotated after it)."""
    if parallel:
        sch.parallel(outer)
    init = sch.decompose_reduction(block, k_outer)
    sch.vectorize(sch.get_loops(init)[-1])
    return sch


def is_reduction(sch: s_tir.Schedule, block) -> bool:
    """Whether ``block`` has a reduction axis."""
    return any(iv.iter_type != tirx.IterVar.DataPar for iv in sch.get(block).iter_vars)


def _epilogue(sch: s_tir.Schedule, block) -> list:
    """The chain of elementwise consumers after ``block``, nearest first."""
    chain = []
    consumers = sch.get_consumers(block)
    while len(consumers) == 1 and not is_reduction(sch, consumers[0]):
        chain.append(consumers[0])
        consumers = sch.get_consumers(consumers[0])
    return chain
