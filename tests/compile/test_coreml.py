"""Core ML: every version in both forms, spec-checked and evaluated against PyTorch.

Off macOS the ML program runs on coremltools' per-op value inference (a reference evaluation, not
Apple's runtime); the tests that need Core ML itself run on macOS only and skip elsewhere.
"""

from __future__ import annotations

import json
import re
import shutil
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from rwkv_edge.artifact.files import PACKAGE
from rwkv_edge.compile.coreml import CoreMLOptions, compile_coreml
from rwkv_edge.errors import ArtifactError, OptionError, UnknownArchitectureError, UnknownTargetError
from rwkv_edge.artifact import read_manifest
from rwkv_edge.model import LANGUAGE_ARCHITECTURES, DEMO_CHECKPOINT, load_model
from rwkv_edge.runtime import TorchBackend
from rwkv_edge.runtime.coreml_backend import CoreMLBackend
from rwkv_edge.runtime.coreml_mil import MilProgram
from rwkv_edge.verify.coreml_spec import check_spec
from rwkv_edge.verify.report import compare_rollouts
from rwkv_edge.verify import verify_artifact
from rwkv_edge.targets import TARGETS, CoreMLTarget

CHUNK = 4  # a short prefill function keeps the conversion quick
FORMS = {  # form -> options; the explicit form in fp32 is held to the fp32 limits (1e-4)
    "explicit": CoreMLOptions(weights="fp32", prefill_chunk=0),
    "stateful": CoreMLOptions(stateful=True, prefill_chunk=CHUNK),
}
on_macos = pytest.mark.skipif(sys.platform != "darwin", reason="Core ML predict runs on macOS only")


def quiet(_: str) -> None:
    pass


@pytest.fixture(scope="module")
def compiled(version_ckpt, tmp_path_factory):
    """compiled(version, form) -> artifact directory, compiled once per module."""
    done: dict[tuple[str, str], Path] = {}

    def get(version: str, form: str) -> Path:
        if (version, form) not in done:
            out = tmp_path_factory.mktemp(f"coreml-{version}-{form}")
            compile_coreml(version_ckpt(version), out, FORMS[form], log=quiet)
            done[version, form] = out
        return done[version, form]

    return get


@pytest.mark.parametrize("form", list(FORMS))
@pytest.mark.parametrize("version", list(LANGUAGE_ARCHITECTURES))
def test_every_version_converts_and_matches_pytorch(version, form, compiled):
    out = compiled(version, form)
    report = verify_artifact(out, steps=24, greedy_tokens=16, log=quiet, executor="mil")
    assert report.passed, report.summary()
    assert report.n_steps == 24
    assert report.tolerance.name == ("fp32" if form == "explicit" else "fp16")
    assert any("not Apple's runtime" in line for line in report.what_ran)
    assert any(line.startswith("spec check: passed") for line in report.what_ran)
    if form == "stateful":
        assert any("prefill graph: 4 tokens" in line for line in report.what_ran)
    saved = json.loads((out / "parity.json").read_text())
    assert saved["passed"] and saved["ops"]


@pytest.mark.parametrize("version", list(LANGUAGE_ARCHITECTURES))
def test_spec_follows_the_contract(version, compiled):
    explicit, stateful = compiled(version, "explicit"), compiled(version, "stateful")
    spec = MilProgram(explicit / PACKAGE).spec
    layer0 = [f"state_{0}_{t.role}" for t in read_manifest(explicit).state if t.layer == 0]
    assert spec.specificationVersion == 8  # iOS 17
    assert [f.name for f in spec.description.input][:1 + len(layer0)] == ["token", *layer0]
    assert [f.name for f in spec.description.output][0] == "logits"
    assert spec.description.metadata.userDefined["rwkv_edge.architecture"] == version
    spec = MilProgram(stateful / PACKAGE).spec
    assert spec.specificationVersion == 9  # iOS 18: states, multifunction
    functions = {f.name: f for f in spec.description.functions}
    assert list(functions) == ["decode", "prefill"] and spec.description.defaultFunctionName == "decode"
    assert [f.name for f in functions["decode"].input] == ["token"]
    assert [f.name for f in functions["prefill"].input] == ["tokens"]
    assert [f.name for f in functions["decode"].state][:len(layer0)] == layer0


