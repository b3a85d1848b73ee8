"""The RWKV-7 recurrences of a prefill graph, found in the ONNX export and cut out of it (CPU builds).

``model/v7.py`` ``wkv7`` exports, for each layer of a T-token prefill graph, its state update unrolled
over the tokens: per token t, Gathers of position t from the six factors (``kk * a``, ``kk``, the decay,
``k``, ``v``, ``r``, each (B, T, H, N) unsqueezed to a column or a row), two MatMuls and four elementwise
ops on the (B, H, N, N) state, and the token's output row stacked by one Concat: ~8 kernel calls per
token and layer once compiled, each a pass over the state. Here each layer's chain is recognised node by
node back from its last state (the same six factors at positions T - 1, ..., 0, down to a state graph
input) and cut: the stacked output and the last state become graph inputs, the six factors graph
outputs, and the nodes only the chain used are dropped; ``wkv7.splice_wkv7s`` joins them again in Relax
with one kernel per layer. A graph that differs in any node keeps its chains (correct, only slower).
Runs after ``slices.gathers_as_slices`` (positions are Slices then).
"""

from __future__ import annotations

from dataclasses import dataclass

import onnx
from onnx import helper

from .onnx_patterns import Const, Matcher, Unbind, drop_unused, op

PREFIX = "rwkv_edge_wkv7_"  # the graph inputs that stand for the cut chains' results
FACTORS = ("kka", "kk", "w", "k", "v", "r")  # the kernel's inputs besides the state, in its order
POSITION_AXES = (1, -4)  # the token axis of a factor, unsqueezed to (B, T, H, N, 1) or (B, T, H, 1, N)


@dataclass(frozen=True)
class Wkv7Cut:
    """One layer's recurrence cut out of the graph: its stacked output (B, T, H, 1, N) and last state
    (B, H, N, N) are now the graph inputs ``output`` and ``state``; it starts from the graph input
    numbered ``initial`` (among the inputs that are not initializers); its factors (B, T, H, N), in
    FACTORS' order, are the graph outputs numbered ``factors``; the graph had ``outputs`` outputs before."""

    output: str
    state: str
    initial: int
    factors: tuple[int, ...]
    tokens: int
    outputs: int


def cut_wkv7s(proto: onnx.ModelProto) -> list[Wkv7Cut]:
    """Find every layer's recurrence of ``proto`` (a prefill graph, initializers loaded) and cut it out,
    in place; returns the cuts in graph order (none: ``proto`` unchanged)."""
    graph = proto.graph
    chains = _Chains(graph)
    initializers = {i.name for i in graph.initializer}
    inputs = [i.name for i in graph.input if i.name not in initializers]
    found = [(chain, stack) for o in graph.output if (chain := chains.chain(o.name, inputs)) is not None
             and (stack := chains.stack(chain)) is not None]
    cuts, before = [], len(graph.output)
    for i, (chain, (concat, r)) in enumerate(found):
        output, state = f"{PREFIX}output_{i}", f"{PREFIX}state_{i}"
        for node in graph.node:  # the stacked rows' consumers read the new input
            node.input[:] = [output if x == concat.output[0] else x for x in node.input]
        graph.node.remove(chains.producer[chain.last])  # the last state comes from the new input
        graph.node.append(helper.make_node("Identity", [state], [chain.last], name=f"{PREFIX}identity_{i}"))
        batch, heads, size, _ = chain.state_shape
        tokens = len(chain.before)
        graph.input.append(helper.make_tensor_value_info(output, onnx.TensorProto.FLOAT, [batch, tokens, heads, 1, size]))
        graph.input.append(helper.make_tensor_value_info(state, onnx.TensorProto.FLOAT, chain.state_shape))
        factors = (*chain.factors, r)
        for name in factors:
            if name not in [o.name for o in graph.output]:
                graph.output.append(helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, [batch, tokens, heads, size]))
        outputs = [o.name for o in graph.output]
        cuts.append(Wkv7Cut(output, state, inputs.index(chain.before[0]), tuple(outputs.index(f) for f in factors), tokens,
                            before))
    if cuts:
        drop_unused(graph)
    return cuts


@dataclass(frozen=True)
class _Chain:
    """A recurrence found: the states before each token (``before[0]`` a graph input), the last state,
    the factors' names in FACTORS' order but ``r``, and the state's shape (B, H, N, N)."""

    before: tuple[str, ...]
    last: str
    factors: tuple[str, ...]
    state_shape: list[int]


def _at(x: str, unsqueezed: int, axis: int, t: object) -> Unbind:
    """Position ``t`` of the factor ``x`` (B, T, H, N) unsqueezed at ``unsqueezed`` (-1: a column, -2: a row)."""
    return Unbind(op("Unsqueeze", x, Const(value=(unsqueezed,))), t, axis)


class _Chains(Matcher):
    def __init__(self, graph: onnx.GraphProto) -> None:
        super().__init__(graph)
        self.shapes = {i.name: [d.dim_value for d in i.type.tensor_type.shape.dim] for i in graph.input}
        self.nodes = list(graph.node)

    def chain(self, last: str, inputs: list[str]) -> _Chain | None:
        """The recurrence that ends in the state ``last``, if it reaches back from there, token by token
        down to position 0, to a (B, H, N, N) graph input."""
        before: list[str] = []
        factors, t, state = None, None, last
        while (step := self._update(state)) is not None:
            previous, names, position = step
            if (factors is not None and names != factors) or (t is not None and position != t - 1):
                return None
            factors, t, state = names, position, previous
            before.append(previous)
        shape = self.shapes.get(state)
        if t != 0 or state not in inputs or shape is None or len(shape) != 4 or shape[2] != shape[3] or 0 in shape:
            return None
        return _Chain(tuple(reversed(before)), last, factors, shape)

    def _update(self, after: str) -> tuple[str, tuple[str, ...], int] | None:
        """(the state before, the factors but ``r``, the position) if ``after`` is one token's update
        S' = w S - kka (kk^T S) + k v^T (``model/v7.py`` ``_update``)."""
        for axis in POSITION_AXES:
            pattern = op("Add", op("Sub", op("Mul", _at("w", -1, axis, "t"), "s"),
                                   op("Mul", _at("kka", -1, axis, "t"), op("MatMul", _at("kk", -2, axis, "t"), "s"))),
                         op("Mul", _at("k", -1, axis, "t"), _at("v", -2, axis, "t")))
            for env in self.match(pattern, after, {}):
                return env["s"], tuple(env[f] for f in FACTORS if f != "r"), env["t"]
        return None

    def stack(self, chain: _Chain) -> tuple[onnx.NodeProto, str] | None:
        """The Concat of the chain's output rows r_t^T S_t' (``model/v7.py`` ``wkv7``'s ``torch.stack``) and
        the name of ``r``, or None."""
        after = [*chain.before[1:], chain.last]  # the state after each token
        for node in self.nodes:
            axis = next((a.i for a in node.attribute if a.name == "axis"), None)
            if node.op_type != "Concat" or len(node.input) != len(after) or axis not in POSITION_AXES:
                continue
            for position in POSITION_AXES:
                env: dict | None = {f"after {t}": state for t, state in enumerate(after)}
                for t, row in enumerate(node.input):
                    pattern = op("Unsqueeze", op("MatMul", _at("r", -2, position, t), f"after {t}"), Const(value=(axis,)))
                    if (env := next(self.match(pattern, row, env), None)) is None:
                        break
                else:
                    return node, env["r"]
        return None
