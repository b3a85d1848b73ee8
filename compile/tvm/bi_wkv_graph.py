"""The Bi-WKV scans of an image graph, found in the ONNX export and cut out of it (CPU image builds).

``model/vision.py`` ``bi_wkv`` exports as two doubling scans of elementwise ops, shifts (Slice + Pad) and
a combination: ~250 nodes per layer, ceil(log2 T) passes over (T, C) each way. The compiler puts one
O(T) kernel in their place (``compile/tvm/bi_wkv.py``). Here each scan is recognised node by node,
as ``_scan`` and ``bi_wkv`` write it (shift distances 1, 2, 4, ... below T, the decay constants d * w
of one w, the fills 0 and -1e38), and cut: its result becomes a graph input, its k and v graph
outputs, and the nodes only it used are dropped; ``bi_wkv.splice_bi_wkvs`` joins them again in Relax.
A graph that differs in any node keeps its scans (correct, only slower).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx
from onnx import helper

from .onnx_patterns import Const, Env, Matcher, Shift, Unbind, drop_unused, op

NO_WEIGHT = np.float32(-1e38)  # model/vision.py's log-scale of an empty sum
INPUT_PREFIX = "rwkv_edge_bi_wkv_"  # the graph inputs that stand for the cut scans' results


@dataclass(frozen=True)
class BiWkvCut:
    """One Bi-WKV cut out of the graph: its result is now the graph input ``result``; its k and v
    (B, T, C) are the graph outputs numbered ``key`` and ``value``; ``w``, ``u`` (C,) are the decay
    and bonus it used."""

    result: str
    key: int
    value: int
    w: np.ndarray
    u: np.ndarray


def cut_bi_wkvs(proto: onnx.ModelProto) -> list[BiWkvCut]:
    """Find every Bi-WKV of ``proto`` (initializers loaded) and cut it out, in place; returns the cuts
    in graph order (none: ``proto`` unchanged)."""
    graph = _Graph(proto.graph)
    found = [(node, match) for node in proto.graph.node if node.op_type == "Div"
             for match in [graph.bi_wkv(node.output[0])] if match is not None]
    cuts = []
    for i, (div, (key, value, w, u, shape)) in enumerate(found):
        name = f"{INPUT_PREFIX}{i}"
        for node in proto.graph.node:  # the result's consumers read the new input
            node.input[:] = [name if x == div.output[0] else x for x in node.input]
        proto.graph.input.append(helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, shape))
        for x in (key, value):
            if x not in [o.name for o in proto.graph.output]:
                proto.graph.output.append(helper.make_tensor_value_info(x, onnx.TensorProto.FLOAT, shape))
        outputs = [o.name for o in proto.graph.output]
        cuts.append(BiWkvCut(name, outputs.index(key), outputs.index(value), w, u))
    if cuts:
        drop_unused(proto.graph)
    return cuts


class _Graph(Matcher):
    def bi_wkv(self, result: str) -> tuple[str, str, np.ndarray, np.ndarray, list[int]] | None:
        """(k, v, w, u, shape of k) if ``result`` is a Bi-WKV's output, else None."""
        exp_of = lambda top: op("Exp", op("Sub", top, "m"))  # noqa: E731
        goals = [
            (op("Div", op("Add", op("Add", op("Mul", "e_l", Unbind("nd_l", 0)), op("Mul", "e_r", Unbind("nd_r", 0))),
                          op("Mul", "e_now", "v")),
                op("Add", op("Add", op("Mul", "e_l", Unbind("nd_l", 1)), op("Mul", "e_r", Unbind("nd_r", 1))), "e_now")),
             "y"),
            (exp_of("top_l"), "e_l"), (exp_of("top_r"), "e_r"), (exp_of("now"), "e_now"),
            (op("Max", op("Max", "top_l", "top_r"), "now"), "m"),
            (op("Add", Const("u"), "k"), "now"),
        ]
        for env in self.solve(goals, {"y": result}):
            left, right = self.scan(env["nd_l"], env["top_l"]), self.scan(env["nd_r"], env["top_r"])
            if left is None or right is None or left[3] == right[3]:
                continue
            (k_l, v_l, w_l, _, shape), (k_r, v_r, w_r, _, _) = left, right
            u = self.constants[env["u"]]
            if (k_l, v_l) == (k_r, v_r) == (env["k"], env["v"]) and np.array_equal(w_l, w_r) \
                    and u.shape == w_l.shape == (shape[-1],) and u.dtype == np.float32:
                return k_l, v_l, w_l, u, shape
        return None

    def scan(self, nd: str, top: str) -> tuple[str, str, np.ndarray, bool, list[int]] | None:
        """(k, v, w, after, shape) if (``nd``, ``top``) are the end of ``_scan(w, k, v, after)``."""
        steps = []  # (d, d * w), last step first
        env: Env = {"nd": nd, "top": top}
        step = [(op("Max", "a", op("Sub", Shift("a", "d", NO_WEIGHT, "after"), Const("dw"), bind="far")), "top"),
                (op("Add", op("Mul", op("Exp", op("Sub", "a", "top")), "prev"),
                     op("Mul", op("Exp", op("Sub", "far", "top")), Shift("prev", "d", 0.0, "after"))), "nd")]
        while (found := next(self.solve(step, env), None)) is not None:
            steps.append((found["d"], self.constants[found["dw"]]))
            env = {"nd": found["prev"], "top": found["a"], "after": found["after"]}
        zero = Const(value=(0,))
        starts = [[(Shift("k", 1, NO_WEIGHT, "after"), "top"),
                   (Shift(op("Concat", op("Unsqueeze", "v", zero), ones, axis=0), 1, 0.0, "after"), "nd")]
                  for ones in (op("Unsqueeze", Const("ones"), zero), Const("ones"))]  # the exporter may fold the latter
        found = next((found for start in starts for found in self.solve(start, env)), None)
        if found is None or not steps:
            return None
        ones = self.constants[found["ones"]]
        ones = ones[0] if ones.ndim == 4 and ones.shape[0] == 1 else ones  # (B, T, C)
        steps.reverse()
        w = steps[0][1]
        if ones.ndim != 3 or not (ones == 1).all() or [d for d, _ in steps] != [1 << j for j in range(len(steps))] \
                or (1 << len(steps)) < ones.shape[1] or (1 << (len(steps) - 1)) >= ones.shape[1] or w.dtype != np.float32 \
                or not all(np.array_equal(dw, w * np.float32(d)) for d, dw in steps):
            return None
        return found["k"], found["v"], w, bool(found["after"]), list(ones.shape)
