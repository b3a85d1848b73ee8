"""compile/tvm/params.py: large constants become one shared, deduplicated parameter list; the numbers stay the same."""

from __future__ import annotations

import numpy as np
import pytest

tvm = pytest.importorskip("tvm")
from tvm import relax  # noqa: E402

from rwkv_edge.compile.tvm.params import LIFT_MIN_ELEMENTS, lift_weights  # noqa: E402

RNG = np.random.default_rng(0)
SHARED = RNG.standard_normal((64, 32)).astype(np.float32)  # used by both functions
TILES = RNG.integers(0, 256, (32, 64)).astype(np.uint8)  # what int8/int4 packing makes: uint8 tiles ...
SCALES = RNG.standard_normal((32, 64)).astype(np.float16)  # ... and fp16 scales
SIGNED = RNG.integers(-128, 128, (32, 64)).astype(np.int8)
SMALL = np.float32(0.5) * np.ones(32, np.float32)  # under LIFT_MIN_ELEMENTS: stays in the library
STATE = np.zeros((1, 4, 32, 32), np.float32)  # initial_state(): a function without inputs keeps its constants


def module() -> tvm.IRModule:
    """main(x) and prefill(x) over the same weight; prefill also uses the int8/uint8/fp16 constants."""
    builder = relax.BlockBuilder()
    x = relax.Var("x", relax.TensorType((1, 64), "float32"))
    with builder.function("main", [x]):
        y = builder.emit(relax.op.matmul(x, relax.const(SHARED)))
        builder.emit_func_output(relax.op.add(y, relax.const(SMALL)))
    x = relax.Var("x", relax.TensorType((1, 64), "float32"))
    with builder.function("prefill", [x]):
        y = builder.emit(relax.op.matmul(x, relax.const(SHARED.copy())))  # equal content, another constant
        parts = [relax.op.astype(relax.const(a), "float32") for a in (TILES, SCALES, SIGNED)]
        z = builder.emit(relax.op.add(relax.op.add(parts[0], parts[1]), parts[2]))  # (32, 64)
        builder.emit_func_output(relax.op.matmul(y, z))
    with builder.function("initial_state", []):
        builder.emit_func_output(relax.const(STATE))
    return builder.get()


def test_one_parameter_per_content_shared_by_every_function():
    mod, values = lift_weights(module())
    assert [v.dtype for v in values] == [np.float32, np.uint8, np.float16, np.int8]
    assert np.array_equal(values[0], SHARED) and np.array_equal(values[1], TILES)
    for name in ("main", "prefill"):
        func = mod[name]
        assert int(func.attrs["num_input"]) == 1
        assert [p.name for p in func.params] == ["x", "w0", "w1", "w2", "w3"]  # same list, same order
    assert len(mod["initial_state"].params) == 0
    assert min(SHARED.size, TILES.size) >= LIFT_MIN_ELEMENTS > SMALL.size


def test_the_lifted_module_computes_what_the_original_does():
    x = RNG.standard_normal((1, 64)).astype(np.float32)
    mod, values = lift_weights(module())
    before = relax.VirtualMachine(tvm.compile(module(), "llvm"), tvm.cpu())
    after = relax.VirtualMachine(tvm.compile(mod, "llvm"), tvm.cpu())
    weights = [tvm.runtime.tensor(np.asarray(v)) for v in values]
    for name in ("main", "prefill"):
        want = before[name](tvm.runtime.tensor(x)).numpy()
        np.testing.assert_array_equal(after[name](tvm.runtime.tensor(x), *weights).numpy(), want)
    np.testing.assert_array_equal(after["initial_state"]().numpy(), STATE)


# -- an export's initializers bound as weights (bind_initializers) -------------------------------------
def external_graph(tmp_path, location: str, length: int | None = None):
    """y = x @ W with W (64, 32) in an external data file written beside the graph."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    tensor = numpy_helper.from_array(SHARED, "w")
    (tmp_path / "w.bin").write_bytes(SHARED.tobytes())
    tensor.ClearField("raw_data")
    tensor.data_location = TensorProto.EXTERNAL
    for key, value in (("location", location), ("offset", "0"), ("length", str(length or SHARED.nbytes))):
        tensor.external_data.add(key=key, value=value)
    graph = helper.make_graph([helper.make_node("MatMul", ["x", "w"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 64])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 32])], [tensor])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])


def test_bound_initializers_are_inputs_read_only_when_written(tmp_path):
    from rwkv_edge.compile.tvm.params import WeightTable, bind_initializers

    table = WeightTable()
    proto = external_graph(tmp_path, "w.bin")
    assert bind_initializers(proto, tmp_path, table) == 1
    assert not proto.graph.initializer and [i.name for i in proto.graph.input] == ["x", "rwkv_edge_weight_0"]
    again = external_graph(tmp_path, "w.bin")  # the prefill graph's copy: the same weight
    assert bind_initializers(again, tmp_path, table) == 1 and len(table.by_key) == 1
    (weight,) = table.by_name.values()
    np.testing.assert_array_equal(np.asarray(weight), SHARED)


@pytest.mark.parametrize("location, length, message", [
    ("../w.bin", None, "not a file beside the graph"),
    ("/etc/passwd", None, "not a file beside the graph"),
    ("w.bin", 7, "does not fit"),
    ("missing.bin", None, "does not fit"),
])
def test_external_data_outside_the_artifact_or_of_the_wrong_size_is_refused(tmp_path, location, length, message):
    from rwkv_edge.compile.tvm.params import WeightTable, bind_initializers
    from rwkv_edge.errors import ArtifactError

    with pytest.raises(ArtifactError, match=message):
        bind_initializers(external_graph(tmp_path, location, length), tmp_path, WeightTable())