def test_spec_check_reports_what_differs(compiled):
    out = compiled("v7", "explicit")
    manifest, program = read_manifest(out), MilProgram(out / PACKAGE)
    assert check_spec(manifest, program.spec, program.program).problems == []
    wrong = replace(manifest, config={**manifest.config, "vocab_size": 300},
                    target=replace(manifest.target, deployment="iOS18"))
    problems = check_spec(wrong, program.spec, program.program).problems
    assert any("spec version 8, expected 9" in p for p in problems)
    assert any("logits" in p and "300" in p for p in problems)


@pytest.mark.parametrize("edit, message", [
    (lambda d: d["graphs"]["prefill"].update(chunk=3),
     rf"prefill's input 0 is int32 \(1, {CHUNK}\), the manifest implies int32 \(1, 3\) \(graphs.prefill.chunk\)"),
    (lambda d: d["graphs"]["prefill"].update(all_logits=True),
     rf"prefill's output 0 is float32 \(1, 256\), the manifest implies float32 \(1, {CHUNK}, 256\)"),
])
def test_a_tampered_manifest_is_one_line_before_anything_runs(compiled, tmp_path, rehash, cli, edit, message):
    """The package's own functions say what they take: a rehashed manifest that disagrees is refused
    before the first step (it was a numpy broadcasting traceback mid-verify)."""
    out = Path(shutil.copytree(compiled("v7", "stateful"), tmp_path / "tampered"))
    rehash(out, edit)
    code, printed, err = cli("verify", str(out), "--steps", "4", "--greedy-tokens", "0")
    assert code == 1 and err.count("\n") == 1 and re.search(message, err), err
    assert "rollout of" not in printed


