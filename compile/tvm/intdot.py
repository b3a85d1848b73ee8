"""Integer dot-product GEMVs and GEMMs for int8/int4 TVM CPU bundles ("int8 compute").

Where the target has a 4-way int8 dot instruction (x86 AVX-512 VNNI or AVX-VNNI ``vpdpbusd``, ARM
``sdot``), an
int8/int4 projection rounds its input activations to int8 and sums integer products, as llama.cpp
does for Q8_0 / Q4_0:

1. **Activations** (``quantize_activations``, one kernel per projection and row, before the dot):
   per group g of the weight's groups along K, ``dx[g] = amax|x_g| / 127`` (fp32) and
   ``xq[k] = round(x[k] / dx[g])`` in [-127, 127] (half to even; all zero where ``dx = 0``), and
   ``xsum[g] = sum_{k in g} xq[k]`` (int32, for the zero point).
2. **Dot** (``intdot``): ``acc[g, j] = sum_{k in g} xq[k] * u[k, j]`` in int32 over the stored weights
   ``u = q + zero``, then ``y[j] = sum_g float(acc[g, j] - zero * xsum[g]) * dx[g] * s[g, j]``.

Weights (``pack_intdot``), four consecutive k of one column in four adjacent bytes, as both
instructions read them:

- int8: (N / tile, K / 4, tile, 4); x86 stores ``q + 128`` as uint8 (``vpdpbusd`` multiplies
  unsigned bytes by signed ones: the weights are its unsigned operand, the activations its signed
  one), ARM stores ``q`` as int8 (``sdot`` is signed by signed), zero 0;
- int4: (N / tile, K / 8, tile, 4) uint8, still half a byte a weight: byte (b, j, r) holds
  ``q + 8`` of k = 8 b + r in its low nibble and of k = 8 b + 4 + r in its high nibble, so one mask
  and one shift of a whole vector give two (tile, 4) blocks in the dot layout; zero 8;
- scales: fp16, (N / tile, K / group, tile), as the fp32-compute kernels store them.

The schedule is the quantized GEMV's (``compile/tvm/quantized.py``): tiles of ``tile`` columns in
parallel, per row and group the int32 sums in vector registers, each (lanes, 4) block one
instruction (tensorized with the intrinsics below), the group's sum scaled into fp32 accumulators,
the epilogue per tile. The prefill GEMM is the same kernel over T rows, each row rounded on its own,
blocked in registers: inside a tile, blocks of rows (as many as the ISA's ``accumulators`` hold for
a whole tile: 2 for AVX-512 VNNI at tile 64; the largest divisor of T up to it) whose int32 and fp32
accumulators stay in registers over the K loop, so that each (lanes, 4) block of weights loaded
serves one instruction per row (one row at a time loaded a block per instruction: the weights'
L1/L2 traffic bounded it, and int8, twice int4's bytes, ran slower than int4). Each block reads
the tile's weights front to back, as the GEMV does, so that the first block streams them from
memory in order (blocks of half a tile, half of each 256-byte row at a time, were timed too: as
fast in cache, but no faster than row by row once the weights came from memory, as
``scripts/bench_gemm.py --streamed`` streams them). Each output
still sums its groups in the GEMV's order with the GEMV's arithmetic: prefill computes what T
steps compute, bit for bit.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from tvm import s_tir, te, tirx
from tvm.script import tirx as T

from ...quantize import Quantized
from .layout import padded, tiled
from .tir import accumulate_with_epilogue, find_block, is_reduction

IGEMV_BLOCK = "igemv"  # the fp32 total over groups, found again after fusion
IGROUP_BLOCK = "igroup"  # the int32 sum over one group of K, tensorized
IUNPACK_BLOCK = "iunpack"  # int4: nibbles -> bytes in the dot layout, per (tile, 4) block


@dataclass(frozen=True)
class DotIsa:
    """A 4-way int8 dot instruction: ``lanes`` int32 sums per instruction, each of 4 byte products."""

    name: str
    lanes: int
    weight_dtype: str  # the instruction's weight operand: uint8 (vpdpbusd) or int8 (sdot)
    int8_zero: int  # added to int8 weights to fit weight_dtype
    intrin: str  # the registered TensorIntrin
    accumulators: int  # int32 sum vectors per GEMM register block (as many fp32 totals beside them)

    @property
    def instruction(self) -> str:
        return "sdot" if self.name == "sdot" else "vpdpbusd"


DOT_ISAS = {  # accumulators: 8 int32 + 8 fp32 of 32 registers (zmm, NEON), 4 + 4 of ymm's 16
    "vnni": DotIsa("vnni", 16, "uint8", 128, "rwkv_edge_vpdpbusd_16x4", accumulators=8),  # AVX-512 VNNI, zmm
    "avxvnni": DotIsa("avxvnni", 8, "uint8", 128, "rwkv_edge_vpdpbusd_8x4", accumulators=4),  # AVX-VNNI, ymm
    "sdot": DotIsa("sdot", 4, "int8", 0, "rwkv_edge_sdot_4x4", accumulators=8),
}


def pack_intdot(found: Quantized, tile: int, isa: str) -> tuple[np.ndarray, np.ndarray]:
    """Quantized (N, K) -> (values, scales) in the dot layout (module docstring); N padded to whole
    tiles (zero scales)."""
    spec = DOT_ISAS[isa]
    q, scales = padded(found, tile, np.int16)
    tiles, k_len = q.shape[0] // tile, q.shape[1]
    if found.bits == 8:
        values = (q + spec.int8_zero).astype(spec.weight_dtype).reshape(tiles * tile, k_len // 4, 4)  # (N, K/4, 4)
    else:
        nibbles = (q + 8).astype(np.uint8).reshape(tiles * tile, k_len // 8, 2, 4)  # (N, K/8, low|high, 4)
        values = nibbles[:, :, 0] | (nibbles[:, :, 1] << 4)  # (N, K/8, 4)
    blocks = values.reshape(tiles, tile, -1, 4).transpose(0, 2, 1, 3)  # (N/tile, K/4 or K/8, tile, 4)
    return np.ascontiguousarray(blocks), tiled(scales, tile)


def intdot_shapes(source, tile: int, isa: str, n: int) -> tuple:
    """((shape, dtype) of the values, of the scales) that ``pack_intdot`` makes of a quantized (K, N)
    weight ``source`` (its ``bits`` and ``group``), N padded to ``n``."""
    k_len = source.shape[0]
    per_block = 4 if source.bits == 8 else 8  # K values per 4-byte lane group
    dtype = DOT_ISAS[isa].weight_dtype if source.bits == 8 else "uint8"
    return ((n // tile, k_len // per_block, tile, 4), dtype), ((n // tile, k_len // source.group, tile), "float16")


def emit_intdot(builder, x, values, scales, group: int, bits: int, isa: str, n: int):
    """``x @ W`` for a quantized ``W`` in int8 compute, given ``pack_intdot``'s ``values`` and ``scales``
    (Relax expressions): the rounding of ``x`` (a kernel of its own, once per call) and the integer
    dot product, (..., n)."""
    from tvm import relax

    rounded = builder.emit_te(quantize_activations, x, group, primfunc_name_hint="quantize_activations")
    xq, dx, xsum = (builder.emit(relax.TupleGetItem(rounded, i)) for i in range(3))
    return builder.call_te(intdot, xq, dx, xsum, values, scales, n, bits, isa, primfunc_name_hint="intdot")


def quantize_activations(x: te.Tensor, group: int) -> list[te.Tensor]:
    """(..., K) fp32 -> xq (..., K) int8, dx (..., K/group) fp32, xsum (..., K/group) int32."""
    *lead, k_len = x.shape
    groups = k_len // group
    ka = te.reduce_axis((0, group), "ka")
    amax = te.compute((*lead, groups), lambda *i: te.max(tirx.abs(x[(*i[:-1], i[-1] * group + ka)]), axis=ka),
                      name="xamax")
    dx = te.compute((*lead, groups), lambda *i: amax[i] / tirx.const(127, "float32"), name="xscale")

    def rounded(*i):
        d = dx[(*i[:-1], i[-1] // group)]
        safe = tirx.Select(d > tirx.const(0, "float32"), d, tirx.const(1, "float32"))
        return tirx.Select(d > tirx.const(0, "float32"), tirx.nearbyint(x[i] / safe),
                           tirx.const(0, "float32")).astype("int8")

    xq = te.compute(x.shape, rounded, name="xquant")
    ks = te.reduce_axis((0, group), "ks")
    xsum = te.compute((*lead, groups), lambda *i: te.sum(xq[(*i[:-1], i[-1] * group + ks)].astype("int32"), axis=ks),
                      name="xqsum")
    return [xq, dx, xsum]


def intdot(xq: te.Tensor, dx: te.Tensor, xsum: te.Tensor, values: te.Tensor, scales: te.Tensor, n: int,
           bits: int, isa: str) -> te.Tensor:
    """y[..., j] = sum_g float(sum_{k in g} xq[k] u[k, j] - zero * xsum[g]) * dx[g] * s[g, j]: (..., K) -> (..., n)."""
    spec = DOT_ISAS[isa]
    *lead, k_len = xq.shape
    tiles, groups, tile = scales.shape
    group = k_len // groups
    blocks = group // 4  # (lanes, 4) blocks per group
    if bits == 8:
        weights, zero = values, spec.int8_zero
    else:
        def nibble(t, b, j, r):  # even b: the low nibbles, odd b: the high ones (constant shifts once k4 is unrolled)
            byte = values[t, b // 2, j, r]
            return tirx.Select(b % 2 == 0, byte & tirx.const(15, "uint8"),
                               byte >> tirx.const(4, "uint8")).astype(spec.weight_dtype)

        weights, zero = te.compute((tiles, k_len // 4, tile, 4), nibble, name=IUNPACK_BLOCK), 8
    k4 = te.reduce_axis((0, blocks), "k4")
    r = te.reduce_axis((0, 4), "r")
    partial = te.compute((*lead, groups, n), lambda *i: te.sum(
        xq[(*i[:-2], i[-2] * group + k4 * 4 + r)].astype("int32")
        * weights[i[-1] // tile, i[-2] * blocks + k4, i[-1] % tile, r].astype("int32"), axis=[k4, r]), name=IGROUP_BLOCK)

    def term(*i):  # (..., g, j)
        acc = partial[i] - zero * xsum[i[:-1]] if zero else partial[i]
        return acc.astype("float32") * dx[i[:-1]] * scales[i[-1] // tile, i[-2], i[-1] % tile].astype("float32")

    g = te.reduce_axis((0, groups), "g")
    return te.compute((*lead, n), lambda *i: te.sum(term(*i[:-1], g, i[-1]), axis=g), name=IGEMV_BLOCK)


def schedule_intdot(func: tirx.PrimFunc, params, rows: int | None = None) -> s_tir.Schedule | None:
    """Tiles in parallel; per row (GEMV) or block of rows (GEMM) and group, the (lanes, 4) blocks of the
    int32 sums tensorized onto the dot instruction, the group's sum scaled into fp32 accumulators;
    the epilogue per row or block. ``rows``: rows per block in place of the ISA's (1: row by row;
    ``scripts/bench_gemm.py`` compares them)."""
    if not params.dot:
        return None
    sch = s_tir.Schedule(func)
    total = find_block(sch, (IGEMV_BLOCK,))
    if total is None:
        return None
    spec = DOT_ISAS[params.dot]
    try:
        partial = sch.get_sblock(IGROUP_BLOCK)
        _inline_elementwise(sch, (IGROUP_BLOCK, IUNPACK_BLOCK))
        unpack = find_block(sch, (IUNPACK_BLOCK,))
        *lead, n, g = sch.get_loops(total)
        tile = params.tile
        if int(sch.get(n).extent) % tile or tile % spec.lanes:
            return None
        n_outer, n_inner = sch.split(n, [None, tile])
        t = sch.fuse(*lead) if len(lead) > 1 else lead[0]
        t_len = int(sch.get(t).extent)
        most = rows or max(1, spec.accumulators * spec.lanes // tile)  # rows whose sums fit the registers
        block = max(r for r in range(1, most + 1) if t_len % r == 0)  # rows per register block
        if block > 1:  # GEMM: blocks of block rows x the tile
            t_outer, t_inner = sch.split(t, [None, block])
            sch.reorder(n_outer, t_outer, g, t_inner, n_inner)
            accumulate_with_epilogue(sch, total, t_outer)
            sch.unroll(t_inner)
        else:  # GEMV, or row by row
            sch.reorder(n_outer, t, g, n_inner)
            accumulate_with_epilogue(sch, total, t)
        sch.compute_at(partial, g)
        sch.set_scope(partial, 0, "local")
        pt, pn, k4, r = sch.get_loops(partial)[-4:]  # pt: the block's rows (GEMM), else a loop above
        lanes_outer, lanes = sch.split(pn, [None, spec.lanes])
        if block > 1:
            sch.reorder(k4, pt, lanes_outer, lanes, r)  # one block of weights for all the rows
            sch.unroll(pt)
            sch.unroll(lanes_outer)
        else:
            sch.reorder(k4, lanes_outer, lanes, r)
        if unpack is not None:
            sch.compute_at(unpack, k4 if block > 1 else lanes_outer)
            sch.set_scope(unpack, 0, "local")
            sch.vectorize(sch.fuse(*sch.get_loops(unpack)[-2:]))
        sch.unroll(k4)
        sch.vectorize(n_inner)
        if int(sch.get(n_outer).extent) > 1:
            sch.parallel(n_outer)
        init = sch.decompose_reduction(partial, k4)
        sch.vectorize(sch.get_loops(init)[-1])
        sch.tensorize(lanes, f"{spec.intrin}_{'global' if unpack is None else 'local'}")
        init = sch.decompose_reduction(total, g)
        sch.vectorize(sch.get_loops(init)[-1])
        return sch
    except (RuntimeError, ValueError):
        return None


def _inline_elementwise(sch: s_tir.Schedule, keep: tuple[str, ...]) -> None:
    """Inline every elementwise block that is not an output or named in ``keep`` (the token-shift
    interpolation, side inputs of the epilogue). By name: inlining rebuilds the other blocks' statements."""
    root = sch.get_sblock("root")
    outputs = {sch.get(b).name_hint for b in sch.get_output_blocks(root)}
    for other in reversed(sch.get_child_blocks(root)):
        name = sch.get(other).name_hint
        if name in keep or name in outputs or is_reduction(sch, other):
            continue
        try:
            sch.compute_inline(other)
        except s_tir.ScheduleError:
            pass


