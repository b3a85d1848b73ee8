"""The CPU prefill build's RWKV-7 recurrence: the kernel against model/v7.py's ``wkv7`` in fp64, each
layer's chain found and cut in a prefill export (and left alone where any node differs), the cut graph
computing what the export computes under onnxruntime, and the kernel calls a prefill call costs."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from rwkv_edge.artifact import open_artifact
from rwkv_edge.compile.tvm import TvmOptions
from rwkv_edge.compile.tvm.slices import gathers_as_slices
from rwkv_edge.compile.tvm.wkv7 import wkv7_kernel
from rwkv_edge.compile.tvm.wkv7_graph import FACTORS, PREFIX, cut_wkv7s
from rwkv_edge.model.v7 import wkv7
from rwkv_edge.targets import get_target

TOKENS = [3, 141, 59, 26, 5, 35, 89, 79]


def run_kernel(state: np.ndarray, factors: dict[str, np.ndarray], lanes: int) -> tuple[np.ndarray, np.ndarray]:
    import tvm

    B, T, H, N = factors["r"].shape
    built = tvm.compile(tvm.IRModule({"main": wkv7_kernel(B, T, H, N, lanes)}),
                        tvm.target.Target(get_target("x86_64-host").tvm_target()))
    device = tvm.cpu()
    args = [tvm.runtime.tensor(a, device) for a in (state, *(factors[f] for f in FACTORS),
                                                     np.zeros((B, T, H, 1, N), np.float32), np.zeros_like(state))]
    built["main"](*args)
    return args[-2].numpy().squeeze(-2), args[-1].numpy()


def draw(shape: tuple[int, int, int, int], seed: int) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """A state and factors as a v7 layer makes them: kk of unit length, a and the decay in (0, 1)."""
    rng = np.random.default_rng(seed)
    B, T, H, N = shape
    kk = rng.normal(0, 1, shape)
    kk /= np.linalg.norm(kk, axis=-1, keepdims=True)
    a = rng.uniform(0, 1, shape)
    factors = {"kk": kk, "kka": kk * a, "w": np.exp(-0.606531 * rng.uniform(0, 1, shape)),
               "k": rng.normal(0, 1, shape), "v": rng.normal(0, 1, shape), "r": rng.normal(0, 1, shape)}
    return rng.normal(0, 1, (B, H, N, N)).astype(np.float32), {f: x.astype(np.float32) for f, x in factors.items()}


@pytest.mark.parametrize("shape, lanes", [
    ((1, 32, 12, 64), 16),  # the 0.1B shape's layer, a 32-token chunk, AVX-512 lanes
    ((1, 8, 2, 64), 8),  # the test models' layer
    ((2, 5, 3, 12), 4),  # two sequences, an odd chunk
    ((1, 4, 2, 6), 1),  # a head size that is not a multiple of the vector: scalar lanes
    ((1, 1, 2, 64), 16),  # one token
])
def test_kernel_is_wkv7(shape, lanes):
    """Max |kernel - wkv7 in fp64| / std: ~3e-7 on the 0.1B layer's shape."""
    state, factors = draw(shape, sum(shape))
    y, last = run_kernel(state, factors, lanes)
    f64 = {f: torch.from_numpy(x).double() for f, x in factors.items()}
    a = f64["kka"] / f64["kk"]
    want_y, want_state = wkv7(f64["r"], f64["w"], f64["k"], f64["v"], f64["kk"], a, torch.from_numpy(state).double())
    for got, want in ((y, want_y.numpy()), (last, want_state.numpy())):
        assert np.abs(got - want).max() / want.std() < 2e-6


def prefill_graph(onnx_export, version: str = "v7") -> onnx.ModelProto:
    proto = onnx.load(str(open_artifact(onnx_export(version, 8)).graph("prefill")))
    gathers_as_slices(proto)
    return proto


def test_every_layer_is_cut(onnx_export):
    proto = prefill_graph(onnx_export)
    before, outputs = len(proto.graph.node), len(proto.graph.output)
    cuts = cut_wkv7s(proto)
    assert len(cuts) == 2 and all(c.tokens == 8 and c.outputs == outputs for c in cuts)  # both layers
    inputs = [i.name for i in proto.graph.input]
    assert [inputs[c.initial] for c in cuts] == ["state.0.wkv", "state.1.wkv"]
    assert inputs[-4:] == [f"{PREFIX}output_0", f"{PREFIX}state_0", f"{PREFIX}output_1", f"{PREFIX}state_1"]
    assert len(proto.graph.output) == outputs + 2 * len(FACTORS)
    assert not any(node.op_type == "MatMul" and "wkv" in node.input[1] for node in proto.graph.node)
    assert before - len(proto.graph.node) > 2 * 8 * 8  # per layer and token: 7 ops of the update, the row and its gathers


