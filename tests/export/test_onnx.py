"""ONNX export of every registered architecture at both precisions, verified on onnxruntime."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch

from rwkv_edge.architectures import FAMILIES
from rwkv_edge.errors import ArtifactError, StateError, UnknownArchitectureError
from rwkv_edge.export import EXPORTERS, OnnxOptions, export_onnx
from rwkv_edge.model import LANGUAGE_ARCHITECTURES, load_model, state_to_named
from rwkv_edge.model.state import CONTRACT_VERSION
from rwkv_edge.runtime import TorchBackend
from rwkv_edge.runtime.ort_backend import OrtBackend
from rwkv_edge.verify import verify_artifact
from rwkv_edge.verify.tolerances import tolerance_for

CONTRACT_DOC = Path(__file__).parents[2] / "docs" / "onnx-contract.md"
CHUNK = 4  # a short prefill graph keeps the export quick; the demo model's test uses the default


def quiet(_: str) -> None:
    pass


@pytest.fixture(scope="module")
def exported(version_ckpt, tmp_path_factory):
    """exported(version, weights) -> artifact directory, exported once per module."""
    done: dict[tuple[str, str], Path] = {}

    def get(version: str, precision: str) -> Path:
        if (version, precision) not in done:
            out = tmp_path_factory.mktemp(f"onnx-{version}-{precision}")
            export_onnx(version_ckpt(version), out, OnnxOptions(weights=precision, prefill_chunk=CHUNK), log=quiet)
            done[version, precision] = out
        return done[version, precision]

    return get


@pytest.mark.parametrize("precision", ["fp32", "fp16", "int8", "int4"])
@pytest.mark.parametrize("version", list(LANGUAGE_ARCHITECTURES))
def test_export_verifies(version, precision, exported):
    out = exported(version, precision)
    report = verify_artifact(out, steps=64, greedy_tokens=32, log=quiet)
    assert report.passed, report.summary()
    assert report.n_steps == 64 and any("prefill graph" in line for line in report.what_ran)
    saved = json.loads((out / "parity.json").read_text())
    compute = "fp16" if precision == "fp16" else "fp32"
    assert saved["passed"] and saved["limits"] == tolerance_for(precision, compute, "onnx").name
    assert (out / "parity.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.parametrize("precision", ["int8", "int4"])
@pytest.mark.parametrize("version", list(LANGUAGE_ARCHITECTURES))
def test_quantized_exports_hold_every_projection_in_matmulnbits(version, precision, exported, version_ckpt):
    """Every nn.Linear of the model (projections and head) is a MatMulNBits in both graphs; nothing else
    is, and the quantized model is measurably another model than the fp32 one."""
    out = exported(version, precision)
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["weights"] == precision and manifest["group_size"] == 32 and manifest["compute"] == "fp32"
    linears = sum(isinstance(m, torch.nn.Linear) for m in load_model(version_ckpt(version)).modules())
    for name in ("model.onnx", "prefill.onnx"):
        ops = [node.op_type for node in onnx.load(out / name).graph.node]
        assert ops.count("MatMulNBits") == linears, name
    quantized = np.load(out / "reference.npz")["logits_full"]
    full = np.load(exported(version, "fp32") / "reference.npz")["logits_full"]
    drift = np.abs(quantized - full).max() / full.std()
    assert 1e-4 < drift < (0.2 if precision == "int8" else 2.0), drift


def test_quantized_export_bad_input(make_ckpt, tmp_path, cli):
    ckpt = make_ckpt("v7", n_embd=96, head_size=32)  # 96 = 3 x 32: not a multiple of 64
    code, _, err = cli("export", "onnx", str(ckpt), "-o", str(tmp_path / "a"), "--weights", "int8", "--group-size", "64")
    assert code == 1 and err.count("\n") <= 1 and "group size of 64 does not divide the input dimension 96" in err
    assert not (tmp_path / "a" / "manifest.json").exists()
    code, _, err = cli("export", "onnx", str(ckpt), "-o", str(tmp_path / "b"), "--weights", "fp32", "--group-size", "32")
    assert code == 1 and "--group-size applies to int8 and int4" in err
    code, _, err = cli("export", "onnx", str(ckpt), "-o", str(tmp_path / "c"), "--weights", "int4", "--group-size", "48")
    assert code == 2 and "invalid choice" in err


@pytest.mark.parametrize("version", list(LANGUAGE_ARCHITECTURES))
def test_graph_follows_the_contract(version, exported):
    out = exported(version, "fp16")
    manifest = json.loads((out / "manifest.json").read_text())
    step = onnx.load(out / "model.onnx")
    onnx.checker.check_model(step, full_check=True)
    assert [i.name for i in step.graph.input] == ["token"] + [s["input"] for s in manifest["state"]]
    assert [o.name for o in step.graph.output] == ["logits"] + [s["output"] for s in manifest["state"]]
    elem = {i.name: i.type.tensor_type.elem_type for i in [*step.graph.input, *step.graph.output]}
    assert elem.pop("token") == onnx.TensorProto.INT64
    assert set(elem.values()) == {onnx.TensorProto.FLOAT}, "state and logits stay fp32 at an fp16 interface"
    dims = [d.dim_value for d in step.graph.input[1].type.tensor_type.shape.dim]
    assert dims == [1, *manifest["state"][0]["shape"]]
    assert max(op.version for op in step.opset_import if op.domain in ("", "ai.onnx")) >= 18


def test_metadata_matches_the_contract_document(exported, make_ckpt):
    out = exported("v7", "fp32")
    meta = {p.key: p.value for p in onnx.load(out / "model.onnx").metadata_props}
    documented = re.findall(r"^\| `(rwkv_edge\.[a-z_0-9]+)` \|", CONTRACT_DOC.read_text(), re.M)
    assert sorted(documented) == sorted(meta)
    assert f"version {CONTRACT_VERSION}" in CONTRACT_DOC.read_text().splitlines()[0]
    manifest = json.loads((out / "manifest.json").read_text())
    assert meta["rwkv_edge.contract_version"] == manifest["contract_version"] == CONTRACT_VERSION
    assert meta["rwkv_edge.architecture"] == "v7" and meta["rwkv_edge.tokenizer"] == "bytes"
    assert json.loads(meta["rwkv_edge.config"]) == load_model(make_ckpt("v7")).describe()
    import hashlib

    assert meta["rwkv_edge.checkpoint_sha256"] == hashlib.sha256(make_ckpt("v7").read_bytes()).hexdigest()
    roles = re.findall(r"`(att_shift|wkv_num|wkv_den|wkv_max|ffn_shift|wkv)`", CONTRACT_DOC.read_text())
    for version in LANGUAGE_ARCHITECTURES:
        assert {t.role for t in load_model(make_ckpt(version)).state_spec()} <= set(roles)


def test_prefill_equals_single_steps_and_can_return_all_logits(make_ckpt, tmp_path):
    ckpt = make_ckpt("v6")
    export_onnx(ckpt, tmp_path, OnnxOptions(prefill_chunk=5, prefill_all_logits=True), log=quiet)
    ort, ref = OrtBackend(tmp_path), TorchBackend(load_model(ckpt))
    tokens = [3, 1, 4, 1, 5]
    logits, state = ort.run_prefill_chunk(tokens, ort.init_state())
    assert logits.shape == (5, 256)
    ref_state = ref.init_state()  # fp32 prefill graph vs single torch steps: measured gaps <= 5e-6
    for i, token in enumerate(tokens):
        ref_logits, ref_state = ref.step(token, ref_state)
        np.testing.assert_allclose(logits[i], ref_logits, rtol=0, atol=1e-4)
    for name, value in ref_state.items():
        np.testing.assert_allclose(state[name], value, rtol=0, atol=1e-4)
    long_logits, _ = ort.prefill(list(range(13)), ort.init_state())  # 2 chunks + 3 steps
    np.testing.assert_allclose(long_logits, ref.prefill(list(range(13)), ref.init_state())[0], rtol=0, atol=1e-4)


def test_dynamic_batch(make_ckpt, tmp_path):
    import onnxruntime as ort

    ckpt = make_ckpt("v5")
    export_onnx(ckpt, tmp_path, OnnxOptions(prefill_chunk=0, dynamic_batch=True), log=quiet)
    assert not (tmp_path / "prefill.onnx").exists()
    model = load_model(ckpt)
    tokens = torch.tensor([7, 8, 9])
    feeds = {"token": tokens.numpy(), **{k: v.numpy() for k, v in state_to_named(model.init_state((3,))).items()}}
    logits = ort.InferenceSession(str(tmp_path / "model.onnx")).run(["logits"], feeds)[0]
    assert logits.shape == (3, 256)
    for b in range(3):
        np.testing.assert_allclose(logits[b], model.step(int(tokens[b]), model.init_state())[0].numpy(), rtol=0, atol=1e-4)


def test_every_family_has_an_exporter():
    assert set(EXPORTERS) == set(FAMILIES)


def test_unknown_architecture_is_refused_and_leaves_an_earlier_export_intact(exported, tmp_path):
    import shutil

    ckpt = tmp_path / "odd.pth"
    torch.save({"emb.weight": torch.zeros(4, 4), "blocks.0.ffn.key.weight": torch.zeros(4, 4)}, ckpt)
    out = shutil.copytree(exported("v4", "fp32"), tmp_path / "out")
    with pytest.raises(UnknownArchitectureError):
        export_onnx(ckpt, out, log=quiet)
    assert verify_artifact(out, steps=4, greedy_tokens=0, log=quiet).passed


def test_unwritable_output(make_ckpt, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(ArtifactError, match="cannot write"):
        export_onnx(make_ckpt("v4"), blocker / "out", log=quiet)


def test_an_interrupted_export_keeps_the_earlier_one(make_ckpt, tmp_path):
    out = tmp_path / "out"
    export_onnx(make_ckpt("v4"), out, OnnxOptions(prefill_chunk=0), log=quiet)  # an earlier, complete export
    before = {p.name: p.read_bytes() for p in out.iterdir()}

    def interrupt_while_saving(line: str) -> None:
        if line.startswith("save and check"):
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        export_onnx(make_ckpt("v7"), out, OnnxOptions(prefill_chunk=0), log=interrupt_while_saving)
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    assert [p.name for p in tmp_path.iterdir()] == ["out"], "no temporary directory is left behind"
    assert verify_artifact(out, steps=4, greedy_tokens=0, log=quiet).passed


def test_verify_refuses_a_modified_artifact(exported, tmp_path):
    import shutil

    out = shutil.copytree(exported("v4", "fp32"), tmp_path / "copy")
    data = bytearray((out / "model.onnx").read_bytes())
    data[-10] ^= 0xFF
    (out / "model.onnx").write_bytes(bytes(data))
    with pytest.raises(ArtifactError, match="sha256 differs"):
        verify_artifact(out, log=quiet)


def test_verify_without_a_model(tmp_path):
    with pytest.raises(ArtifactError, match="not an rwkv-edge artifact"):
        verify_artifact(tmp_path, log=quiet)


def test_runtime_rejects_a_state_of_the_wrong_shape(exported):
    backend = OrtBackend(exported("v7", "fp32"))
    state = backend.init_state()
    state["state.1.wkv"] = np.zeros((2, 64, 32), np.float32)
    with pytest.raises(StateError, match=r"state\.1\.wkv has shape \(2, 64, 32\), expected \(2, 64, 64\)"):
        backend.step(0, state)


def test_demo_model_with_default_options(tmp_path):
    """The README's main job: export the bundled model with the defaults; greedy output must match."""
    from rwkv_edge.model import DEMO_CHECKPOINT

    export_onnx(DEMO_CHECKPOINT, tmp_path, log=quiet)
    report = verify_artifact(tmp_path, log=quiet)
    assert report.passed, report.summary()
    assert report.greedy is not None and report.greedy.identical and len(report.greedy.reference_tokens) == 128
    assert json.loads((tmp_path / "manifest.json").read_text())["graphs"]["prefill"]["chunk"] == 16


