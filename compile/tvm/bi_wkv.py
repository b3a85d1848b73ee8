"""The Bi-WKV of a CPU image build as one kernel, O(T) per channel, in the holes ``bi_wkv_graph.py`` cut.

``model/vision.py`` ``bi_wkv``, y_t = (sum_{i != t} e^{-(|t-i|-1) w + k_i} v_i + e^{u + k_t} v_t) / (the
same sums without v), computed by one pass each way over the tokens instead of two doubling scans
(~250 graph nodes per layer, each a pass over (T, C); 35 exponentials per element, here 5, each a
vectorised polynomial, ``vector_exp``). Each channel keeps its sums as [num | den] scaled by e^{-top},
top the largest exponent, as the graph does; the decay is carried in the exponents, z_i = k_i + i w
leftwards (k_i - i w rightwards), so no rounding builds up step by step (lowering the running top by
w per token drifted by 1.8e-5 over 196 tokens), and each update takes one exponential (of minus the
gap between the old top and the new exponent; the larger one's factor is exactly 1). Channels run in
vector lanes, groups of lanes in parallel; the left pass keeps its sums for every token
(3 x (B, T, C) scratch) for the right pass, which writes y. Against ``bi_wkv`` in fp64 on VRWKV-T's
shape: max|d| 1.3e-6, the fp32 graph's own 1.0e-6 (tests/compile/test_bi_wkv_kernel.py's draw).
"""

from __future__ import annotations

import numpy as np
import tvm
from tvm import relax, tirx
from tvm.script import tirx as T

from ...errors import ShapeError
from .bi_wkv_graph import NO_WEIGHT, BiWkvCut
from .splice import Hole, splice

KERNEL = "bi_wkv"  # the PrimFunc's name in the module
EXP_FLOOR = -87.0  # vector_exp's smallest argument: e^-87 ~ 1.6e-38 is just above fp32's smallest normal 2^-126


def vector_exp(x: tvm.ir.expr.Expr) -> tvm.ir.expr.Expr:
    """e^x for x <= 0, vectorisable (TVM's exp is a libm call per lane: the kernel took 5x as long):
    x = n ln2 + r, |r| <= ln2 / 2 (ln2 in two parts), e^r by its Taylor series to r^7 (truncation
    < 6e-9), 2^n from the exponent bits. Max relative error 7.7e-8 against fp64, about one fp32 ulp
    (tests/compile/test_bi_wkv_kernel.py); below EXP_FLOOR it gives ~1.6e-38, not less: there it only
    weighs empty sums (0) or terms beside one of weight 1."""
    x = T.max(x, T.float32(EXP_FLOOR))
    n = T.floor(x * T.float32(1.4426950408889634) + T.float32(0.5))
    r = x - n * T.float32(0.693145751953125) - n * T.float32(1.428606765330187e-06)
    p = T.float32(1 / 5040)
    for coefficient in (1 / 720, 1 / 120, 1 / 24, 1 / 6, 1 / 2, 1, 1):
        p = T.float32(coefficient) + r * p
    return p * T.reinterpret("float32", T.shift_left(T.Cast("int32", n) + 127, 23))


