"""Patterns over an ONNX graph: a node tree whose leaves are variables, matched against the graph from one
tensor back to what it reads (``Matcher.solve``), and the clean-up after a cut (``drop_unused``). The
compiler finds the recurrences it computes as one kernel with them (``bi_wkv_graph.py``, ``wkv7_graph.py``).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import onnx
from onnx import helper, numpy_helper

COMMUTATIVE = {"Add", "Mul", "Max"}


def drop_unused(graph: onnx.GraphProto) -> None:
    """Remove the nodes none of whose outputs is read (by a node or as a graph output), repeatedly, then
    the initializers nothing reads."""
    while True:
        read = {x for node in graph.node for x in node.input} | {o.name for o in graph.output}
        kept = [node for node in graph.node if any(o in read for o in node.output)]
        if len(kept) == len(graph.node):
            break
        del graph.node[:]
        graph.node.extend(kept)
    read |= {i.name for i in graph.input}  # an initializer that is an input's default stays
    used = [i for i in graph.initializer if i.name in read]
    del graph.initializer[:]
    graph.initializer.extend(used)


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
    """Entry ``index`` (a value or a variable) of axis ``axis`` of ``x``: Squeeze(Slice(x, [i], [i + 1], [axis]),
    [axis]), as torch's ``unbind`` exports it and ``slices.gathers_as_slices`` rewrites a Gather of one position."""

    x: object
    index: object
    axis: int = 0


Env = dict[str, object]


class Matcher:
    """The producers and constants of an ONNX graph (initializers loaded), to match patterns against."""

    def __init__(self, graph: onnx.GraphProto) -> None:
        self.producer = {o: node for node in graph.node for o in node.output}
        self.constants = {i.name: numpy_helper.to_array(i) for i in graph.initializer}

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
            yield from self._unbind(pattern, name, env)

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

    def _unbind(self, pattern: Unbind, name: str, env: Env) -> Iterator[Env]:
        axes = Const(value=(pattern.axis,))
        squeeze = self.producer.get(name)
        if squeeze is None or squeeze.op_type != "Squeeze" or len(squeeze.input) != 2:
            return
        sliced = self.producer.get(squeeze.input[0])
        if sliced is None or sliced.op_type != "Slice" or len(sliced.input) != 4:
            return
        bounds = [self.constants.get(x) for x in sliced.input[1:3]]
        if any(b is None or b.shape != (1,) for b in bounds) or int(bounds[1][0]) != int(bounds[0][0]) + 1:
            return
        for found in self.match_all([(axes, squeeze.input[1]), (axes, sliced.input[3])], env):
            found = _bind_value(pattern.index, int(bounds[0][0]), found)
            if found is not None:
                yield from self.match(pattern.x, sliced.input[0], found)

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
            if (env := _bind_value(var, value, env)) is None:
                return
        yield from self.match(pattern.x, sliced.input[0], env)


def _bind_value(var: object, value: object, env: Env) -> Env | None:
    """``env`` with the variable ``var`` (a str) bound to ``value``, or ``env`` if ``var`` is that value
    itself; None where it holds another."""
    if not isinstance(var, str):
        return env if var == value else None
    if var in env:
        return env if env[var] == value else None
    return {**env, var: value}
