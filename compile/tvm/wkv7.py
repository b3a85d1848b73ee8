"""A layer's RWKV-7 recurrence over a prefill chunk as one kernel, in the holes ``wkv7_graph.py`` cut.

``model/v7.py`` ``wkv7``: per token t, m = kk_t^T S, S = diag(w_t) S - kka_t m + k_t v_t^T, y_t = r_t^T S,
with S (N, N) per head. The graph computes it as ~8 kernel calls per token and layer, each a pass over
the state (2,900 of a 32-token prefill call's calls at 0.1B); here one call per layer runs all T tokens:
heads in parallel, each head's state kept in place and updated by two passes over its rows per token
(the first forms m, the second updates the rows and sums y), the value axis in vector lanes. The sums
run over the key axis in order, as the graph's MatMuls do.
"""

from __future__ import annotations

import tvm
from tvm import relax, tirx
from tvm.script import tirx as T

from ...errors import ShapeError
from .splice import Hole, splice
from .wkv7_graph import Wkv7Cut

KERNEL = "wkv7"  # the PrimFunc's name in the module


def wkv7_kernel(batch: int, tokens: int, heads: int, size: int, lanes: int) -> tirx.PrimFunc:
    """``y, s = wkv7(s0, kka, kk, w, k, v, r)``: s0, s (B, H, N, N) float32 [head, key, value]; the factors
    (B, T, H, N); y (B, T, H, 1, N); ``lanes`` values per vector (1 where N is not a multiple of the
    target's vector width)."""
    B, L, H, N, V = batch, tokens, heads, size, lanes

    @T.prim_func
    def kernel(s0: T.Buffer((B, H, N, N), "float32"), kka: T.Buffer((B, L, H, N), "float32"),
               kk: T.Buffer((B, L, H, N), "float32"), w: T.Buffer((B, L, H, N), "float32"),
               k: T.Buffer((B, L, H, N), "float32"), v: T.Buffer((B, L, H, N), "float32"),
               r: T.Buffer((B, L, H, N), "float32"), y: T.Buffer((B, L, H, 1, N), "float32"),
               s: T.Buffer((B, H, N, N), "float32")):
        T.func_attr({"tirx.noalias": True, "tirx.is_scheduled": True})
        for bh in T.parallel(B * H):
            m = T.alloc_buffer((N,), "float32", scope="local")  # kk^T S of the token
            acc = T.alloc_buffer((N,), "float32", scope="local")  # r^T S' of the token
            for i in range(N):
                for jo in range(N // V):
                    for ji in T.vectorized(V):
                        s[bh // H, bh % H, i, jo * V + ji] = s0[bh // H, bh % H, i, jo * V + ji]
            for t in range(L):
                for jo in range(N // V):
                    for ji in T.vectorized(V):
                        m[jo * V + ji] = T.float32(0)
                        acc[jo * V + ji] = T.float32(0)
                for i in range(N):
                    for jo in range(N // V):
                        for ji in T.vectorized(V):
                            m[jo * V + ji] = m[jo * V + ji] + kk[bh // H, t, bh % H, i] * s[bh // H, bh % H, i, jo * V + ji]
                for i in range(N):
                    for jo in range(N // V):
                        for ji in T.vectorized(V):
                            s[bh // H, bh % H, i, jo * V + ji] = (
                                w[bh // H, t, bh % H, i] * s[bh // H, bh % H, i, jo * V + ji]
                                - kka[bh // H, t, bh % H, i] * m[jo * V + ji]
                                + k[bh // H, t, bh % H, i] * v[bh // H, t, bh % H, jo * V + ji])
                            acc[jo * V + ji] = acc[jo * V + ji] + r[bh // H, t, bh % H, i] * s[bh // H, bh % H, i, jo * V + ji]
                for jo in range(N // V):
                    for ji in T.vectorized(V):
                        y[bh // H, t, bh % H, 0, jo * V + ji] = acc[jo * V + ji]

    return kernel


def splice_wkv7s(mod: tvm.IRModule, cuts: list[Wkv7Cut], vector: int) -> tvm.IRModule:
    """``mod`` (imported from a prefill graph ``cut_wkv7s`` cut) with each layer's recurrence computed by
    the kernel, and ``main`` back to its own inputs and outputs; ``vector``: the target's vector width (floats)."""
    holes = [Hole((c.output, c.state), (("input", c.initial), *(("output", i) for i in c.factors)),
                  _emitter(c, vector), f"the WKV-7 recurrence {c.state}") for c in cuts]
    return splice(mod, holes, cuts[0].outputs) if cuts else mod


def _emitter(cut: Wkv7Cut, vector: int):
    def emit(builder: relax.BlockBuilder, args: list[relax.Expr]) -> list[relax.Expr]:
        state = [int(d) for d in args[0].ty.shape]
        batch, heads, size = state[0], state[1], state[2]
        factor = [batch, cut.tokens, heads, size]
        if len(state) != 4 or state[3] != size or any([int(d) for d in a.ty.shape] != factor for a in args[1:]):
            raise ShapeError(f"prefill graph: {cut.state}'s state {args[0].ty} and factors "
                             f"{', '.join(str(a.ty) for a in args[1:])} disagree; expected (B, H, N, N) and (B, T, H, N)")
        lanes = vector if size % vector == 0 else 1
        gvar = builder.add_func(wkv7_kernel(batch, cut.tokens, heads, size, lanes), KERNEL)
        out = builder.emit(relax.call_tir(gvar, args, [relax.TensorType([batch, cut.tokens, heads, 1, size], "float32"),
                                                       relax.TensorType(state, "float32")]))
        return [builder.emit(relax.TupleGetItem(out, 0)), builder.emit(relax.TupleGetItem(out, 1))]

    return emit