# -- the instructions, as TensorIntrins: C (lanes,) int32 += sum_k A[k] (4,) int8 * B (lanes, 4) --------------
def _dot_desc(lanes: int, weight_dtype: str, scope: str):
    @T.prim_func(s_tir=True)
    def desc(a: T.handle, b: T.handle, c: T.handle) -> None:
        A = T.match_buffer(a, (4,), "int8", offset_factor=1)
        B = T.match_buffer(b, (lanes, 4), weight_dtype, offset_factor=1, scope=scope)
        C = T.match_buffer(c, (lanes,), "int32", offset_factor=1, scope="local")
        with T.sblock("root"):
            T.reads(C[0:lanes], A[0:4], B[0:lanes, 0:4])
            T.writes(C[0:lanes])
            for i, k in T.grid(lanes, 4):
                with T.sblock("update"):
                    vi, vk = T.axis.remap("SR", [i, k])
                    C[vi] = C[vi] + T.cast(A[vk], "int32") * T.cast(B[vi, vk], "int32")

    return desc


def _vpdpbusd_impl(lanes: int, scope: str):
  bits = lanes * 32  # zmm (AVX-512 VNNI) or ymm (AVX-VNNI, VEX-encoded where AVX-512 is absent)
  @T.prim_func(s_tir=True)
  def impl(a: T.handle, b: T.handle, c: T.handle) -> None:
    A = T.match_buffer(a, (4,), "int8", offset_factor=1)
    B = T.match_buffer(b, (lanes, 4), "uint8", offset_factor=1, scope=scope)
    C = T.match_buffer(c, (lanes,), "int32", offset_factor=1, scope="local")
    with T.sblock("root"):
        T.reads(C[0:lanes], A[0:4], B[0:lanes, 0:4])
        T.writes(C[0:lanes])
        # LLVM 22 takes the bytes as <N x i8> (TVM's own dot_16x4_vnni passes <16 x i32> and fails to verify)
        x = T.reinterpret(T.broadcast(T.reinterpret(A.vload([0], "int8x4"), dtype="int32"), lanes),
                          dtype=f"int8x{lanes * 4}")
        w = B.vload([0, 0], f"uint8x{lanes * 4}")
        C[T.ramp(T.int32(0), 1, lanes)] = T.call_llvm_pure_intrin(
            T.llvm_lookup_intrinsic_id(f"llvm.x86.avx512.vpdpbusd.{bits}"), C.vload([0], f"int32x{lanes}"), w, x,
            dtype=f"int32x{lanes}")  # unsigned bytes (weights) x signed bytes (activations)

  return impl


