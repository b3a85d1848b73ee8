"""CPU schedules for the decode step: packed weight GEMVs and parallel, vectorised elementwise kernels.

A decode step is a chain of matrix-vector products over weights that do not fit in any cache, so
its speed is the speed at which it streams weights from memory. Two things get it there:

1. **Packed weights** (a Relax rewrite, before fusion). Every ``matmul(x, W)`` with a constant
   ``W`` (K, N) becomes a GEMV over ``W`` repacked as (N / tile, K, tile): one tile of ``tile``
   output columns reads one contiguous block of K x tile weights, so each thread streams memory
   front to back. Relax's fusion then folds the token-shift interpolation before it and the
   activation or residual add after it into the same kernel, as it does for ``matmul``.
2. **Schedules** (TIR, after fusion), per fused kernel:
   - GEMV: producers inlined (the interpolation is recomputed per tile: K flops against K x tile
     loads), tiles in parallel over threads, the K loop unrolled, ``tile`` accumulators held in
     vector registers, the epilogue applied to each tile as it completes;
   - elementwise kernels (the WKV state update, interpolations): every intermediate inlined, the
     output loops fused, split across threads and vectorised;
   - anything else (norms over one row of C, small reductions) keeps the default lowering.

Tile width and unroll depth are per target (``targets/tuned/*.json``).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import tvm
from tvm import relax, s_tir, te, tirx
from tvm.relax.expr_functor import PyExprMutator, mutator

from ..errors import OptionError
from .intdot import emit_intdot, intdot_shapes, pack_intdot, schedule_intdot
from .params import Weight, WeightTable
from .quantized import QGEMV_BLOCK, pack_quantized, quantized_gemv, quantized_shapes, schedule_quantized_gemv

GEMV_BLOCK = "gemv"  # the name of the packed GEMV's reduction block, found again after fusion
MATMUL_BLOCK = "matmul"  # TVM's matmul: one row times an activation matrix (the WKV read-out r @ S)
PARALLEL_MIN = 4096  # elementwise kernels smaller than this stay on one thread


@dataclass(frozen=True)
class ScheduleParams:
    """What a target tunes: GEMV tile width (output columns per tile, a multiple of the vector
    width), unroll depth of the K loop, the vector width of elementwise kernels (floats), the
    rows per register block of the prefill GEMMs (rows x tile accumulators, ``compile/gemm.py``), and
    the int8 dot instruction of int8-compute bundles ("vnni", "sdot"; "" for fp32 compute,
    ``compile/intdot.py``): set by the compiler from the target, not tuned."""

    tile: int = 32
    unroll: int = 4
    vector: int = 8
    rows: int = 8
    dot: str = ""

    def __post_init__(self) -> None:
        if self.tile % self.vector or self.unroll < 1 or self.rows < 1:
            raise OptionError(f"schedule parameters out of range: {self} (the tile must be a multiple of the vector "
                              "width, the unroll at least 1); fix targets/tuned/<target>.json")


def pack_gemv_weights(mod: tvm.IRModule, table: WeightTable, params: ScheduleParams, bits: int = 32,
                      group: int = 0) -> tuple[tvm.IRModule, dict[str, int]]:
    """Rewrite ``matmul(x, W)`` with a weight ``W`` (2-D, one of ``table``'s or a large constant) and one
    row in ``x`` into packed GEMVs; returns the module and the counts. ``bits`` 8 or 4 (a quantized
    export, groups of ``group``): every ``W`` that stands for the export's quantization (MatMulNBits)
    becomes a quantized GEMV (``compile/quantized.py``), the others stay fp32."""
    rewriter = PackConstantMatmuls(mod, table, params.tile, bits, group, one_row=True,
                                   dense=(packed_gemv, GEMV_BLOCK), quantized=(quantized_gemv, QGEMV_BLOCK),
                                   dot=params.dot)
    mod = rewriter.rewrite(mod)
    counts = {"packed gemv": rewriter.dense}
    if bits < 32:
        counts[f"int{bits} gemv" + (f" ({params.dot})" if params.dot else "")] = rewriter.quantized
    return mod, counts


def packed_gemv(x: te.Tensor, packed: te.Tensor, n: int, name: str = GEMV_BLOCK) -> te.Tensor:
    """y[..., j] = sum_k x[..., k] * W[k, j] with W stored as packed[j // tile, k, j % tile]: (..., K) -> (..., n),
    n a multiple of the tile (the padding columns are zero). Over T rows ((..., T, K)) it is the prefill
    GEMM's compute too, under the block name its schedule looks for (``compile/gemm.py``)."""
    *lead, k_len = x.shape
    tile = packed.shape[2]
    k = te.reduce_axis((0, k_len), "k")
    return te.compute((*lead, n), lambda *i: te.sum(x[(*i[:-1], k)] * packed[i[-1] // tile, k, i[-1] % tile], axis=k),
                      name=name)


def pack_weight(weight: np.ndarray, tile: int) -> np.ndarray:
    """(K, N) -> (ceil(N / tile), K, tile), zero-padded: tile j holds columns j*tile ... j*tile + tile - 1."""
    k_len, n = weight.shape
    groups = -(-n // tile)
    padded = np.zeros((k_len, groups * tile), dtype=weight.dtype)
    padded[:, :n] = weight
    return np.ascontiguousarray(padded.reshape(k_len, groups, tile).transpose(1, 0, 2))


@mutator
class PackConstantMatmuls(PyExprMutator):
    """Rewrites ``matmul(x, W)`` with a 2-D weight ``W`` (K, N) of ``table`` into a packed product: one row
    in ``x`` (``one_row``: the decode GEMVs) or T rows (the prefill GEMMs). ``W`` becomes a new weight,
    (N / tile, K, tile) tiles for the ``dense`` kernel, or, where it stands for a ``bits``-bit
    quantization (an export's MatMulNBits), its integers and scales in the same tiles
    (``pack_quantized``) for the ``quantized`` kernel; each kernel is (TE function, block name). With
    ``dot`` (int8 compute) a quantized matrix instead becomes the activation rounding and the integer
    dot product of ``compile/intdot.py``. No weight is computed here: the tiles are made as the params
    file is written, and equal tiles in ``main`` and ``prefill`` are one parameter (``compile/params.py``)."""

    def __init__(self, mod: tvm.IRModule, table: WeightTable, tile: int, bits: int, group: int, one_row: bool,
                 dense: tuple, quantized: tuple, dot: str = "") -> None:
        super().__init__(mod)
        self.table, self.tile, self.bits, self.group, self.one_row, self.dot = table, tile, bits, group, one_row, dot
        self.kernels = {"dense": dense, "quantized": quantized}
        self.dense = self.quantized = 0  # how many of each
        self.matmul = tvm.ir.Op.get("relax.matmul")

    def rewrite(self, mod: tvm.IRModule) -> tvm.IRModule:
        for gvar, func in mod.functions_items():
            if isinstance(func, relax.Function):
                self.builder_.update_func(gvar, self.visit_expr(func))
        return self.builder_.get()

    def visit_call_(self, call):
        call = super().visit_call_(call)
        source = self.table.weight(call.args[1]) if call.op == self.matmul else None
        if source is None or len(source.shape) != 2:
            return call
        x_shape = call.args[0].ty.shape
        if x_shape is None or any(not isinstance(d, tirx.IntImm) for d in x_shape):
            return call
        dims = [int(d) for d in x_shape]  # (..., T, K)
        k_len, n = source.shape
        rows = dims[-2] if len(dims) >= 2 else 1
        if dims[-1] != k_len or any(d != 1 for d in dims[:-2]) or (rows == 1) != self.one_row:
            return call
        padded = -(-n // self.tile) * self.tile  # N rounded up to whole tiles (vocabularies such as 50277)
        quantized = source.quantized is not None and source.bits == self.bits and source.group == self.group
        if quantized and self.dot:
            self.quantized += 1
            values, scales = self._derived(source, f"intdot/{self.dot}", intdot_shapes(source, self.tile, self.dot, padded),
                                           lambda: pack_intdot(source.quantized(), self.tile, self.dot))
            out = emit_intdot(self.builder_, call.args[0], values, scales, source.group, source.bits, self.dot, padded)
            return unpadded(self.builder_, out, dims, padded, n)
        if quantized:
            self.quantized += 1
            function, name = self.kernels["quantized"]
            values, scales = self._derived(source, "quantized", quantized_shapes(source, self.tile, padded),
                                           lambda: pack_quantized(source.quantized(), self.tile))
            args = (values, scales, padded, source.bits)
        else:
            self.dense += 1
            function, name = self.kernels["dense"]
            shape = (padded // self.tile, k_len, self.tile)
            args = (self.table.derive(f"packed/{self.tile}", source, shape, source.dtype,
                                      lambda: pack_weight(np.asarray(source), self.tile)), padded)
        out = self.builder_.call_te(function, call.args[0], *args, primfunc_name_hint=name)
        return unpadded(self.builder_, out, dims, padded, n)

    def _derived(self, source: Weight, how: str, shapes: tuple, pack) -> tuple:
        """The variables of the two arrays ``pack()`` makes of ``source`` (values, scales), each
        ``shapes[i]`` = (shape, dtype)."""
        return tuple(self.table.derive(f"{how}/{self.tile}/{i}", source, shape, dtype, lambda i=i: pack()[i])
                     for i, (shape, dtype) in enumerate(shapes))


@tvm.ir.transform.module_pass(opt_level=0, name="RwkvEdgeCpuSchedule")
class ApplyCpuSchedules:
    """Schedule every PrimFunc that one of the rules recognises; the rest keep the default lowering."""

    def __init__(self, params: ScheduleParams) -> None:
        self.params = params
        self.counts: dict[str, int] = {}  # rule -> kernels it scheduled

    def transform_module(self, mod: tvm.IRModule, _ctx) -> tvm.IRModule:
        scheduled = {}
        for gvar, func in mod.functions_items():
            if not isinstance(func, tirx.PrimFunc) or func.attrs.get("tirx.is_scheduled"):
                continue  # scheduled already (the GEMMs, compile/gemm.py)
            for name, rule in (("gemv", schedule_gemv), ("quantized gemv", schedule_quantized_gemv),
                               ("int8 dot", schedule_intdot),
                               ("elementwise", schedule_elementwise)):
                sch = rule(func, self.params)
                if sch is not None:
                    scheduled[gvar] = sch.mod["main"].with_attr("tirx.is_scheduled", True)
                    self.counts[name] = self.counts.get(name, 0) + 1
                    break
            else:
                self.counts["default"] = self.counts.get("default", 0) + 1
        for gvar, func in scheduled.items():
            mod[gvar] = func
        return mod


def schedule_gemv(func: tirx.PrimFunc, params: ScheduleParams) -> s_tir.Schedule | None:
    """Tiles over output columns in parallel, K unrolled, accumulators in registers, epilogue per tile.

    Also schedules TVM's own ``matmul`` of one row by a matrix whose columns are contiguous (the
    WKV read-out, per head): the same loop nest over an unpacked matrix."""
    sch = s_tir.Schedule(func)
    block = _find_block(sch, (GEMV_BLOCK, MATMUL_BLOCK))
    if block is None:
        return None
    try:
        _inline_producers(sch, block)
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
        if n_extent // tile > 1:
            sch.parallel(outer)
        init = sch.decompose_reduction(block, k_outer)  # last: loops cannot be annotated after it
        sch.vectorize(sch.get_loops(init)[-1])
        return sch
    except (RuntimeError, ValueError):
        return None


def schedule_elementwise(func: tirx.PrimFunc, params: ScheduleParams) -> s_tir.Schedule | None:
    """A kernel with no reduction: intermediates inlined, output loops fused, threads x vector lanes."""
    sch = s_tir.Schedule(func)
    try:
        blocks = sch.get_child_blocks(sch.get_sblock("root"))
        if any(_is_reduction(sch, b) for b in blocks):
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


def _find_block(sch: s_tir.Schedule, names: tuple[str, ...]):
    for name in names:
        try:
            return sch.get_sblock(name)
        except (RuntimeError, ValueError):
            continue
    return None


def _inline_producers(sch: s_tir.Schedule, block) -> None:
    """Inline every elementwise block that is not an output into its consumers: the interpolation
    feeding the GEMV, and side inputs of the epilogue (which must not stay outside the tile loop)."""
    root = sch.get_sblock("root")
    keep = [sch.get(b) for b in sch.get_output_blocks(root)] + [sch.get(block)]
    for other in reversed(sch.get_child_blocks(root)):
        if any(sch.get(other).same_as(k) for k in keep) or _is_reduction(sch, other):
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


def unpadded(builder, out, dims: list[int], padded: int, n: int):
    """``out`` (..., padded) of a packed product cut back to the matrix's ``n`` columns (vocabularies of
    no whole tiles, such as 50277)."""
    if padded == n:
        return out
    return relax.op.strided_slice(builder.emit(out), axes=[len(dims) - 1], begin=[0], end=[n])


def _epilogue(sch: s_tir.Schedule, block) -> list:
    """The chain of elementwise consumers after ``block``, nearest first."""
    chain = []
    consumers = sch.get_consumers(block)
    while len(consumers) == 1 and not _is_reduction(sch, consumers[0]):
        chain.append(consumers[0])
        consumers = sch.get_consumers(consumers[0])
    return chain


def _is_reduction(sch: s_tir.Schedule, block) -> bool:
    return any(iv.iter_type != tirx.IterVar.DataPar for iv in sch.get(block).iter_vars)
