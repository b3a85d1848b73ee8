"""The exported graph cleaned up at a cost that follows the graph, not the weights.

onnxscript's optimizer (constant folding, then its rewrite rules) runs with every large weight held
back: the weights are detached from their initializers while it runs and put back after, so nothing
reads, folds or copies them. Its only fold of a large tensor, ``Transpose(W)`` of a projection
(torch exports ``x @ W.T`` so), is done here instead as a lazy initializer that the save computes
and writes one weight at a time. Two more departures from ``onnxscript.optimizer.optimize``:

- the multi-output rewrite rules are left out: onnxscript matches them by trying every node of the
  graph against every candidate, quadratic in the graph (measured: 147 s of a 150 s clean-up of the
  0.1B shape's 32-token prefill graph); none of them applies to these graphs (same node counts
  with and without them);
- nothing else changes: the same passes in the same order.
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Collection

import numpy as np
import onnx_ir as ir

from onnxscript import rewriter
from onnxscript.optimizer import _constant_folding

LARGE = _constant_folding.DEFAULT_CONSTANT_FOLD_INPUT_SIZE_LIMIT  # elements above which the optimizer never folds
RULES = tuple(rule for rule in rewriter._DEFAULT_REWRITE_RULES if rule._target_pattern.has_single_output_node)


def clean_up(model: ir.Model, keep: Collection[str] = ()) -> None:
    """``onnxscript.optimizer.optimize`` minus the multi-output rules, without touching the large weights or
    those named in ``keep`` (the matrices that become MatMulNBits, which must stay ``MatMul(x, Transpose(W))``
    of their own initializer however small: the optimizer folds a small ``Transpose(W)`` into a new constant)."""
    from onnx_ir.passes import common

    held = {name: value.const_value for name, value in model.graph.initializers.items()
            if value.const_value is not None and (value.const_value.size > LARGE or name in keep)}
    for name in held:
        model.graph.initializers[name].const_value = None
    # deduplication skips the held-back weights (distinct parameters) and says so once for each
    quiet = logging.getLogger("onnx_ir.passes.common.initializer_deduplication")
    level = quiet.level
    quiet.setLevel(logging.ERROR)
    try:
        steps = ir.passes.PassManager([
            _constant_folding.FoldConstantsPass(shape_inference=True, input_size_limit=LARGE,
                                                output_size_limit=_constant_folding.DEFAULT_CONSTANT_FOLD_OUTPUT_SIZE_LIMIT),
            rewriter.RewritePass(copy.deepcopy(RULES)),  # fresh: a rule keeps the last graph it matched
            common.RemoveUnusedNodesPass(), common.RemoveUnusedFunctionsPass(), common.RemoveUnusedOpsetsPass(),
        ], steps=2, early_stop=True)
        ir.passes.Sequential(
            common.InlinePass(), steps, common.RemoveUnusedNodesPass(),
            common.LiftConstantsToInitializersPass(lift_all_constants=True, size_limit=0),
            common.LiftSubgraphInitializersToMainGraphPass(), common.DeduplicateInitializersPass(),
            common.CommonSubexpressionEliminationPass(), common.OutputFixPass(), common.NameFixPass(),
        )(model)
    finally:
        quiet.setLevel(level)

        for name, value in held.items():
            if name in model.graph.initializers:
                model.graph.initializers[name].const_value = value


def fold_weight_transposes(graph: ir.Graph) -> int:
    """Replace every ``Transpose`` of a 2-D initializer that nothing else reads by an initializer
    holding the transposed matrix, computed when the graph is saved; returns how many."""
    count = 0
    for node in list(graph):
        weight = node.inputs[0] if node.op_type == "Transpose" and node.domain in ("", "ai.onnx") else None
        if weight is None or not weight.is_initializer() or weight.const_value is None or len(weight.shape) != 2:
            continue
        perm = node.attributes.get("perm")
        if (perm is not None and list(perm.as_ints()) != [1, 0]) or len(weight.uses()) != 1:
            continue
        folded = lazy_initializer(graph, f"{weight.name}.T", (weight.shape[1], weight.shape[0]), weight.dtype,
                                  lambda source=weight.const_value: np.ascontiguousarray(source.numpy().T))
        ir.convenience.replace_all_uses_with(node.outputs[0], folded)
        graph.remove(node, safe=True)
        graph.initializers.pop(weight.name).const_value = None  # the lazy initializer holds it now
        count += 1
    return count


def lazy_initializer(graph: ir.Graph, name: str, shape: tuple[int, ...], dtype: ir.DataType, compute) -> ir.Value:
    """A new initializer of ``graph`` whose values ``compute()`` (a numpy array) gives when the graph is saved."""
    tensor = ir.LazyTensor(lambda: ir.tensor(compute(), name=name), dtype=dtype, shape=ir.Shape(shape), name=name)
    value = ir.Value(name=name, shape=ir.Shape(shape), type=ir.TensorType(dtype), const_value=tensor)
    graph.register_initializer(value)
    return value