def bi_wkv_kernel(batch: int, tokens: int, channels: int, lanes: int) -> tirx.PrimFunc:
    """``y = bi_wkv(w, u, k, v)``: w, u (C,); k, v, y (B, T, C) float32; ``lanes`` channels per vector
    (1 where C is not a multiple of the target's vector width)."""
    B, L, C, V = batch, tokens, channels, lanes
    empty = float(NO_WEIGHT)

    # Temporaries live in a local buffer, not in let-bound names: TVM's vectoriser gives a let-bound
    # float a vector value and keeps its scalar type (wrong lanes).
    @T.prim_func
    def kernel(w: T.Buffer((C,), "float32"), u: T.Buffer((C,), "float32"), k: T.Buffer((B, L, C), "float32"),
               v: T.Buffer((B, L, C), "float32"), y: T.Buffer((B, L, C), "float32")):
        T.func_attr({"tirx.noalias": True, "tirx.is_scheduled": True})
        left = T.alloc_buffer((3, B, L, C), "float32")  # per token: num, den, top (z-frame) of the tokens before it
        for g in T.parallel(C // V):
            for b in range(B):
                s = T.alloc_buffer((3, V), "float32", scope="local")  # the running num, den, top
                x = T.alloc_buffer((5, V), "float32", scope="local")
                for c in T.vectorized(V):
                    s[0, c] = T.float32(0)
                    s[1, c] = T.float32(0)
                    s[2, c] = T.float32(empty)
                for t in range(L):  # left to right: the sums over i < t, then token t added
                    for c in T.vectorized(V):
                        left[0, b, t, g * V + c] = s[0, c]
                        left[1, b, t, g * V + c] = s[1, c]
                        left[2, b, t, g * V + c] = s[2, c]
                        x[0, c] = k[b, t, g * V + c] + T.Cast("float32", t) * w[g * V + c]  # z_t
                        x[1, c] = s[2, c] - x[0, c]  # gap: old top - z_t
                        x[2, c] = vector_exp(T.float32(0) - T.fabs(x[1, c]))
                        x[3, c] = T.Select(x[1, c] > T.float32(0), T.float32(1), x[2, c])  # factor of the old sums
                        x[4, c] = T.Select(x[1, c] > T.float32(0), x[2, c], T.float32(1))  # factor of token t
                        s[0, c] = x[3, c] * s[0, c] + x[4, c] * v[b, t, g * V + c]
                        s[1, c] = x[3, c] * s[1, c] + x[4, c]
                        s[2, c] = T.max(s[2, c], x[0, c])
                for c in T.vectorized(V):
                    s[0, c] = T.float32(0)
                    s[1, c] = T.float32(0)
                    s[2, c] = T.float32(empty)
                for r in range(L):  # right to left, t = L - 1 - r: y_t from both sides and t, then token t added
                    for c in T.vectorized(V):
                        # the tops in the graph's frame: z-frame top -+ (distance offset) w
                        x[0, c] = left[2, b, L - 1 - r, g * V + c] - T.Cast("float32", L - 2 - r) * w[g * V + c]
                        x[1, c] = s[2, c] + T.Cast("float32", L - r) * w[g * V + c]
                        x[2, c] = u[g * V + c] + k[b, L - 1 - r, g * V + c]
                        x[3, c] = T.max(T.max(x[0, c], x[1, c]), x[2, c])
                        x[0, c] = vector_exp(x[0, c] - x[3, c])
                        x[1, c] = vector_exp(x[1, c] - x[3, c])
                        x[2, c] = vector_exp(x[2, c] - x[3, c])
                        y[b, L - 1 - r, g * V + c] = (
                            x[0, c] * left[0, b, L - 1 - r, g * V + c] + x[1, c] * s[0, c] + x[2, c] * v[b, L - 1 - r, g * V + c]
                        ) / (x[0, c] * left[1, b, L - 1 - r, g * V + c] + x[1, c] * s[1, c] + x[2, c])
                        x[0, c] = k[b, L - 1 - r, g * V + c] - T.Cast("float32", L - 1 - r) * w[g * V + c]  # z_t
                        x[1, c] = s[2, c] - x[0, c]
                        x[2, c] = vector_exp(T.float32(0) - T.fabs(x[1, c]))
                        x[3, c] = T.Select(x[1, c] > T.float32(0), T.float32(1), x[2, c])
                        x[4, c] = T.Select(x[1, c] > T.float32(0), x[2, c], T.float32(1))
                        s[0, c] = x[3, c] * s[0, c] + x[4, c] * v[b, L - 1 - r, g * V + c]
                        s[1, c] = x[3, c] * s[1, c] + x[4, c]
                        s[2, c] = T.max(s[2, c], x[0, c])

    return kernel


def splice_bi_wkvs(mod: tvm.IRModule, cuts: list[BiWkvCut], vector: int) -> tvm.IRModule:
    """``mod`` (imported from a graph ``cut_bi_wkvs`` cut) with each cut's result computed by the kernel
    from its k and v, and ``main`` back to ``(images) -> its first output``; ``vector``: the target's
    vector width (floats)."""
    holes = [Hole((c.result,), (("output", c.key), ("output", c.value)), _emitter(c, vector), f"Bi-WKV {c.result}")
             for c in cuts]
    return splice(mod, holes, 1)


def _emitter(cut: BiWkvCut, vector: int):
    def emit(builder: relax.BlockBuilder, args: list[relax.Expr]) -> list[relax.Expr]:
        key, value = args
        shape = [int(d) for d in key.ty.shape]
        if [int(d) for d in value.ty.shape] != shape or len(shape) != 3 or shape[-1] != cut.w.shape[0]:
            raise ShapeError(f"image graph: Bi-WKV {cut.result}'s k {key.ty}, v {value.ty} and w ({cut.w.shape[0]},) "
                             "disagree; expected (B, T, C) each and w (C,)")
        batch, tokens, channels = shape
        lanes = vector if channels % vector == 0 else 1
        gvar = builder.add_func(bi_wkv_kernel(batch, tokens, channels, lanes), KERNEL)
        args = [relax.const(np.ascontiguousarray(cut.w)), relax.const(np.ascontiguousarray(cut.u)), key, value]
        return [builder.emit(relax.call_tir(gvar, args, relax.TensorType(shape, "float32")))]

    return emit