def _sdot_impl(scope: str):
  @T.prim_func(s_tir=True)
  def impl(a: T.handle, b: T.handle, c: T.handle) -> None:
    A = T.match_buffer(a, (4,), "int8", offset_factor=1)
    B = T.match_buffer(b, (4, 4), "int8", offset_factor=1, scope=scope)
    C = T.match_buffer(c, (4,), "int32", offset_factor=1, scope="local")
    with T.sblock("root"):
        T.reads(C[0:4], A[0:4], B[0:4, 0:4])
        T.writes(C[0:4])
        x = T.reinterpret(T.broadcast(T.reinterpret(A.vload([0], "int8x4"), dtype="int32"), 4), dtype="int8x16")
        C[T.ramp(T.int32(0), 1, 4)] = T.call_llvm_pure_intrin(
            T.llvm_lookup_intrinsic_id("llvm.aarch64.neon.sdot.v4i32.v16i8"), C.vload([0], "int32x4"),
            B.vload([0, 0], "int8x16"), x, dtype="int32x4")

  return impl


for _scope in ("global", "local"):  # B: int8 weights straight from memory, int4 ones unpacked into registers
    for _isa in (DOT_ISAS["vnni"], DOT_ISAS["avxvnni"]):
        s_tir.TensorIntrin.register(f"{_isa.intrin}_{_scope}", _dot_desc(_isa.lanes, "uint8", _scope),
                                    _vpdpbusd_impl(_isa.lanes, _scope), override=True)
    s_tir.TensorIntrin.register(f"{DOT_ISAS['sdot'].intrin}_{_scope}", _dot_desc(4, "int8", _scope),
                                _sdot_impl(_scope), override=True)