def session(proto: onnx.ModelProto) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.log_severity_level = 3
    return ort.InferenceSession(proto.SerializeToString(), options)


def test_the_cut_graph_computes_the_export(onnx_export, tmp_path):
    """Each hole filled by the recurrence in numpy from the factors the cut graph returns (layer by layer:
    a layer's factors need the layers before it): every output as onnxruntime computes the export."""
    proto = prefill_graph(onnx_export)
    whole = session(proto)
    cuts = cut_wkv7s(proto)
    cut = session(proto)
    rng = np.random.default_rng(0)
    feeds = {i.name: rng.normal(0, 0.5, i.shape).astype(np.float32) for i in whole.get_inputs() if i.name != "tokens"}
    feeds["tokens"] = np.array([TOKENS], np.int64)
    want = whole.run(None, feeds)
    holes = {i.name: np.zeros([d.dim_value for d in i.type.tensor_type.shape.dim], np.float32)
             for i in proto.graph.input if i.name.startswith(PREFIX)}
    for c in cuts:
        outputs = cut.run(None, {**feeds, **holes})
        state = feeds[[i.name for i in proto.graph.input][c.initial]]
        factors = {f: outputs[i] for f, i in zip(FACTORS, c.factors)}
        y, last = wkv7(*(torch.from_numpy(factors[f]) for f in ("r", "w", "k", "v", "kk")),
                       torch.from_numpy(factors["kka"] / factors["kk"]), torch.from_numpy(state))
        holes[c.output], holes[c.state] = y.unsqueeze(-2).numpy(), last.numpy()
    got = cut.run(None, {**feeds, **holes})[:len(want)]
    for name, a, b in zip([o.name for o in whole.get_outputs()], want, got):
        assert np.abs(a - b).max() / a.std() < 1e-5, name


def producers(proto) -> dict[str, onnx.NodeProto]:
    return {o: n for n in proto.graph.node for o in n.output}


def change_update(proto):  # layer 1's last token adds the removal instead of subtracting it
    producer = producers(proto)
    next(producer[x] for x in producer["state_out.1.wkv"].input if producer[x].op_type == "Sub").op_type = "Add"


def change_position(proto):  # layer 1's last token reads r at position 0
    producer = producers(proto)
    row = next(n for n in proto.graph.node if n.op_type == "MatMul" and n.input[1] == "state_out.1.wkv")
    sliced = producer[producer[row.input[0]].input[0]]
    sliced.input[1:3] = ["rwkv_edge.slice.start.0", "rwkv_edge.slice.end.1"]


@pytest.mark.parametrize("change", [change_update, change_position])
def test_a_chain_that_differs_anywhere_is_kept(change, onnx_export):
    proto = prefill_graph(onnx_export)
    change(proto)
    cuts = cut_wkv7s(proto)
    assert len(cuts) == 1  # only the other layer's
    assert sum(node.op_type == "MatMul" and "wkv" in "".join(node.input) for node in proto.graph.node) > 0


def test_other_families_are_left_alone(onnx_export):
    for version in ("v5", "v6"):
        proto = prefill_graph(onnx_export, version)
        nodes = len(proto.graph.node)
        assert cut_wkv7s(proto) == [] and len(proto.graph.node) == nodes


def kernel_calls(path) -> int:
    import tvm
    from tvm import relax

    from rwkv_edge.compile.tvm.cpu import optimise
    from rwkv_edge.compile.tvm.language import prefill_module
    from rwkv_edge.compile.tvm.params import WeightTable

    target, options, table = get_target("x86_64-host"), TvmOptions("x86_64-host", weights="fp32"), WeightTable()
    mod, _ = prefill_module(path, target, options, table, quiet)
    mod, _, _ = optimise(mod, target, options, quiet, table=table)
    calls = []
    call_tir = tvm.ir.Op.get("relax.call_tir")
    relax.analysis.post_order_visit(mod["main"], lambda e: calls.append(e) if isinstance(e, relax.Call) and e.op.same_as(call_tir) else None)
    return len(calls)


def quiet(_: str) -> None:
    pass


def test_a_prefill_call_costs_few_kernel_calls(onnx_export, tvm_bundle):
    """Kernel calls of the test model's 8-token prefill function (2 layers, fused, scheduled): 179 with the
    chains as ops, 99 with the kernel."""
    from rwkv_edge.artifact import read_manifest

    assert kernel_calls(open_artifact(onnx_export("v7", 8)).graph("prefill")) <= 110
    assert read_manifest(tvm_bundle("v7", prefill=8)).target.kernels["wkv7 kernels"] == 2