def test_reference_evaluation_catches_a_corrupted_weight(compiled, tmp_path, rehash):
    out = tmp_path / "corrupt"
    shutil.copytree(compiled("v7", "explicit"), out)
    weights = out / PACKAGE / "Data/com.apple.CoreML/weights/weight.bin"
    data = bytearray(weights.read_bytes())
    values = np.frombuffer(data, dtype=np.float32, offset=len(data) // 2, count=4096)
    data[len(data) // 2:len(data) // 2 + 4096 * 4] = (values * 1.5).astype(np.float32).tobytes()
    weights.write_bytes(bytes(data))
    with pytest.raises(ArtifactError, match="sha256 differs"):
        verify_artifact(out, steps=4, greedy_tokens=0, log=quiet)
    rehash(out)  # consistent again: only the numbers can tell
    candidate = CoreMLBackend(out, executor="mil")
    reference = TorchBackend(load_model(candidate.manifest.source["checkpoint"]))
    assert not compare_rollouts(reference, candidate, list(range(16)), "fp32").passed


@pytest.mark.parametrize("quantize", ["int8", "int4"])
def test_compressed_weights_on_the_demo_model(quantize, tmp_path):
    """The package holds the quantizer's very integers and scales (the ONNX export's numbers), and
    computes the quantized model to fp16 limits."""
    from rwkv_edge.export.nbits import unpack
    from rwkv_edge.export import OnnxOptions, export_onnx

    compile_coreml(DEMO_CHECKPOINT, tmp_path, CoreMLOptions(weights=quantize, prefill_chunk=0), log=quiet)
    plain = sum(p.stat().st_size for p in (tmp_path / PACKAGE).rglob("*.bin"))
    assert plain < 0.5 * 4 * 1.01e6  # well under the fp32 size of 1.01M parameters
    report = verify_artifact(tmp_path, steps=64, greedy_tokens=0, log=quiet, executor="mil")
    assert report.passed, report.summary()
    assert report.tolerance.name == f"{quantize} weights, fp16 compute"
    manifest = read_manifest(tmp_path)
    assert (manifest.weights, manifest.compute, manifest.group_size) == (quantize, "fp16", 32)
    assert manifest.target.deployment == "iOS18"  # the default where weights are blockwise
    onnx_out = tmp_path.parent / f"{tmp_path.name}-onnx"
    export_onnx(DEMO_CHECKPOINT, onnx_out, OnnxOptions(weights=quantize, prefill_chunk=0), log=quiet)
    onnx_matrices = _onnx_quantized(onnx_out / "model.onnx", unpack)
    program = MilProgram(tmp_path / PACKAGE).program
    ops = [op for op in program.functions["main"].operations if op.op_type == "constexpr_blockwise_shift_scale"]
    assert len(ops) == len(onnx_matrices) == 25  # 4 layers x 6 projections + the head
    for op in ops:
        data, scale = np.asarray(op.data.val).astype(np.int8), np.asarray(op.scale.val).astype(np.float16)
        assert (data.tobytes(), scale.tobytes()) in onnx_matrices


def _onnx_quantized(path, unpack) -> set[tuple[bytes, bytes]]:
    """(integers, fp16 scales) of every MatMulNBits of an ONNX export."""
    import onnx
    from onnx import helper, numpy_helper

    graph = onnx.load(path).graph
    weights = {w.name: numpy_helper.to_array(w) for w in graph.initializer}
    found = set()
    for node in graph.node:
        if node.op_type == "MatMulNBits":
            a = {x.name: helper.get_attribute_value(x) for x in node.attribute}
            q = unpack(weights[node.input[1]], weights[node.input[2]], a["K"], a["N"], a["bits"], a["block_size"])
            found.add((q.values.tobytes(), q.scales.tobytes()))
    return found


def test_demo_model_fp16_explicit_with_prefill(tmp_path):
    compile_coreml(DEMO_CHECKPOINT, tmp_path, CoreMLOptions(deployment="iOS18"), log=quiet)
    report = verify_artifact(tmp_path / PACKAGE, steps=64, greedy_tokens=64, log=quiet, executor="mil")
    assert report.passed, report.summary()
    assert report.greedy.identical  # greedy identity is reported for fp16; on the demo model it holds
    assert read_manifest(tmp_path).target.functions == ["decode", "prefill"]


@pytest.mark.parametrize("name", [n for n, t in TARGETS.items() if isinstance(t, CoreMLTarget)])
def test_every_coreml_target_compiles(name, make_ckpt, tmp_path):
    compile_coreml(make_ckpt("v7"), tmp_path, CoreMLOptions(target=name, prefill_chunk=0), log=quiet)
    manifest = read_manifest(tmp_path)
    assert manifest.target.name == name and manifest.target.platform == TARGETS[name].platform
    report = verify_artifact(tmp_path, steps=8, greedy_tokens=0, log=quiet, executor="mil")
    assert report.passed, report.summary()


@pytest.mark.parametrize("options, message", [
    (CoreMLOptions(stateful=True, deployment="iOS17"), "--stateful needs Core ML states, available from iOS18"),
    (CoreMLOptions(compute_units="GPU"), "unknown compute units 'GPU'; choose one of ALL, CPU_ONLY"),
    (CoreMLOptions(target="pixel-9"), "unknown target 'pixel-9'; valid targets: "),
    (CoreMLOptions(weights="int4", deployment="iOS17"), "int4 weights need iOS 18 / macOS 15; iOS17 is too old"),
    (CoreMLOptions(weights="int8", group_size=48), "group size 48 is not one of 16, 32, 64, 128, 256"),
    (CoreMLOptions(weights="int3"), "unknown weight format 'int3'; choose one of fp32, fp16, int8, int4"),
    (CoreMLOptions(target="macos-coreml", deployment="iOS18"), "is not one of macOS13, macOS14, macOS15"),
])
def test_bad_options_are_refused_before_any_work(options, message, tmp_path):
    with pytest.raises((OptionError, UnknownTargetError), match=message.replace("(", r"\(").replace("/", "/")):
        compile_coreml(DEMO_CHECKPOINT, tmp_path / "out", options, log=quiet)
    assert not (tmp_path / "out").exists()


def test_a_checkpoint_of_no_known_version_is_refused(tmp_path):
    import torch

    path = tmp_path / "other.pth"
    torch.save({"encoder.weight": torch.zeros(4, 4)}, path)
    with pytest.raises(UnknownArchitectureError):
        compile_coreml(path, tmp_path / "out", CoreMLOptions(), log=quiet)
    assert not (tmp_path / "out" / "manifest.json").exists()


def test_predict_is_refused_off_macos(compiled):
    if sys.platform == "darwin":
        pytest.skip("on macOS predict is available")
    with pytest.raises(OptionError, match="macOS only"):
        CoreMLBackend(compiled("v7", "explicit"), executor="predict")


@on_macos
@pytest.mark.parametrize("form", list(FORMS))
@pytest.mark.parametrize("version", list(LANGUAGE_ARCHITECTURES))
def test_core_ml_predict_matches_pytorch(version, form, compiled):
    report = verify_artifact(compiled(version, form), steps=64, greedy_tokens=32, log=quiet, executor="predict")
    assert report.passed, report.summary()
    assert any("Apple's runtime" in line for line in report.what_ran)
