"""compile/params.py: large constants become one shared, deduplicated parameter list; the numbers stay the same."""

from __future__ import annotations

import numpy as np
import pytest

tvm = pytest.importorskip("tvm")
from tvm import relax  # noqa: E402

from rwkv_edge.compile.params import LIFT_MIN_ELEMENTS, lift_weights  # noqa: E402

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
