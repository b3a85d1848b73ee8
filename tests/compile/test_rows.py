"""The row-wise schedule of a prefill call's norms and activation rounding (compile/tvm/rows.py): the same
numbers as TVM's default lowering, bit for bit, one parallel loop over the rows, and kernels that are not
row-wise (one row, a block reading another row) left to the default lowering."""

from __future__ import annotations

import numpy as np
import pytest
import tvm
from tvm import te, topi

from rwkv_edge.compile.tvm.intdot import quantize_activations
from rwkv_edge.compile.tvm.rows import schedule_rows
from rwkv_edge.compile.tvm.tuning import ScheduleParams
from rwkv_edge.targets import get_target

PARAMS = ScheduleParams(tile=64, unroll=4, vector=8)


def layer_norm(rows: int) -> tvm.tirx.PrimFunc:
    x = te.placeholder((1, rows, 768), "float32", name="x")
    weight, bias = te.placeholder((768,), "float32", name="weight"), te.placeholder((768,), "float32", name="bias")
    return te.create_prim_func([x, weight, bias, topi.nn.layer_norm(x, weight, bias, axis=[-1], epsilon=1e-5)])


def rounding(rows: int) -> tvm.tirx.PrimFunc:
    x = te.placeholder((1, rows, 768), "float32", name="x")
    return te.create_prim_func([x, *quantize_activations(x, 32)])


def shifted(rows: int) -> tvm.tirx.PrimFunc:  # each row reads the row before it, as a token shift does
    x = te.placeholder((rows, 64), "float32", name="x")
    first = te.compute((rows,), lambda t: x[t, 0] * 2, name="first")
    out = te.compute((rows, 64), lambda t, c: x[t, c] - first[(t + rows - 1) % rows], name="shifted")
    return te.create_prim_func([x, out])


def run(func: tvm.tirx.PrimFunc, inputs: list[np.ndarray], outputs: list[tuple[tuple, str]]) -> list[np.ndarray]:
    built = tvm.compile(tvm.IRModule({"main": func}), tvm.target.Target(get_target("x86_64-host").tvm_target()))
    results = [tvm.runtime.tensor(np.zeros(shape, dtype)) for shape, dtype in outputs]
    built["main"](*(tvm.runtime.tensor(a) for a in inputs), *results)
    return [r.numpy() for r in results]


ROW = (1, 32, 768)


@pytest.mark.parametrize("make, inputs, outputs", [
    (layer_norm, lambda rng: [rng.normal(0, 3, ROW), rng.normal(1, 0.1, 768), rng.normal(0, 0.1, 768)],
     [(ROW, "float32")]),
    (rounding, lambda rng: [rng.normal(0, 3, ROW)], [(ROW, "int8"), ((1, 32, 24), "float32"), ((1, 32, 24), "int32")]),
])
def test_rows_compute_what_the_default_lowering_computes(make, inputs, outputs):
    func = make(32)
    scheduled = schedule_rows(func, PARAMS)
    assert scheduled is not None and "T.parallel(32)" in scheduled.mod["main"].script()
    values = [a.astype(np.float32) for a in inputs(np.random.default_rng(0))]
    for got, want in zip(run(scheduled.mod["main"], values, outputs), run(func, values, outputs)):
        np.testing.assert_array_equal(got, want)


def test_other_kernels_keep_the_default_lowering():
    assert schedule_rows(layer_norm(1), PARAMS) is None  # a decode step's one row
    assert schedule_rows(shifted(32), PARAMS) is None  # a block that reads another row
