"""GPU schedules for the decode step: row-major weight GEMVs, a per-head WKV rule, dlight for the rest.

A decode step on a GPU is a chain of matrix-vector products (memory bound: every weight is read
once per token) plus a small per-head state update. Three parts:

1. **Row GEMVs** (a Relax rewrite, before fusion). Every ``matmul(x, W)`` with a constant ``W``
   (K, N) and one row of ``x`` becomes a GEMV over ``W`` stored transposed, (N, K), optionally in
   fp16 (accumulated in fp32): each output row's weights are contiguous, which is the layout
   dlight's GEMV rule reads with whole warps (coalesced, vectorised loads, a warp-shuffle sum).
   int8 / int4 bundles store each ``W`` that stands for the export's quantization (a MatMulNBits,
   whose integers and fp16 scales ``compile/tvm/params.py``'s table holds: the projections) as those
   integers and scales in the same row-major order, and the GEMV reads them through a dequantize
   block, the structure of MLC-LLM's q4f16 kernels, which dlight's GEMV rule inlines into the
   reduction (``dequantized_gemv``); the others (LoRA factors, ...) stay fp32.
2. **Weights as parameters** (after the rewrite, ``compile/tvm/params.py`` as for CPU bundles): every
   weight (the table's, derived from the export's initializers without being computed, and any large
   constant) leaves the library and becomes a trailing parameter of ``main``, saved in
   ``params.safetensors`` (a GPU library holds kernels only; a 1.5B model's 6 GB of weights could
   not be linked into a shared object).
3. **Schedules** (TIR, after fusion), first match wins per kernel:
   - WKV state update (elementwise over a (1, H, N, N) state): one thread block per head, the
     head's N x N state read once and written once, every intermediate in registers;
   - per-head matrix-vector products with the state ((1, H, 1, K) @ (1, H, K, N): the WKV
     read-out and RWKV-7's S·a): one block per head, one thread per output column (coalesced
     state reads), the row vector staged in shared memory;
   - dlight's GEMV, Reduction, GeneralReduction rules, then Fallback for the rest (per kernel:
     dlight's GEMV rule can assert on some fused kernels).
"""

from __future__ import annotations

import string

import numpy as np
import tvm
from tvm import relax, s_tir, te, tirx
from tvm.relax.expr_functor import PyExprMutator, mutator

from ...errors import ToolError
from ...quantize import Quantized
from .params import LIFT_MIN_ELEMENTS, Weight, WeightTable, constant_weight, lift_weights
from .tir import find_block, is_reduction

GEMV_BLOCK = "gemv"
DEQUANTIZE_BLOCK = "dequantize"
WKV_THREADS = 256  # threads of the state-update block (one block per head)


def row_gemv(x: te.Tensor, weight: te.Tensor) -> te.Tensor:
    """y[n] = sum_k x[k] * W[n, k], summed in fp32 whatever W's dtype: (1, K) -> (1, N)."""
    n_len, k_len = weight.shape
    k = te.reduce_axis((0, k_len), "k")
    return te.compute((1, n_len), lambda i, n: te.sum(x[i, k] * weight[n, k].astype("float32"), axis=k),
                      name=GEMV_BLOCK)


