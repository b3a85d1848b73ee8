"""The CLI around the native runtime: `generate --backend native` prints what `--backend tvm` prints,
stop sequences cut both alike, state files carry a generation across runs and backends, the sampler
flags are checked, `generate` reads the vocabulary the artifact carries, `compile --with-runtime`
packages the bundle."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from rwkv_edge.platforms import host_arch
from rwkv_edge.runtime.native_runner import runner_unavailable

missing = runner_unavailable(host_arch())
needs_native = pytest.mark.skipif(missing is not None, reason=f"librwkv_edge cannot be built here: {missing}")
TARGET = {"x86_64": "x86_64-host", "aarch64": "aarch64-linux"}[host_arch()]
PROMPT = "Once upon a time"
GREEDY = ("--temperature", "0")


def quiet(_: str) -> None:
    pass


def generated(cli, *argv: str) -> str:
    code, out, err = cli("generate", *argv)
    assert code == 0, err
    return out


@needs_native
@pytest.mark.parametrize("sampling", [GREEDY, ("--temperature", "0.9", "--top-k", "8", "--seed", "5",
                                                "--presence-penalty", "0.3", "--frequency-penalty", "0.2",
                                                "--penalty-decay", "0.95")])
def test_native_prints_what_tvm_prints(cli, demo_bundle, sampling):
    args = (str(demo_bundle), "--prompt", PROMPT, "-n", "60", *sampling)
    tvm = generated(cli, *args, "--backend", "tvm")
    assert tvm.startswith(PROMPT) and len(tvm) > len(PROMPT) + 20
    assert generated(cli, *args, "--backend", "native") == tvm


@needs_native
def test_a_stop_sequence_cuts_both_backends_before_it(cli, demo_bundle):
    whole = generated(cli, str(demo_bundle), "--prompt", PROMPT, "-n", "60", *GREEDY)[len(PROMPT):-1]
    stop = whole[20:23]  # three characters from the middle: the text before their first occurrence is printed
    cut = whole[:whole.index(stop)]
    for backend in ("tvm", "native"):
        out = generated(cli, str(demo_bundle), "--prompt", PROMPT, "-n", "60", *GREEDY, "--backend", backend,
                        "--stop", stop, "--stop", "never printed \x01")
        assert out == PROMPT + cut + "\n", backend


@needs_native
@pytest.mark.parametrize("first,second", [("tvm", "native"), ("native", "tvm"), ("native", "native")])
def test_a_state_file_goes_on_where_a_run_stopped(cli, demo_bundle, tmp_path, first, second):
    bundle = str(demo_bundle)
    whole = generated(cli, bundle, "--prompt", PROMPT, "-n", "24", *GREEDY)
    state = tmp_path / "turn.state"
    head = generated(cli, bundle, "--prompt", PROMPT, "-n", "12", *GREEDY, "--backend", first, "--state-out", str(state))
    tail = generated(cli, bundle, "--prompt", "", "-n", "12", *GREEDY, "--backend", second, "--state-in", str(state))
    assert head[:-1] + tail == whole


def test_a_checkpoint_s_state_file_records_its_identity(cli, tmp_path, onnx_export):
    """torch on the demo checkpoint saves; its state goes on in torch, and another model refuses it."""
    state = tmp_path / "demo.state"
    generated(cli, "--prompt", PROMPT, "-n", "4", *GREEDY, "--state-out", str(state))
    assert generated(cli, "--prompt", "", "-n", "4", *GREEDY, "--state-in", str(state))
    code, _, err = cli("generate", str(onnx_export("v7")), "--prompt", "x", "-n", "2", "--state-in", str(state))
    assert code == 1 and "demo.state: saved from another model" in err


@pytest.mark.parametrize("flag,value", [("--penalty-decay", "0"), ("--penalty-decay", "1.5"), ("--top-k", "-1"),
                                        ("--stop", ""), ("--seed", str(2**64)), ("--presence-penalty", "nan")])
def test_bad_sampler_flags_are_refused_before_anything_loads(cli, flag, value):
    code, _, err = cli("generate", "--prompt", "x", flag, value)
    assert code == 2 and flag in err


def test_state_file_problems_are_one_line(cli, tmp_path, onnx_export):
    code, _, err = cli("generate", "--prompt", "x", "--state-in", str(tmp_path / "none.state"))
    assert code == 1 and err == f"rwkv-edge: error: {tmp_path / 'none.state'}: no such state file\n"
    (tmp_path / "bad.state").write_bytes(b"\x08" + b"\0" * 7 + b"not json")
    code, _, err = cli("generate", str(onnx_export("v7")), "--prompt", "x", "--state-in", str(tmp_path / "bad.state"))
    assert code == 1 and "bad.state: the header is not JSON" in err and err.count("\n") == 1


@needs_native
def test_native_tokenizes_with_the_bundle_s_own_tokenizer(cli, demo_bundle):
    code, _, err = cli("generate", str(demo_bundle), "--backend", "native", "--prompt", "x", "--tokenizer", "bytes")
    assert code == 1 and "bundle's own tokenizer" in err


@pytest.fixture(scope="module")
def world_export(tmp_path_factory) -> Path:
    from rwkv_edge.export import OnnxOptions, export_onnx
    from rwkv_edge.model.synthetic import make_checkpoint, save_checkpoint

    root = tmp_path_factory.mktemp("world")
    checkpoint = save_checkpoint(make_checkpoint("v7", n_layer=1, n_embd=64, vocab_size=65536), root / "world.pth")
    export_onnx(checkpoint, root / "onnx", OnnxOptions("fp32", prefill_chunk=0), log=quiet)
    return root / "onnx"


def test_generate_reads_the_vocabulary_the_artifact_carries(cli, world_export, tmp_path):
    assert generated(cli, str(world_export), "--prompt", "Hello", "-n", "3").startswith("Hello")
    copy = Path(shutil.copytree(world_export, tmp_path / "copy"))
    with open(copy / "rwkv_vocab_v20230424.txt", "r+b") as f:
        f.write(b"9")
    code, _, err = cli("generate", str(copy), "--prompt", "Hello", "-n", "3")  # onnxruntime hashes every file
    assert code == 1 and "rwkv_vocab_v20230424.txt: sha256 differs from the manifest" in err
    code, _, err = cli("generate", str(copy), "--backend", "torch", "--prompt", "Hello", "-n", "3")  # its checkpoint
    assert code == 1 and "rwkv_vocab_v20230424.txt: differs from the manifest" in err  # the file alone, checked
    # --tokenizer-file names another file: the artifact's is not read
    from rwkv_edge.artifact.builder import vocabulary_file

    assert generated(cli, str(copy), "--backend", "torch", "--prompt", "Hello", "-n", "3",
                     "--tokenizer-file", str(vocabulary_file("world")))


@needs_native
def test_a_world_bundle_prints_the_same_text_on_both_backends(cli, world_export, tmp_path):
    from rwkv_edge.compile.tvm import TvmOptions, compile_tvm

    compile_tvm(world_export, tmp_path / "tvm", TvmOptions(TARGET), log=quiet)
    args = (str(tmp_path / "tvm"), "--prompt", "Grüße, 世界", "-n", "30", "--temperature", "0.7", "--seed", "9")
    tvm = generated(cli, *args, "--backend", "tvm")
    assert tvm.startswith("Grüße, 世界") and generated(cli, *args, "--backend", "native") == tvm


@needs_native
def test_compile_with_runtime_packages_the_bundle(cli, version_ckpt, tmp_path):
    code, _, err = cli("compile", str(version_ckpt("v7")), "--target", TARGET, "-o", str(tmp_path / "b"), "--dev")
    assert code == 1 and "--state and --dev apply with --with-runtime" in err and not (tmp_path / "b").exists()
    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "notes.txt").write_text("mine")
    code, _, err = cli("compile", str(version_ckpt("v7")), "--target", TARGET, "-o", str(tmp_path / "b"),
                       "--with-runtime", str(tmp_path / "taken"))
    assert code == 1 and "holds no rwkv-edge package" in err and not (tmp_path / "b").exists()  # refused before compiling
    for target, words in (("android-arm64", "aarch64-linux-android"), ("ios-coreml", "do not run on the native")):
        code, _, err = cli("compile", str(version_ckpt("v7")), "--target", target, "-o", str(tmp_path / "b"),
                           "--with-runtime", str(tmp_path / "pkg"))
        assert code == 1 and words in err and not (tmp_path / "b").exists(), err  # ... and so is a target it cannot run
    code, out, err = cli("compile", str(version_ckpt("v7")), "--target", TARGET, "-o", str(tmp_path / "b"),
                         "--with-runtime", str(tmp_path / "pkg"))
    assert code == 0, err
    assert (tmp_path / "pkg" / "bin" / "rwkv-edge-run").is_file() and (tmp_path / "pkg" / "bundle" / "model.so").is_file()
    assert "total" in out
