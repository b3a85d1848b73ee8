"""Kernels joined into an imported graph's ``main`` in the holes a cut left (``bi_wkv.py``, ``wkv7.py``).

A cut (``bi_wkv_graph.py``, ``wkv7_graph.py``) turned a recurrence's results into graph inputs and what it
reads into graph outputs. The importer binds an output where ``main`` returns it, at the end; here each
kernel reads those values computed again where their inputs are ready (the late copies go unused), its
results take the place of the hole inputs, and ``main`` goes back to its own parameters and outputs.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import tvm
from tvm import relax
from tvm.relax.expr_functor import PyExprMutator, mutator

from ...errors import ArtifactError, ShapeError

Emit = Callable[[relax.BlockBuilder, list[relax.Expr]], list[relax.Expr]]


@dataclass(frozen=True)
class Hole:
    """One kernel to join: ``results``, the names of the graph inputs that stand for its results; ``reads``,
    what it reads, each ``("output", i)`` (``main``'s output i) or ``("input", i)`` (its parameter i);
    ``emit`` emits it given those (bound) and returns its results in ``results``' order; ``name`` for errors."""

    results: tuple[str, ...]
    reads: tuple[tuple[str, int], ...]
    emit: Emit
    name: str


def splice(mod: tvm.IRModule, holes: list[Hole], outputs: int) -> tvm.IRModule:
    """``mod`` (imported from a graph with ``holes`` cut) with each hole's kernel joined, and ``main`` back to
    the parameters but the holes' and its first ``outputs`` outputs (1: that one alone, not a tuple)."""
    if not holes:
        return mod
    func = mod["main"]
    params = {p.name: p for p in func.params}
    fields = _bound_value(func.body, func.body.body).fields

    def read(kind: str, i: int) -> relax.Expr:
        return func.params[i] if kind == "input" else _bound_value(func.body, fields[i])

    waiting = [(hole, [read(*r) for r in hole.reads], [params[name] for name in hole.results]) for hole in holes]
    splicer = _Splice(mod, waiting, func.params)
    body = splicer.visit_expr(func.body)
    if splicer.waiting:
        raise ArtifactError(f"graph: what {splicer.waiting[0][0].name} reads is never bound")
    returned = body.body
    results = [relax.TupleGetItem(returned, i) for i in range(outputs)]
    last = results[0] if outputs == 1 else relax.Tuple(results)
    ty = fields[0].ty if outputs == 1 else relax.TupleType([f.ty for f in fields[:outputs]])
    cut = {name for hole in holes for name in hole.results}
    kept = [p for p in func.params if p.name not in cut]
    new = relax.Function(kept, relax.SeqExpr(body.blocks, last), ty, func.is_pure, func.attrs)
    new = new.with_attr("num_input", len(kept))
    builder = splicer.builder_
    builder.update_func(builder.get().get_global_var("main"), new)
    passes = [relax.transform.Normalize(), relax.transform.CanonicalizeBindings(), relax.transform.DeadCodeElimination()]
    return tvm.ir.transform.Sequential(passes)(builder.get())


def _shape(x: relax.Expr) -> tuple[list[int], str]:
    return [int(d) for d in x.ty.shape], x.ty.dtype


def _bound_value(seq: relax.SeqExpr, var: relax.Var):
    for block in seq.blocks:
        for binding in block.bindings:
            if binding.var.same_as(var):
                return binding.value
    raise ValueError(f"{var.name} is not bound in the function body")


@mutator
class _Splice(PyExprMutator):
    """Emits each hole's kernel once what it reads is bound, and reads its results where the hole's inputs
    were read."""

    def __init__(self, mod: tvm.IRModule, waiting: list, params) -> None:
        super().__init__(mod)
        self.waiting = list(waiting)  # (hole, its reads, its result inputs)
        self.bound: set = set(params)  # the variables bound so far (Relax variables hash by identity)

    def visit_var_binding_(self, binding) -> None:
        super().visit_var_binding_(binding)
        self.bound.add(binding.var)
        ready = [w for w in self.waiting if all(x in self.bound for e in w[1] for x in relax.analysis.free_vars(e))]
        self.waiting = [w for w in self.waiting if not any(w is r for r in ready)]
        for hole, reads, inputs in ready:
            args = [e if isinstance(e, relax.Var) else self.builder_.emit(self.visit_expr(e)) for e in reads]
            for old, new in zip(inputs, hole.emit(self.builder_, args)):
                if _shape(old) != _shape(new):
                    raise ShapeError(f"graph: {hole.name} computes {new.ty} where the graph reads {old.ty}")
                self.set_var_remap(old, new)
