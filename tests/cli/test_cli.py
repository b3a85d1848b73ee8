"""The command line as a user meets it: output, exit codes, one-line errors."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from rwkv_edge.model import load_model, state_to_named



def test_help_is_instant_and_imports_no_torch():
    probe = "import sys; from rwkv_edge.cli.main import build_parser; build_parser(); print('torch' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True).stdout.strip() == "False"


@pytest.mark.parametrize("version", ["v4", "v5", "v6", "v7"])
def test_info(version, make_ckpt, cli):
    code, out, _ = cli("info", str(make_ckpt(version)))
    assert code == 0
    assert f"[{version}]" in out and "n_layer       2" in out and "state         per layer: att_shift (128,)" in out


def test_info_defaults_to_the_demo_model(cli):
    code, out, _ = cli("info", "--json")
    assert code == 0 and '"version": "v7"' in out and '"vocab_size": 256' in out


@pytest.mark.parametrize("version", ["v4", "v5", "v6", "v7"])
def test_trace_writes_contract_names(version, make_ckpt, tmp_path, cli):
    path, out_file = make_ckpt(version), tmp_path / "trace.npz"
    code, out, _ = cli("trace", str(path), "--tokens", "1,2,3", "--out", str(out_file))
    assert code == 0 and "traced 3 tokens" in out
    trace = np.load(out_file)
    model = load_model(path)
    state = model.init_state()
    for i, token in enumerate([1, 2, 3]):
        logits, state = model.step(token, state)
        np.testing.assert_array_equal(trace["logits"][i], logits.numpy())
    assert trace["tokens"].tolist() == [1, 2, 3] and trace["logits"].dtype == np.float32
    expected = {k.replace("state.", "state_out.", 1): v.numpy() for k, v in state_to_named(state).items()}
    assert set(trace.files) == {"tokens", "logits", *expected}
    for name, value in expected.items():
        np.testing.assert_array_equal(trace[name], value)
    assert list(tmp_path.iterdir()) == [out_file], "no temporary files left behind"


def test_generate_demo_greedy_is_deterministic_and_pythonic(cli):
    code, out, _ = cli("generate", "--prompt", "def ", "-n", "120", "--temperature", "0")
    assert code == 0 and out.startswith("def ")
    assert cli("generate", "--prompt", "def ", "-n", "120", "--temperature", "0")[1] == out
    assert any(word in out for word in ("self", "return", "(", ":\n"))


def test_generate_sampling_depends_on_seed(cli):
    a = cli("generate", "--prompt", "import ", "-n", "60", "--seed", "1")[1]
    b = cli("generate", "--prompt", "import ", "-n", "60", "--seed", "2")[1]
    assert a != b


@pytest.mark.parametrize(
    "argv,message",
    [
        (["info", "/nonexistent/model.pth"], "no such checkpoint file"),
        (["trace", "--tokens", "1,300", "--out", "x.npz"], "token id 300 is outside the vocabulary [0, 256)"),
        (["generate", "--prompt", ""], "the prompt must contain at least one token"),
        (["generate", "--prompt", "Hello world", "--tokenizer", "world"], "the world tokenizer's ids run to 65,535, "
         "past this model's vocabulary of 256: use --tokenizer bytes, the default for a vocabulary of 256"),
    ],
)
def test_bad_input_is_one_line(argv, message, cli, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    code, out, err = cli(*argv)
    assert code == 1
    assert err.count("\n") == 1 and message in err and "Traceback" not in err


@pytest.mark.parametrize("argv,message", [
    (["trace", "--tokens", "1,x", "--out", "t.npz"], "expected comma-separated integers"),
    (["generate"], "required: --prompt"),
    (["bogus"], "invalid choice"),
    (["generate", "--prompt", "a", "-n", "0"], "must be between 1 and"),
    (["generate", "--prompt", "a", "--temperature", "-1"], "must be >= 0"),
    (["generate", "--prompt", "a", "--temperature", "nan"], "expected a finite number"),
    (["generate", "--prompt", "a", "--top-p", "0"], "must be in (0, 1]"),
    (["generate", "--prompt", "a", "--seed", "-1"], "must be between 0 and"),
    (["trace", "--tokens", "1", "--out", "."], "is a directory; give a file name"),
    (["verify", ".", "--steps", str(10**15)], "must be between 1 and 1,000,000"),
    (["verify", ".", "--expect-sha256", "abc"], "expected the 64 hex digits of a sha256"),
    (["export", "onnx", "-o", "out", "--opset", "99"], "must be between 18 and 28"),
    (["export", "onnx", "-o", "out", "--prefill-chunk", "-1"], "must be between 0 and"),
    (["verify", ".", "--rpc", "127.0.0.1:99999"], "argument --rpc: port 99999 in '127.0.0.1:99999' is outside 1-65535"),
    (["verify", ".", "--rpc", "127.0.0.1:0"], "port 0 in '127.0.0.1:0' is outside 1-65535"),
    (["verify", ".", "--rpc", "127.0.0.1"], "argument --rpc: expected HOST:PORT, got '127.0.0.1'"),
    (["verify", ".", "--tracker", "127.0.0.1:70000", "--key", "k"], "argument --tracker: port 70000"),
    (["verify", ".", "--tracker", ":9190", "--key", "k"], "argument --tracker: expected HOST:PORT, got ':9190'"),
    (["classify", "x.png", "--image-size", "2048"], "must be between 1 and 1,024, got 2,048"),
])
def test_bad_arguments_exit_2_before_any_work(argv, message, cli, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    code, _, err = cli(*argv)
    assert code == 2 and "usage:" in err and message in err, err
    assert list(tmp_path.iterdir()) == []


def test_cli_entry_point_runs_as_a_program(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "rwkv_edge.cli", "info", str(tmp_path / "missing.pth")],
                          capture_output=True, text=True)
    assert proc.returncode == 1 and proc.stderr.startswith("rwkv-edge: error:") and "Traceback" not in proc.stderr


def test_export_verify_and_trace_on_onnxruntime(make_ckpt, tmp_path, cli):
    ckpt, out = make_ckpt("v6"), tmp_path / "onnx"
    code, text, _ = cli("export", "onnx", str(ckpt), "-o", str(out), "--prefill-chunk", "4")
    assert code == 0 and "step:" in text and "nodes" in text and "wrote model.onnx, prefill.onnx" in text
    code, text, _ = cli("verify", str(out), "--steps", "16", "--greedy-tokens", "8")
    assert code == 0 and "\nPASS  onnxruntime vs torch (recorded at build), fp32, 16/16 steps" in text
    traces = {}
    for backend in ("torch", "onnxruntime"):
        traces[backend] = tmp_path / f"{backend}.npz"
        assert cli("trace", str(out), "--backend", backend, "--tokens", "5,6,7", "--out", str(traces[backend]))[0] == 0
    torch_trace, ort_trace = np.load(traces["torch"]), np.load(traces["onnxruntime"])
    assert torch_trace.files == ort_trace.files
    for name in torch_trace.files:  # fp32 onnxruntime vs torch: measured gaps <= 2e-5
        np.testing.assert_allclose(ort_trace[name], torch_trace[name], rtol=0, atol=1e-4, err_msg=name)


def test_verify_fails_with_exit_1_when_the_artifact_computes_something_else(make_ckpt, tmp_path, cli, rehash):
    import shutil

    good, other = tmp_path / "good", tmp_path / "other"
    for ckpt, out in ((make_ckpt("v7"), good), (make_ckpt("v7", seed=5), other)):
        assert cli("export", "onnx", str(ckpt), "-o", str(out), "--prefill-chunk", "0")[0] == 0
    shutil.copy(other / "model.onnx", good / "model.onnx")  # same contract, different weights
    rehash(good)
    code, text, _ = cli("verify", str(good), "--steps", "8", "--greedy-tokens", "0")
    assert code == 1 and "\nFAIL  onnxruntime vs torch" in text and "logits: max|Δ|/std" in text
    assert '"passed": false' in (good / "parity.json").read_text()


@pytest.mark.parametrize(
    "argv,message",
    [
        (["verify", "."], "no manifest.json (not an rwkv-edge artifact)"),
        (["trace", ".", "--backend", "onnxruntime", "--tokens", "1", "--out", "t.npz"], "no manifest.json"),
        (["trace", "--backend", "onnxruntime", "--tokens", "1", "--out", "t.npz"], "needs an artifact directory"),
        (["export", "onnx", "/nonexistent.pth", "-o", "out"], "no such checkpoint file"),
        (["compile", "--target", "pixel-9", "-o", "out"], "unknown target 'pixel-9'; valid targets: aarch64-linux, "
         "android-arm64, apple-m-metal, cuda-sm80, cuda-sm89, cuda-sm90, ios-coreml, ios-metal, jetson-orin, "
         "macos-coreml, raspberry-pi-4, raspberry-pi-5, x86_64-host"),
        (["compile", "--target", "x86_64-host", "--stateful", "-o", "out"],
         "x86_64-host is a TVM target: --stateful applies to Core ML targets only"),
        (["compile", "--target", "x86_64-host", "--weights", "fp16", "-o", "out"],
         "a x86_64-host bundle holds fp32, int8 or int4 weights, not fp16"),
        (["compile", "--target", "cuda-sm90", "--weights", "int4", "--compute", "int8", "-o", "out"],
         "cuda-sm90 bundles compute in fp32"),
        (["export", "onnx", "-o", "out", "--weights", "fp16", "--group-size", "32"],
         "--group-size applies to int8 and int4 weights, not fp16"),
        (["trace", "--backend", "tvm", "--tokens", "1", "--out", "t.npz"], "--backend tvm needs a bundle"),
        (["verify", ".", "--tracker", "127.0.0.1:9190"], "--tracker needs --key"),
        (["compile", "--target", "ios-coreml", "--stateful", "--deployment", "iOS17", "-o", "out"],
         "--stateful needs Core ML states, available from iOS18"),
        (["compile", "--target", "ios-coreml", "--compute-units", "GPU", "-o", "out"], "unknown compute units 'GPU'"),
        (["compile", "--target", "ios-coreml", "--deployment", "iOS9", "-o", "out"],
         "deployment target 'iOS9' is not one of iOS16, iOS17, iOS18 for ios-coreml"),
        (["compile", "--target", "raspberry-pi-4", "--weights", "int8", "--compute", "int8", "-o", "out"],
         "raspberry-pi-4 has no int8 dot-product instruction"),
        (["trace", "--backend", "coreml", "--tokens", "1", "--out", "t.npz"], "--backend coreml needs an artifact"),
    ],
)
def test_artifact_errors_are_one_line(argv, message, cli, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    code, out, err = cli(*argv)
    assert code == 1 and err.count("\n") == 1 and message in err, err
    assert out == ""  # refused before any work began


def test_the_opset_range_is_onnx_s():
    import onnx

    from rwkv_edge.cli.main import MAX_OPSET

    assert MAX_OPSET == onnx.defs.onnx_opset_version()


def test_cli_choices_match_the_library():
    from rwkv_edge.cli.main import build_parser
    from rwkv_edge.tokenizer import TOKENIZER_NAMES
    from rwkv_edge.runtime.registry import BACKENDS

    sub = build_parser()._subparsers._group_actions[0].choices
    choices = {a.dest: tuple(a.choices) for a in sub["generate"]._actions if a.choices}
    assert choices == {"tokenizer": TOKENIZER_NAMES, "backend": tuple(BACKENDS)}


def test_compile_coreml_verify_and_trace(tmp_path, cli):
    out = tmp_path / "demo-coreml"
    code, printed, _ = cli("compile", "--target", "ios-coreml", "-o", str(out))
    assert code == 0 and "target: platform iOS, deployment iOS17" in printed and (out / "model.mlpackage").is_dir()
    code, printed, _ = cli("verify", str(out / "model.mlpackage"), "--steps", "16", "--greedy-tokens", "16")
    assert code == 0 and "spec check: passed" in printed and "\nPASS  coreml-mil vs torch (recorded at build), fp16" in printed
    code, _, _ = cli("trace", str(out), "--backend", "coreml", "--tokens", "100,101", "--out", str(tmp_path / "t.npz"))
    assert code == 0 and np.load(tmp_path / "t.npz")["logits"].shape == (2, 256)


def test_compile_tvm_verify_and_trace(tmp_path, cli, onnx_export):
    out = tmp_path / "host"
    code, printed, _ = cli("compile", str(onnx_export("v7", 8) / "model.onnx"), "--target", "x86_64-host", "-o", str(out))
    assert code == 0 and "target x86_64-host: {'kind': 'llvm'" in printed and "gemv kernels" in printed
    assert "import prefill.onnx into Relax" in printed and "gemm kernels" in printed
    code, printed, _ = cli("verify", str(out), "--steps", "16", "--greedy-tokens", "16")
    assert code == 0 and "\nPASS  tvm vs torch (recorded at build), fp32" in printed and "Relax VM on this machine" in (out / "parity.json").read_text()
    code, _, _ = cli("trace", str(out), "--backend", "tvm", "--tokens", "100,101", "--out", str(tmp_path / "t.npz"))
    assert code == 0 and np.load(tmp_path / "t.npz")["logits"].shape == (2, 256)
    code, _, err = cli("verify", str(out), "--rpc", "127.0.0.1:1")
    assert code != 0 and err.count("\n") == 1 and "no TVM RPC server at 127.0.0.1:1" in err


def test_compile_refuses_a_prefill_chunk_the_export_lacks(tmp_path, cli, onnx_export):
    code, _, err = cli("compile", str(onnx_export("v7")), "--target", "x86_64-host", "--prefill-chunk", "8",
                       "-o", str(tmp_path / "out"))
    assert code == 1 and err.count("\n") == 1 and "has no prefill graph: export it with --prefill-chunk 8" in err, err


def test_targets_lists_every_target(cli):
    from rwkv_edge.targets import TARGETS

    code, printed, _ = cli("targets")
    assert code == 0 and [line for line in printed.splitlines() if not line.startswith(" ")] == sorted(TARGETS)


def _bad_inputs(tmp_path: Path, make_ckpt, onnx_export) -> dict[str, list[str]]:
    """Command lines over bad files of every kind the reliability review found, made under tmp_path."""
    import shutil

    import torch

    from rwkv_edge.model.synthetic import make_checkpoint

    tensors = make_checkpoint("v4", n_layer=3)
    gap = {k: v for k, v in tensors.items() if not k.startswith("blocks.1.")}
    torch.save(gap, tmp_path / "gap.pth")
    torch.save({**tensors, "head.weight": tensors["head.weight"] * float("nan")}, tmp_path / "nan.pth")
    torch.save({**tensors, "blocks.99999999.ln1.weight": tensors["blocks.0.ln1.weight"]}, tmp_path / "bomb.pth")
    shutil.copy(onnx_export("v4") / "model.onnx", tmp_path / "model.pth")
    (tmp_path / "notes.pth").write_text("a text file")
    bad_json = Path(shutil.copytree(onnx_export("v4"), tmp_path / "string"))
    (bad_json / "manifest.json").write_text('"a manifest"')
    outside = Path(shutil.copytree(onnx_export("v4"), tmp_path / "outside"))
    data = json.loads((outside / "manifest.json").read_text())
    data["files"]["../../etc/passwd"] = {"sha256": "0" * 64, "bytes": 1}
    (outside / "manifest.json").write_text(json.dumps(data))
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "thesis.tex").write_text("user data")
    return {
        "layer gap": ["info", str(tmp_path / "gap.pth")],
        "NaN weights": ["info", str(tmp_path / "nan.pth")],
        "stray layer index": ["info", str(tmp_path / "bomb.pth")],
        "ONNX named .pth": ["info", str(tmp_path / "model.pth")],
        "text named .pth": ["info", str(tmp_path / "notes.pth")],
        "directory as checkpoint": ["info", str(tmp_path / "mine")],
        "manifest a JSON string": ["verify", str(bad_json)],
        "file outside the artifact": ["trace", str(outside), "--backend", "onnxruntime", "--tokens", "1",
                                      "--out", str(tmp_path / "t.npz")],
        "a user's directory as -o": ["export", "onnx", str(make_ckpt("v4")), "-o", str(tmp_path / "mine")],
    }


@pytest.mark.parametrize("case,message", [
    ("layer gap", "layer 1 is missing"), ("NaN weights", "head.weight holds NaN or Inf"), ("stray layer index", "99999999"),
    ("ONNX named .pth", "is an ONNX model"), ("text named .pth", "a text file"),
    ("directory as checkpoint", "is a directory"), ("manifest a JSON string", "expected a JSON object"),
    ("file outside the artifact", "not a relative path inside"),
    ("a user's directory as -o", "never deletes files it did not write"),
])
def test_every_class_of_bad_input_is_one_line(case, message, cli, tmp_path, make_ckpt, onnx_export):
    code, _, err = cli(*_bad_inputs(tmp_path, make_ckpt, onnx_export)[case])
    assert code == 1 and err.count("\n") == 1 and err.startswith("rwkv-edge: error: ") and message in err, err
    assert (tmp_path / "mine" / "thesis.tex").read_text() == "user data"


def test_an_option_of_another_kind_of_artifact_is_one_line(cli, onnx_export):
    code, _, err = cli("verify", str(onnx_export("v4")), "--rpc", "127.0.0.1:1")
    assert code == 1 and err.count("\n") == 1 and "--rpc / --tracker applies to tvm artifacts" in err


def test_verify_report_lines_keep_manifest_text_on_its_line():
    from rwkv_edge.verify.build_check import BuildReport

    report = BuildReport("out/h100", "cuda-sm90\nPASS  tvm vs torch", "no CUDA GPU here\x1b[1A\x1b[2K", ["params ok"])
    assert report.summary().split("\n") == [
        "BUILT, NOT EXECUTED  cuda-sm90\\nPASS  tvm vs torch bundle out/h100: no CUDA GPU here\\x1b[1A\\x1b[2K",
        "  params ok"]
