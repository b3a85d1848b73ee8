"""The CPU image build's own pieces: the O(T) Bi-WKV kernel against model/vision.py's ``bi_wkv``, the
scans found and cut in an image export (and left alone where any node differs), the patch
convolution as a matmul, and the number of kernel calls an image costs."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch
from onnx import numpy_helper

from rwkv_edge.artifact import open_artifact
from rwkv_edge.compile.tvm import TvmOptions
from rwkv_edge.compile.tvm.bi_wkv import EXP_FLOOR, bi_wkv_kernel, vector_exp
from rwkv_edge.compile.tvm.bi_wkv_graph import INPUT_PREFIX, cut_bi_wkvs
from rwkv_edge.compile.tvm.cpu import optimise
from rwkv_edge.compile.tvm.image import cpu_image_module
from rwkv_edge.compile.tvm.patches import patches_as_matmul
from rwkv_edge.contract import IMAGE_GRAPH
from rwkv_edge.model.vision import bi_wkv
from rwkv_edge.targets import get_target


def quiet(_: str) -> None:
    pass


def run_kernel(w, u, k, v, lanes: int) -> np.ndarray:
    import tvm

    kernel = bi_wkv_kernel(*k.shape, lanes)
    built = tvm.compile(tvm.IRModule({"main": kernel}), tvm.target.Target(get_target("x86_64-host").tvm_target()))
    device = tvm.cpu()
    args = [tvm.runtime.tensor(a, device) for a in (w, u, k, v, np.zeros_like(k))]
    built["main"](*args)
    return args[-1].numpy()


@pytest.mark.parametrize("shape, lanes, k_scale", [
    ((1, 196, 192), 8, 3.0),  # VRWKV-T's layer
    ((2, 25, 32), 8, 3.0),  # two images, an odd grid
    ((1, 7, 12), 1, 3.0),  # channels not a multiple of the vector: scalar lanes
    ((1, 16, 16), 16, 40.0),  # exponents far beyond fp32's range: only the running maxima keep it finite
    ((1, 1, 8), 8, 3.0),  # one token: only its own term
])
def test_kernel_is_bi_wkv(shape, lanes, k_scale):
    """Max |kernel - bi_wkv in fp64| measured 1.3e-6 on VRWKV-T's shape (the fp32 graph's own: 1.0e-6)."""
    rng = np.random.default_rng(sum(shape))
    B, T, C = shape
    w = ((rng.uniform(-5, 3, C) + rng.normal(0, 1, C)) / T).astype(np.float32)  # decays of both signs
    u = (rng.normal(-1.2, 1, C) / T).astype(np.float32)
    k = (rng.normal(0, 1, shape) * k_scale).astype(np.float32)
    v = rng.normal(0, 1, shape).astype(np.float32)
    got = run_kernel(w, u, k, v, lanes)
    want = bi_wkv(*(torch.from_numpy(a).double() for a in (w, u, k, v))).numpy()
    assert np.isfinite(got).all()
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-5)


def test_exp_is_within_two_ulp():
    """Measured max relative error 7.7e-8 (one fp32 ulp is 6e-8 to 1.2e-7)."""
    import tvm
    from tvm.script import tirx as T

    n = 1 << 16

    @T.prim_func
    def exp(x: T.Buffer((n,), "float32"), y: T.Buffer((n,), "float32")):
        for g in range(n // 8):
            for i in T.vectorized(8):
                y[g * 8 + i] = vector_exp(x[g * 8 + i])

    x = -np.abs(np.random.default_rng(0).normal(0, 20, n)).astype(np.float32)
    x[:4] = [0.0, -1e38, EXP_FLOOR, -0.5 * np.log(2)]
    built = tvm.compile(tvm.IRModule({"main": exp}), tvm.target.Target(get_target("x86_64-host").tvm_target()))
    y = tvm.runtime.tensor(np.zeros(n, np.float32), tvm.cpu())
    built["main"](tvm.runtime.tensor(x, tvm.cpu()), y)
    got, want = y.numpy(), np.exp(x.astype(np.float64))
    normal = x >= EXP_FLOOR
    assert np.abs(got[normal] / want[normal] - 1).max() < 1.2e-7
    assert got[0] == 1.0 and 0 < got[1] < 2e-38


def scaled_graph(vision_export) -> onnx.ModelProto:
    return onnx.load(str(open_artifact(vision_export("scaled")).graph(IMAGE_GRAPH)))


def test_every_scan_is_cut_with_its_constants(vision_export, vision_ckpt):
    proto = scaled_graph(vision_export)
    before = len(proto.graph.node)
    cuts = cut_bi_wkvs(proto)
    assert len(cuts) == 2  # both layers
    tensors = torch.load(vision_ckpt("scaled"))["state_dict"]
    for i, cut in enumerate(cuts):  # w = spatial_decay / T, u = spatial_first / T, T = 25 (20 px, patch 4)
        assert np.array_equal(cut.w, (tensors[f"backbone.layers.{i}.att.spatial_decay"] / 25).numpy())
        assert np.array_equal(cut.u, (tensors[f"backbone.layers.{i}.att.spatial_first"] / 25).numpy())
    ops = {node.op_type for node in proto.graph.node}
    assert not ops & {"Exp", "Max", "Div"}, ops  # the scans' own ops are gone
    assert before - len(proto.graph.node) > 2 * 100
    inputs, outputs = [i.name for i in proto.graph.input], [o.name for o in proto.graph.output]
    assert inputs[-2:] == [f"{INPUT_PREFIX}0", f"{INPUT_PREFIX}1"]
    assert len(outputs) == 1 + 4 and [c.key for c in cuts] == [1, 3] and [c.value for c in cuts] == [2, 4]
    read = {x for node in proto.graph.node for x in node.input}
    assert {f"{INPUT_PREFIX}0", f"{INPUT_PREFIX}1"} <= read


def initializer(proto, name):
    return next(i for i in proto.graph.initializer if i.name == name)


def change_decay(proto):  # the d = 4 step of one scan decays by 4.5 w instead of 4 w
    node = [n for n in proto.graph.node if n.op_type == "Sub" and any(
        i.name == n.input[1] and tuple(i.dims) == (32,) for i in proto.graph.initializer)][2]
    tensor = initializer(proto, node.input[1])
    value = numpy_helper.to_array(tensor) * np.float32(4.5 / 4)
    proto.graph.initializer.append(numpy_helper.from_array(value, name="changed"))
    node.input[1] = "changed"


def change_fill(proto):  # one shift pads the maxima with 0 instead of -1e38
    pad = next(n for n in proto.graph.node if n.op_type == "Pad" and len(n.input) == 3
               and float(numpy_helper.to_array(initializer(proto, n.input[2]))) < -1e37)
    proto.graph.initializer.append(numpy_helper.from_array(np.array(0.0, np.float32), name="zero_fill"))
    pad.input[2] = "zero_fill"


def change_max(proto):  # one running maximum becomes a minimum
    next(n for n in proto.graph.node if n.op_type == "Max").op_type = "Min"


@pytest.mark.parametrize("change", [change_decay, change_fill, change_max])
def test_a_scan_that_differs_anywhere_is_kept(change, vision_export):
    proto = scaled_graph(vision_export)
    change(proto)
    cuts = cut_bi_wkvs(proto)
    assert len(cuts) == 1  # only the other layer's
    assert any(node.op_type == "Exp" for node in proto.graph.node)


def test_only_a_patch_convolution_becomes_a_matmul():
    import tvm
    from tvm import relax

    def module(stride: int, kernel: int):
        builder = relax.BlockBuilder()
        images = relax.Var("images", relax.TensorType((1, 3, 16, 16), "float32"))
        weight = relax.const(np.ones((8, 3, kernel, kernel), np.float32))
        with builder.function("main", [images]):
            with builder.dataflow():
                out = builder.emit_output(relax.op.nn.conv2d(images, weight, strides=stride))
            builder.emit_func_output(out)
        return builder.get()

    assert patches_as_matmul(module(4, 4))[1] == 1
    assert patches_as_matmul(module(2, 4))[1] == 0  # overlapping windows: a true convolution
    mod, _ = patches_as_matmul(module(4, 4))
    ops = set()
    relax.analysis.post_order_visit(mod["main"], lambda e: ops.add(e.op.name) if isinstance(e, relax.Call) else None)
    assert "relax.matmul" in ops and "relax.nn.conv2d" not in ops and isinstance(mod, tvm.IRModule)


def test_an_image_costs_few_kernel_calls(vision_export):
    """Kernel calls per image of the 2-layer model: 550 with the scans as ops, 151 with the kernel (VRWKV-T:
    4356 and 773)."""
    import tvm
    from tvm import relax

    target = get_target("x86_64-host")
    options = TvmOptions("x86_64-host", weights="fp32")
    path = open_artifact(vision_export("scaled")).graph(IMAGE_GRAPH)
    mod, counts = cpu_image_module(path, target, options, quiet)
    assert counts == {"bi-wkv kernels": 2, "patch matmul": 1}
    mod, _, _ = optimise(mod, target, options, quiet, fuse=False)
    calls = []
    call_tir = tvm.ir.Op.get("relax.call_tir")
    relax.analysis.post_order_visit(mod["main"], lambda e: calls.append(e) if isinstance(e, relax.Call) and e.op.same_as(call_tir) else None)
    assert len(calls) <= 180, len(calls)