def test_the_prefill_graph_runs_the_head_on_the_last_position_only(make_ckpt, tmp_path):
    ckpt = make_ckpt("v7")
    export_onnx(ckpt, tmp_path, OnnxOptions(prefill_chunk=5), log=quiet)
    graph = onnx.shape_inference.infer_shapes(onnx.load(tmp_path / "prefill.onnx")).graph
    shapes = {v.name: [d.dim_value for d in v.type.tensor_type.shape.dim] for v in graph.value_info}
    head = [node for node in graph.node if node.op_type == "MatMul" and node.output[0] in shapes
            and shapes[node.output[0]][-1] == 256]  # the vocabulary-wide product
    assert len(head) == 1
    ref = TorchBackend(load_model(ckpt))
    width = ref.model.emb.weight.shape[1]
    assert [d for d in shapes[head[0].input[0]] if d != 1] == [width]  # one row of C: not (T, C)
    logits, _ = OrtBackend(tmp_path).run_prefill_chunk([3, 1, 4, 1, 5], OrtBackend(tmp_path).init_state())
    np.testing.assert_allclose(logits, ref.prefill([3, 1, 4, 1, 5], ref.init_state())[0], rtol=0, atol=1e-4)


def test_an_int8_compute_reference_is_the_reloaded_models_and_stays_out_of_the_graphs(make_ckpt, tmp_path):
    """``reference_compute="int8"`` (compile_tvm's export for an int8-compute bundle) records the rollout of
    the model already in memory, its projections rounding their inputs, with its spread: the very numbers of
    the checkpoint loaded again and quantized with that rounding; the graphs compute in fp32 as ever."""
    from rwkv_edge.artifact.reference import load_reference
    from rwkv_edge.artifact.builder import build_reference, tokenizer_name

    ckpt = make_ckpt("v7")
    export_onnx(ckpt, tmp_path, OnnxOptions(weights="int4", prefill_chunk=CHUNK, reference_compute="int8"), log=quiet)
    model = load_model(ckpt)
    model.quantize_weights(4, 32, activations=True)
    expected = build_reference(model, tokenizer_name(model), spread=True)
    got = load_reference(tmp_path / "reference.npz", model.state_spec(), model.config.vocab_size)
    np.testing.assert_array_equal(got.logits.full, expected.logits.full)
    np.testing.assert_array_equal(got.greedy_tokens, expected.greedy_tokens)
    for name, value in expected.state.items():
        np.testing.assert_array_equal(got.state[name], value)
    assert got.spread == expected.spread and got.spread.logits > 0
    for graph in ("model.onnx", "prefill.onnx"):
        ops = {node.op_type for node in onnx.load(tmp_path / graph, load_external_data=False).graph.node}
        assert "Round" not in ops and "MatMulNBits" in ops


@pytest.mark.parametrize("options, message", [
    (dict(reference_compute="int8"), "an int8-compute reference takes int8 or int4 weights, not fp32"),
    (dict(weights="int8", reference_compute="int4"), "unknown reference compute 'int4'; expected fp32 or int8"),
])
def test_a_bad_reference_compute_is_one_line(options, message):
    from rwkv_edge.errors import OptionError

    with pytest.raises(OptionError, match=message):
        OnnxOptions(**options)
