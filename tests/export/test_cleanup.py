"""export/cleanup.py and the export's weights: the clean-up never reads a weight, transposes and
MatMulNBits are computed as the graph is saved, and nothing keeps the weights alive afterwards."""

from __future__ import annotations

import gc

import numpy as np
import onnx
import onnx_ir as ir
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper

from rwkv_edge.export.cleanup import LARGE, RULES, clean_up, fold_weight_transposes
from rwkv_edge.export import OnnxOptions, export_onnx

RNG = np.random.default_rng(0)


def model_with(weight: np.ndarray) -> ir.Model:
    """y = x @ W.T + 0 (the Add of a folded zero: the clean-up still folds what it should)."""
    n, k = weight.shape
    graph = helper.make_graph(
        [helper.make_node("Transpose", ["w"], ["wt"], perm=[1, 0]), helper.make_node("MatMul", ["x", "wt"], ["xw"]),
         helper.make_node("Mul", ["zero", "two"], ["z"]), helper.make_node("Add", ["xw", "z"], ["y"])], "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, k])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, n])],
        [numpy_helper.from_array(weight, "w"), numpy_helper.from_array(np.zeros(n, np.float32), "zero"),
         numpy_helper.from_array(np.float32(2), "two")])
    return ir.serde.deserialize_model(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)]))


def test_the_clean_up_never_reads_a_large_weight_and_still_folds_the_rest():
    weight = RNG.standard_normal((128, 96)).astype(np.float32)
    assert weight.size > LARGE
    model = model_with(weight)
    reads = []
    value = model.graph.initializers["w"]
    original = value.const_value
    value.const_value = ir.LazyTensor(lambda: reads.append(1) or original, dtype=original.dtype, shape=original.shape)
    clean_up(model)
    assert not reads
    assert [n.op_type for n in model.graph] == ["Transpose", "MatMul", "Add"]  # Mul of constants folded
    assert model.graph.initializers["w"].const_value is not None  # put back
    assert fold_weight_transposes(model.graph) == 1 and not reads  # folded lazily: computed at save
    proto = ir.serde.serialize_model(model)
    assert reads and [n.op_type for n in proto.graph.node] == ["MatMul", "Add"]
    stored = {t.name: numpy_helper.to_array(t) for t in proto.graph.initializer}
    np.testing.assert_array_equal(stored["w.T"], weight.T)


def test_no_rule_matches_by_trying_every_node():
    """onnxscript's multi-output patterns are matched against every node of the graph for every
    candidate: quadratic in the graph (147 s of the 0.1B prefill clean-up)."""
    assert RULES and all(rule._target_pattern.has_single_output_node for rule in RULES)


@pytest.mark.parametrize("weights", ["fp32", "int4"])
def test_an_export_keeps_no_weight_alive(make_ckpt, tmp_path, weights):
    """onnxscript's rewrite rules hold the last graph they matched: the clean-up matches with fresh ones."""
    path = make_ckpt("v7", n_embd=128, vocab_size=1000)
    export_onnx(path, tmp_path / "out", OnnxOptions(weights, prefill_chunk=2), log=lambda _: None)
    gc.collect()
    alive = [o for o in gc.get_objects() if type(o) in (torch.Tensor, torch.nn.Parameter) and tuple(o.shape) == (1000, 128)]
    assert not alive
    proto = onnx.load(str(tmp_path / "out" / "model.onnx"))
    assert weights == "fp32" or any(n.op_type == "MatMulNBits" for n in proto.graph.node)
