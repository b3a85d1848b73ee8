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

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import onnx
from onnx import helper, numpy_helper

NO_WEIGHT = np.float32(-1e38)  # model/vision.py's log-scale of an empty sum
COMMUTATIVE = {"Add", "Mul", "Max"}
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
        _drop_unused(proto.graph)
    return cuts


def _drop_unused(graph: onnx.GraphProto) -> None:
    """Remove the nodes none of whose outputs is read (by a node or as a graph output), repeatedly."""
    while True:
        read = {x for node in graph.node for x in node.input} | {o.name for o in graph.output}
        kept = [node for node in graph.node if any(o in read for o in node.output)]
        if len(kept) == len(graph.node):
            return
        del graph.node[:]
        graph.node.extend(kept)


# -- patterns: a node tree whose leaves are variables, matched against the graph -------------------------
@dataclass(frozen=True)
class Op:
    """A node of type ``op`` whose inputs match ``args`` (in either order for Add, Mul, Max), with
    ``attrs`` among its attributes; ``bind``: a variable that names its output."""

    op: str
    args: tuple
    attrs: tuple = ()
    bind: str = ""


def op(name: str, *args, bind: str = "", **attrs) -> Op:
    return Op(name, args, tuple(attrs.items()), bind)


@dataclass(frozen=True)
class Const:
    """An initializer: ``var`` (if given) names it, ``value`` (if given) is what it must hold."""

    var: str = ""
    value: tuple | None = None


@dataclass(frozen=True)
class Shift:
    """``_shift(x, d, fill, after)``: Slice along the token axis (rank - 2), then Pad back with ``fill``;
    ``d`` and ``after`` are values or variables."""

    x: object
    d: object
    fill: float
    after: object


@dataclass(frozen=True)
class Unbind:
    """Entry ``index`` of the leading axis of ``x``: Squeeze(Slice(x, [i], [i + 1], [0]), [0])."""

    x: object
    index: int


Env = dict[str, object]


class _Graph:
    def __init__(self, graph: onnx.GraphProto) -> None:
        self.producer = {o: node for node in graph.node for o in node.output}
        self.constants = {i.name: numpy_helper.to_array(i) for i in graph.initializer}

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

    # -- matching ---------------------------------------------------------------------------------------
    def solve(self, goals: list[tuple[object, str]], env: Env) -> Iterator[Env]:
        """Every extension of ``env`` under which each (pattern, variable) goal matches the variable's tensor."""
        if not goals:
            yield env
            return
        (pattern, var), rest = goals[0], goals[1:]
        for found in self.match(pattern, env[var], env):
            yield from self.solve(rest, found)

    def match_all(self, pairs: list[tuple[object, str]], env: Env) -> Iterator[Env]:
        """Every extension of ``env`` under which each (pattern, tensor) pair matches."""
        if not pairs:
            yield env
            return
        (pattern, name), rest = pairs[0], pairs[1:]
        for found in self.match(pattern, name, env):
            yield from self.match_all(rest, found)

    def match(self, pattern, name: str, env: Env) -> Iterator[Env]:
        if isinstance(pattern, str):
            if pattern not in env:
                yield {**env, pattern: name}
            elif env[pattern] == name:
                yield env
        elif isinstance(pattern, Const):
            if name in self.constants and (pattern.value is None or self.constants[name].tolist() == list(pattern.value)):
                yield from (self.match(pattern.var, name, env) if pattern.var else [env])
        elif isinstance(pattern, Op):
            yield from self._node(pattern, name, env)
        elif isinstance(pattern, Shift):
            yield from self._shift(pattern, name, env)
        elif isinstance(pattern, Unbind):
            i, zero = pattern.index, Const(value=(0,))
            yield from self.match(op("Squeeze", op("Slice", pattern.x, Const(value=(i,)), Const(value=(i + 1,)), zero), zero),
                                  name, env)

    def _node(self, pattern: Op, name: str, env: Env) -> Iterator[Env]:
        node = self.producer.get(name)
        if node is None or node.op_type != pattern.op or len(node.input) != len(pattern.args):
            return
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        if any(attrs.get(k) != v for k, v in pattern.attrs):
            return
        if pattern.bind:
            if env.get(pattern.bind, name) != name:
                return
            env = {**env, pattern.bind: name}
        orders = [list(node.input)] + ([list(reversed(node.input))] if node.op_type in COMMUTATIVE else [])
        for inputs in orders:
            yield from self.match_all(list(zip(pattern.args, inputs)), env)

    def _shift(self, pattern: Shift, name: str, env: Env) -> Iterator[Env]:
        pad = self.producer.get(name)
        if pad is None or pad.op_type != "Pad" or not 2 <= len(pad.input) <= 3:
            return
        if any(a.name == "mode" and a.s != b"constant" for a in pad.attribute):
            return
        pads = self.constants.get(pad.input[1])
        fill = self.constants.get(pad.input[2]) if len(pad.input) == 3 and pad.input[2] else np.float32(0)
        sliced = self.producer.get(pad.input[0])
        if pads is None or fill is None or fill.size != 1 or np.float32(fill) != np.float32(pattern.fill) \
                or sliced is None or sliced.op_type != "Slice" or not 4 <= len(sliced.input) <= 5:
            return
        bounds = [self.constants.get(x) for x in sliced.input[1:]]
        if any(b is None or b.size != 1 for b in bounds):
            return
        start, end, axis, *steps = (int(b.reshape(())) for b in bounds)
        rank = len(pads) // 2
        if any(s != 1 for s in steps) or axis % max(rank, 1) != rank - 2:
            return
        axis = rank - 2
        after = start > 0
        d = start if after else -end
        if d < 1 or (after and end < np.iinfo(np.int64).max // 2) or (not after and start != 0):
            return
        expected = np.zeros(2 * rank, np.int64)
        expected[axis + (rank if after else 0)] = d
        if not np.array_equal(pads, expected):
            return
        for var, value in ((pattern.d, d), (pattern.after, after)):
            if isinstance(var, str):
                if env.get(var, value) != value:
                    return
                env = {**env, var: value}
            elif var != value:
                return
        yield from self.match(pattern.x, sliced.input[0], env)
