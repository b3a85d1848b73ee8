"""The quantizer: its numbers, its round trip, and onnxruntime's MatMulNBits computing with them."""

from __future__ import annotations

import numpy as np
import pytest

from rwkv_edge.errors import OptionError
from rwkv_edge.quantize import SMALLEST_SCALE, quantize
from rwkv_edge.weights import weight_format

RNG = np.random.default_rng(7)


def matrix(n: int = 48, k: int = 128, scale: float = 0.05) -> np.ndarray:
    return (RNG.standard_normal((n, k)) * scale).astype(np.float32)


# int4: 16 levels with the group's extreme at -8, so a weight of the other sign near it clips to 7: one step
@pytest.mark.parametrize("bits, low, high, steps", [(8, -127, 127, 0.5), (4, -8, 7, 1.0)])
def test_levels_scales_and_error(bits, low, high, steps):
    w = matrix()
    q = quantize(w, bits, 32)
    assert q.values.dtype == np.int8 and q.scales.dtype == np.float16 and q.scales.shape == (48, 4)
    assert low <= q.values.min() and q.values.max() <= high
    extremes = np.abs(w).reshape(48, 4, 32).max(axis=2)
    # every weight within half a step (int4: one) of its group's scale; the extreme on the extreme level
    error = np.abs(q.dequantize() - w).reshape(48, 4, 32).max(axis=2)
    step = np.abs(q.scales.astype(np.float32))
    assert np.all(error <= step * steps * (1 + 2**-10))
    assert np.all(step <= extremes / (high if bits == 8 else 8) * (1 + 2**-10))
    edge = 127 if bits == 8 else 8
    assert np.all(np.abs(q.values).reshape(48, 4, 32).max(axis=2) == edge)


@pytest.mark.parametrize("bits", [8, 4])
@pytest.mark.parametrize("scale", [0.05, 1e-3, 1e-6, 0.0])
def test_a_dequantized_matrix_quantizes_to_itself(bits, scale):
    w = matrix(scale=scale)
    w[0, :32] = 0  # an all-zero group
    q = quantize(w, bits, 32)
    again = quantize(q.dequantize(), bits, 32)  # what the export does as it writes MatMulNBits
    np.testing.assert_array_equal(again.dequantize(), q.dequantize())  # (a group of zeros may lose its scale)
    assert np.all(q.scales[0, 0] == 0) and np.all(q.values[0, :32] == 0)
    assert np.all((q.scales == 0) | (np.abs(q.scales) >= SMALLEST_SCALE)), "no subnormal scales"


def test_int4_packs_two_to_a_byte_low_nibble_first():
    q = quantize(matrix(2, 64), 4, 32)
    packed = q.packed()
    assert packed.shape == (2, 32) and packed.dtype == np.uint8
    np.testing.assert_array_equal(packed & 0xF, q.values[:, 0::2] + 8)
    np.testing.assert_array_equal(packed >> 4, q.values[:, 1::2] + 8)


def test_bad_groups_are_one_clear_error():
    with pytest.raises(OptionError, match="does not divide the input dimension 100"):
        quantize(matrix(4, 100), 8, 32)
    with pytest.raises(OptionError, match="not one of"):
        weight_format("int4").check_group(48)
    with pytest.raises(OptionError, match="applies to int8 and int4"):
        weight_format("fp32").check_group(32)
    assert weight_format("int8").check_group(None) == 32
    with pytest.raises(OptionError, match="beyond fp16 scales"):
        quantize(np.full((1, 32), 1e9, np.float32), 8, 32)


@pytest.mark.parametrize("bits", [8, 4])
@pytest.mark.parametrize("group", [16, 32, 128])
def test_onnxruntime_matmulnbits_computes_with_exactly_these_numbers(bits, group, tmp_path):
    """The real onnxruntime kernel on our packing against float64 numpy on the dequantized matrix."""
    import onnx
    import onnxruntime as ort
    from onnx import TensorProto, helper, numpy_helper

    from rwkv_edge.export.nbits import to_matmul_nbits, unpack

    import onnx_ir as ir

    n, k = 40, 256
    w = quantize(matrix(n, k), bits, group).dequantize()  # (N, K): what the model holds after quantize_weights
    graph = helper.make_graph([helper.make_node("Transpose", ["w"], ["wt"], perm=[1, 0]),
                               helper.make_node("MatMul", ["x", "wt"], ["y"])], "g",  # x @ W.T, as torch exports it
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [3, k])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [3, n])],
                              [numpy_helper.from_array(w, "w"), numpy_helper.from_array(w, "other")])
    model = ir.serde.deserialize_model(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)]))
    assert to_matmul_nbits(model, {"other"}, bits, group) == 0  # only the matrices named
    assert to_matmul_nbits(model, {"w"}, bits, group) == 1
    model = ir.serde.serialize_model(model)
    assert [node.op_type for node in model.graph.node] == ["MatMulNBits"]
    assert [i.name for i in model.graph.initializer] == ["other", "w_q%d" % bits, "w_q%d_scales" % bits]
    onnx.checker.check_model(model, full_check=True)
    x = RNG.standard_normal((3, k)).astype(np.float32)
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    got = session.run(None, {"x": x})[0]
    expected = x.astype(np.float64) @ w.T.astype(np.float64)
    assert np.abs(got - expected).max() / expected.std() < 1e-5  # fp32 sums of 256 products: ~1e-6
    stored = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}  # read back: the very same numbers
    found = unpack(stored["w_q%d" % bits], stored["w_q%d_scales" % bits], k, n, bits, group)
    np.testing.assert_array_equal(found.values, quantize(w, bits, group).values)
    np.testing.assert_array_equal(found.dequantize(), w)
