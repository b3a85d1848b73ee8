"""The packing rewrite of the CPU build (Relax, before fusion): every ``matmul(x, W)`` with a weight ``W``
(K, N) becomes a packed kernel over ``W`` stored in tiles of ``tile`` output columns (``layout.py``), so
each thread streams one contiguous block of weights front to back; Relax's fusion then folds the
token-shift interpolation before it and the activation or residual add after it into the same
kernel, as it does for ``matmul``. Which kernel: the fp32 GEMV (``gemv.py``), the quantized GEMV
(``quantized.py``) for an int8/int4 export's quantized matrices, or the int8 dot (``intdot.py``) for
those in int8 compute; the prefill GEMMs (``gemm.py``) reuse the rewrite over T rows.
"""

from __future__ import annotations

import numpy as np
import tvm
from tvm import relax, tirx
from tvm.relax.expr_functor import PyExprMutator, mutator

from .gemv import GEMV_BLOCK, packed_gemv
from .intdot import emit_intdot, intdot_shapes, pack_intdot
from .layout import pack_weight
from .params import Weight, WeightTable
from .quantized import QGEMV_BLOCK, pack_quantized, quantized_gemv, quantized_shapes
from .tuning import ScheduleParams


def pack_gemv_weights(mod: tvm.IRModule, table: WeightTable, params: ScheduleParams, bits: int = 32,
                      group: int = 0) -> tuple[tvm.IRModule, dict[str, int]]:
    """Rewrite ``matmul(x, W)`` with a weight ``W`` (2-D, one of ``table``'s or a large constant) and one
    row in ``x`` into packed GEMVs; returns the module and the counts. ``bits`` 8 or 4 (a quantized
    export, groups of ``group``): every ``W`` that stands for the export's quantization (MatMulNBits)
    becomes a quantized GEMV (``compile/tvm/quantized.py``), the others stay fp32."""
    rewriter = PackConstantMatmuls(mod, table, params.tile, bits, group, one_row=True,
                                   dense=(packed_gemv, GEMV_BLOCK), quantized=(quantized_gemv, QGEMV_BLOCK),
                                   dot=params.dot)
    mod = rewriter.rewrite(mod)
    counts = {"packed gemv": rewriter.dense}
    if bits < 32:
        counts[f"int{bits} gemv" + (f" ({params.dot})" if params.dot else "")] = rewriter.quantized
    return mod, counts


@mutator
class PackConstantMatmuls(PyExprMutator):
    """Rewrites ``matmul(x, W)`` with a 2-D weight ``W`` (K, N) of ``table`` into a packed product: one row
    in ``x`` (``one_row``: the decode GEMVs) or T rows (the prefill GEMMs). ``W`` becomes a new weight,
    (N / tile, K, tile) tiles for the ``dense`` kernel, or, where it stands for a ``bits``-bit
    quantization (an export's MatMulNBits), its integers and scales in the same tiles
    (``pack_quantized``) for the ``quantized`` kernel; each kernel is (TE function, block name). With
    ``dot`` (int8 compute) a quantized matrix instead becomes the activation rounding and the integer
    dot product of ``compile/tvm/intdot.py``. No weight is computed here: the tiles are made as the params
    file is written, and equal tiles in ``main`` and ``prefill`` are one parameter (``compile/tvm/params.py``)."""

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


def unpadded(builder, out, dims: list[int], padded: int, n: int):
    """``out`` (..., padded) of a packed product cut back to the matrix's ``n`` columns (vocabularies of
    no whole tiles, such as 50277)."""
    if padded == n:
        return out
    return relax.op.strided_slice(builder.emit(out), axes=[len(dims) - 1], begin=[0], end=[n])
