"""compile/tvm/slices.py: the position Gathers of an exported graph become Slice + Squeeze before TVM imports
it; the rewritten graph computes exactly what the exported one does (onnxruntime runs both), and the
Relax module loses the run-time index arithmetic."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from rwkv_edge.compile.tvm.importer import import_graph
from rwkv_edge.compile.tvm.slices import gathers_as_slices


def _run(proto: onnx.ModelProto, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
    session = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(None, feeds)


def _feeds(proto: onnx.ModelProto, vocab: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    feeds = {}
    for value in proto.graph.input:
        shape = [d.dim_value for d in value.type.tensor_type.shape.dim]
        if value.type.tensor_type.elem_type == TensorProto.INT64:
            feeds[value.name] = rng.integers(0, vocab, shape).astype(np.int64)
        else:
            feeds[value.name] = rng.normal(0, 1, shape).astype(np.float32)
    return feeds


@pytest.mark.parametrize("version", ["v4", "v5", "v6", "v7"])
def test_the_rewritten_prefill_graph_computes_the_same_numbers(onnx_export, version):
    path = onnx_export(version, prefill=8) / "prefill.onnx"
    exported = onnx.load(str(path))
    rewritten = onnx.load(str(path))
    count = gathers_as_slices(rewritten)
    assert count >= 8 * 2  # at least two tensors a position (v4's k and v) in each of the 8 positions
    assert sum(n.op_type == "Gather" for n in exported.graph.node) - count == sum(
        n.op_type == "Gather" for n in rewritten.graph.node)
    onnx.checker.check_model(rewritten, full_check=True)
    vocab = next(d for d in exported.graph.initializer if "emb" in d.name).dims[0]
    feeds = _feeds(exported, vocab)
    for before, after in zip(_run(exported, feeds), _run(rewritten, feeds), strict=True):
        np.testing.assert_array_equal(before, after)


def test_the_relax_import_has_no_index_arithmetic_left(onnx_export):
    path = onnx_export("v7", prefill=8) / "prefill.onnx"
    main = import_graph(path, lambda _: None)["main"].script()
    # what is left is the embedding's: its rows, and the normalisation of the token ids (inputs, not constants)
    assert main.count("R.shape_to_tensor(") == 1
    assert main.count("R.take(") == 2
    assert main.count("R.strided_slice(") >= 8 * 6  # v7's six tensors a position


def _gather_model(index: np.ndarray, opset: int = 18) -> onnx.ModelProto:
    graph = helper.make_graph(
        [helper.make_node("Gather", ["x", "i"], ["y"], axis=1)], "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 3, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
        [numpy_helper.from_array(index, "i")])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])


@pytest.mark.parametrize("index, rewritten", [(np.array(2, np.int64), 1), (np.array(0, np.int32), 1),
                                               (np.array(-1, np.int64), 1), (np.array(-3, np.int64), 1),
                                               (np.array([0, 2], np.int64), 0)])
def test_scalar_indices_are_rewritten_and_compute_the_same(index, rewritten):
    proto = _gather_model(index)
    x = np.arange(24, dtype=np.float32).reshape(2, 3, 4)
    expected = _run(proto, {"x": x})[0]
    assert gathers_as_slices(proto) == rewritten
    np.testing.assert_array_equal(_run(proto, {"x": x})[0], expected)


def test_an_opset_before_13_is_left_alone():
    proto = _gather_model(np.array(1, np.int64), opset=12)
    assert gathers_as_slices(proto) == 0
    assert [n.op_type for n in proto.graph.node] == ["Gather"]


def test_an_index_that_is_also_a_graph_input_is_left_alone():
    """An initializer named as a graph input is only a default: the caller may feed another index."""
    proto = _gather_model(np.array(1, np.int64))
    proto.graph.input.append(helper.make_tensor_value_info("i", TensorProto.INT64, []))
    assert gathers_as_slices(proto) == 0