def dequantized_gemv(x: te.Tensor, values: te.Tensor, scales: te.Tensor, bits: int) -> te.Tensor:
    """y[n] = sum_k x[k] * q[n, k] * s[n, k // group], summed in fp32: (1, K) -> (1, N).

    ``values``: int8 (N, K), or int4 two to a byte, (N, K / 2) uint8 holding q + 8 with the even k in
    the low nibble (``Quantized.packed``); ``scales``: fp16 (N, K / group). The dequantize block makes
    each weight q * s exactly (an fp16 scale times a small integer is exact in fp32), so the sums are
    the fp32 model's with the dequantized matrix; dlight inlines it into the GEMV's loads."""
    n_len, groups = scales.shape
    k_len = x.shape[1]
    group = k_len // groups

    def integer(n, k):
        if bits == 8:
            return values[n, k].astype("float32")
        nibble = (values[n, k // 2] >> ((k % 2) * 4).astype("uint8")) & tirx.const(15, "uint8")
        return nibble.astype("float32") - tirx.const(8.0, "float32")

    weight = te.compute((n_len, k_len), lambda n, k: integer(n, k) * scales[n, k // group].astype("float32"),
                        name=DEQUANTIZE_BLOCK)
    k = te.reduce_axis((0, k_len), "k")
    return te.compute((1, n_len), lambda i, n: te.sum(x[i, k] * weight[n, k], axis=k), name=GEMV_BLOCK)


def quantized_rows(found: Quantized) -> tuple[np.ndarray, np.ndarray]:
    """A quantized (N, K) matrix as ``dequantized_gemv`` reads it: int8 (N, K) values or int4 (N, K / 2)
    uint8 nibble pairs, and the fp16 (N, K / group) scales."""
    return (found.values if found.bits == 8 else found.packed()), found.scales


@mutator
class _GpuWeights(PyExprMutator):
    """Rewrites one-row matmuls by a 2-D weight (one of ``table``'s, or a constant) into row GEMVs over
    W^T in ``weight_dtype``, or, for ``bits`` 8 or 4, over the integers and scales of each weight that
    stands for such a quantization in groups of ``group`` (an export's MatMulNBits)."""

    def __init__(self, mod: tvm.IRModule, table: WeightTable, weight_dtype: str, bits: int = 32, group: int = 0) -> None:
        super().__init__(mod)
        self.table, self.weight_dtype, self.bits, self.group = table, weight_dtype, bits, group
        self.gemvs = self.quantized = 0
        self.matmul = tvm.ir.Op.get("relax.matmul")

    def visit_call_(self, call):
        call = super().visit_call_(call)
        source = self._source(call.args[1]) if call.op == self.matmul and len(call.args) == 2 else None
        if source is None or len(source.shape) != 2:
            return call
        k_len, n = source.shape
        shape = call.args[0].ty.shape
        dims = [int(d) for d in shape] if shape is not None else [0]
        if dims[-1] != k_len or any(d != 1 for d in dims[:-1]):  # not one row: not the decode step
            return call
        self.gemvs += 1
        x = self.builder_.emit(relax.op.reshape(call.args[0], (1, k_len)))
        if source.quantized is not None and source.bits == self.bits and source.group == self.group:
            self.quantized += 1
            values, scales = (self._derived(f"gpu/{name}", source, size, dtype,
                                            lambda i=i: quantized_rows(source.quantized())[i])
                              for i, (name, size, dtype) in enumerate(quantized_row_shapes(source)))
            y = self._emit_gemv(dequantized_gemv, x, [values, scales], source.bits)
        else:
            rows = self._derived(f"gpu/rows/{self.weight_dtype}", source, (n, k_len), self.weight_dtype,
                                 lambda: np.ascontiguousarray(np.asarray(source).T).astype(self.weight_dtype))
            y = self._emit_gemv(row_gemv, x, [rows])
        return relax.op.reshape(y, [*dims[:-1], n])

    def _emit_gemv(self, function, x, weights: list, *args) -> relax.Var:
        """``emit_te(function, x, *weights, *args)`` with the kernel's weight buffers named B, C, ... (as
        ``emit_te`` names a constant's) whatever the weights' variables are called: the kernels' source
        depends on the weights' shapes only."""
        stand_ins = [relax.Var(string.ascii_uppercase[1 + i], w.ty) for i, w in enumerate(weights)]
        call = self.builder_.call_te(function, x, *stand_ins, *args, primfunc_name_hint=GEMV_BLOCK)
        return self.builder_.emit(relax.Call(call.op, [call.args[0], relax.Tuple([x, *weights])], call.attrs,
                                             call.ty_args))

    def _source(self, expr) -> Weight | None:
        """The weight ``expr`` stands for: one of the table's, or a constant of any size."""
        weight = self.table.weight(expr)
        return constant_weight(expr) if weight is None and isinstance(expr, tvm.ir.expr.Constant) else weight

    def _derived(self, how: str, source: Weight, shape: tuple[int, ...], dtype: str, compute):
        """A weight made from ``source``: a table variable (computed as the params file is written), or,
        under LIFT_MIN_ELEMENTS elements, a constant the library keeps as every small constant."""
        if int(np.prod(shape)) < LIFT_MIN_ELEMENTS:
            return relax.const(compute())
        return self.table.derive(how, source, shape, dtype, compute)


def quantized_row_shapes(source: Weight) -> list[tuple[str, tuple[int, int], str]]:
    """(name, shape, dtype) of the two arrays ``quantized_rows`` makes of a quantized (K, N) weight."""
    k_len, n = source.shape
    values = ("values", (n, k_len), "int8") if source.bits == 8 else ("nibbles", (n, k_len // 2), "uint8")
    return [values, ("scales", (n, k_len // source.group), "float16")]


def gpu_weights(mod: tvm.IRModule, table: WeightTable | None = None, weight_dtype: str = "float32", bits: int = 32,
                group: int = 0) -> tuple[tvm.IRModule, list[Weight], dict[str, int]]:
    """Row GEMVs over W^T in ``weight_dtype`` for every one-row ``matmul(x, W)`` by a 2-D weight (``table``:
    the weights ``import_graph`` bound; None: a module with constant weights), over the integers and
    scales of each ``W`` that stands for a ``bits``-bit quantization in groups of ``group``, then every
    weight moved into shared trailing parameters (``compile/tvm/params.py``). Returns the module, the
    parameters in order (``np.asarray`` computes each), and the counts: "row gemv" (all of them) and,
    for int8/int4, "int8 gemv" / "int4 gemv" (the quantized ones)."""
    table = table or WeightTable()
    rewriter = _GpuWeights(mod, table, weight_dtype, bits, group)
    for gvar, func in mod.functions_items():
        if isinstance(func, relax.Function):
            rewriter.builder_.update_func(gvar, rewriter.visit_expr(func))
    mod, values = lift_weights(rewriter.builder_.get(), table)
    counts = {"row gemv": rewriter.gemvs}
    if bits < 16:
        counts[f"int{bits} gemv"] = rewriter.quantized
    return mod, values, counts


@tvm.ir.transform.module_pass(opt_level=0, name="RwkvEdgeGpuSchedule")
class ApplyGpuSchedules:
    """The WKV rules, then dlight's GPU rules, per PrimFunc; ``counts`` says which rule took how many."""

    def __init__(self, target: tvm.target.Target, matmul: bool = False) -> None:
        self.target, self.matmul = target, matmul  # matmul: dlight's Matmul rule first (image graphs' GEMMs)
        self.counts: dict[str, int] = {}
        self.dequantizing: dict[str, int] = {}  # the same for the kernels that hold a dequantize block

    def transform_module(self, mod: tvm.IRModule, _ctx) -> tvm.IRModule:
        from tvm.s_tir import dlight

        rules = [("wkv update", _FunctionRule(schedule_state_update)), ("wkv matvec", _FunctionRule(schedule_head_matvec)),
                 *([("matmul", dlight.gpu.Matmul())] if self.matmul else []),
                 ("gemv", dlight.gpu.GEMV()), ("reduction", dlight.gpu.Reduction()),
                 ("general reduction", dlight.gpu.GeneralReduction()), ("fallback", dlight.gpu.Fallback())]
        scheduled = {}
        for gvar, func in mod.functions_items():
            if not isinstance(func, tirx.PrimFunc):
                continue
            for name, rule in rules:
                try:
                    sch = rule.apply(func, self.target, False)
                except Exception:  # dlight's GEMV rule asserts on some fused kernels: try the next rule
                    sch = None
                if isinstance(sch, list):
                    sch = sch[0] if sch else None
                if sch is not None:
                    scheduled[gvar] = sch.mod["main"].with_attr("tirx.is_scheduled", True)
                    self.counts[name] = self.counts.get(name, 0) + 1
                    if find_block(s_tir.Schedule(func), (DEQUANTIZE_BLOCK,)) is not None:
                        self.dequantizing[name] = self.dequantizing.get(name, 0) + 1
                    break
            else:
                raise ToolError(f"no GPU schedule applies to kernel {gvar.name_hint} (not even dlight's Fallback): "
                                "a TVM version this rwkv-edge was not built against?")
        for gvar, func in scheduled.items():
            mod[gvar] = func
        return mod


class _FunctionRule:
    """A schedule function in dlight's rule interface."""

    def __init__(self, function) -> None:
        self.function = function

    def apply(self, func: tirx.PrimFunc, target, _tunable: bool):
        return self.function(func)


def schedule_state_update(func: tirx.PrimFunc) -> s_tir.Schedule | None:
    """An elementwise kernel whose output is a (1, H, N, N) state: block per head, state in registers."""
    sch = s_tir.Schedule(func)
    root = sch.get_sblock("root")
    blocks = sch.get_child_blocks(root)
    outputs = sch.get_output_blocks(root)
    if len(outputs) != 1 or any(is_reduction(sch, b) for b in blocks):
        return None
    extents = _extents(sch, outputs[0])
    if len(extents) != 4 or extents[0] != 1 or extents[2] != extents[3] or extents[2] < 16:
        return None
    try:
        for block in reversed(blocks):
            if not sch.get(block).same_as(sch.get(outputs[0])):
                sch.compute_inline(block)
        batch, head, row, col = sch.get_loops(outputs[0])
        cell = sch.fuse(row, col)
        threads = min(WKV_THREADS, extents[2] * extents[3])
        _, thread = sch.split(cell, [None, threads])
        sch.reorder(thread)  # serial loop over the head's cells outside, threads inside: coalesced
        sch.bind(sch.fuse(batch, head), "blockIdx.x")
        sch.bind(thread, "threadIdx.x")
        return sch
    except (RuntimeError, ValueError):
        return None


def schedule_head_matvec(func: tirx.PrimFunc) -> s_tir.Schedule | None:
    """(1, H, 1, K) @ (1, H, K, N) per head, plus elementwise pro/epilogue: block per head, thread per column."""
    sch = s_tir.Schedule(func)
    root = sch.get_sblock("root")
    reductions = [b for b in sch.get_child_blocks(root) if is_reduction(sch, b)]
    if len(reductions) != 1:
        return None
    block = reductions[0]
    extents = _extents(sch, block)
    if len(extents) != 5 or extents[0] != 1 or extents[2] != 1 or extents[3] < 16:
        return None
    try:
        output = sch.get(sch.get_output_blocks(root)[0])
        for other in reversed(sch.get_child_blocks(root)):
            if not (sch.get(other).same_as(sch.get(block)) or sch.get(other).same_as(output)):
                sch.compute_inline(other)  # the row vector's producers: recomputed per read, in registers
        accumulate = sch.cache_write(block, 0, "local")
        consumers = sch.get_consumers(accumulate)
        while consumers:  # the epilogue, applied as each column's sum is written
            sch.reverse_compute_inline(consumers[0])
            consumers = sch.get_consumers(accumulate)
        batch, head, one, col, k = sch.get_loops(block)
        head_loop = sch.fuse(batch, head, one)
        vector = _vector_input(sch, block)
        if vector is not None and extents[3] == extents[4]:  # K loaders = N threads
            shared = sch.cache_read(block, vector, "shared")
            sch.compute_at(shared, head_loop)
            sch.bind(sch.fuse(*sch.get_loops(shared)[1:]), "threadIdx.x")
        sch.bind(head_loop, "blockIdx.x")
        sch.bind(col, "threadIdx.x")
        sch.reverse_compute_at(accumulate, col)
        sch.decompose_reduction(block, k)
        return sch
    except (RuntimeError, ValueError):
        return None


def _vector_input(sch: s_tir.Schedule, block) -> int | None:
    """Index of the read buffer that is the per-head row vector (1, H, 1, K), if any."""
    for index, region in enumerate(sch.get(block).reads):
        shape = [int(d) for d in region.source.shape]
        if len(shape) == 4 and shape[2] == 1:
            return index
    return None


def _extents(sch: s_tir.Schedule, block) -> list[int]:
    try:
        return [int(sch.get(loop).extent) for loop in sch.get_loops(block)]
    except TypeError:  # a symbolic extent
        return []
