"""The C++ runner: TVM bundles of every version run natively and, cross-compiled, under qemu, and match PyTorch.

Each runner (x86-64 host; aarch64 under ``qemu-aarch64-static -cpu cortex-a53``) steps 20 tokens on
its own state; the logits of every step and the final state are held to the fp32 parity limits.
The aarch64 tests skip, naming what is missing, where the cross compiler, qemu or the aarch64 TVM
libraries are not installed (``scripts/install-arm-tools.sh``).
"""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

from rwkv_edge.errors import ArtifactError, PlatformError, TokenError, ToolError
from rwkv_edge.artifact import read_manifest
from rwkv_edge.model import ARCHITECTURES, load_model
from rwkv_edge.runtime.torch_backend import TorchBackend
from rwkv_edge.runtime import native_runner
from rwkv_edge.runtime.native_runner import build_runner, host_arch, run_bundle, runner_unavailable
from rwkv_edge.verify.report import OutputErrors
from rwkv_edge.verify.tolerances import FP32

TOKENS = [int(t) for t in np.random.default_rng(7).integers(0, 256, size=20)]  # vocab 256: the synthetic models'
HOST = host_arch()
no_host_runner = runner_unavailable(HOST)
no_arm_runner = runner_unavailable("aarch64")
needs_host = pytest.mark.skipif(no_host_runner is not None, reason=f"no host runner: {no_host_runner}")
needs_arm = pytest.mark.skipif(no_arm_runner is not None, reason=f"no aarch64 runner: {no_arm_runner}")
TARGETS = {"x86_64": "x86_64-host", "aarch64": "aarch64-linux"}  # architecture -> compile target name


def quiet(_: str) -> None:
    pass


@pytest.fixture(scope="module")
def bundle(tvm_bundle):
    """bundle(version, arch) -> the session's TVM bundle of that version for that architecture."""
    return lambda version, arch: tvm_bundle(version, TARGETS[arch])


@pytest.fixture(scope="module")
def reference(onnx_export):
    """reference(version, bits=32) -> (logits (T, V), final state by output name) of the PyTorch model
    over TOKENS; ``bits`` 8 or 4: with its projections quantized as int8/int4 artifacts hold them."""
    done: dict[tuple[str, int], tuple[np.ndarray, dict[str, np.ndarray]]] = {}

    def get(version: str, bits: int = 32):
        if (version, bits) not in done:
            model = load_model(read_manifest(onnx_export(version)).source["checkpoint"])
            if bits < 32:
                model.quantize_weights(bits, 32)
            backend = TorchBackend(model)
            state, logits = backend.init_state(), []
            for token in TOKENS:
                step_logits, state = backend.step(token, state)
                logits.append(step_logits)
            done[version, bits] = np.stack(logits), {k.replace("state.", "state_out.", 1): v for k, v in state.items()}
        return done[version, bits]

    return get


@pytest.fixture(scope="module")
def host_runner():
    return build_runner(HOST, log=quiet)


@pytest.fixture(scope="module")
def arm_runner():
    return build_runner("aarch64", log=quiet)


def assert_matches(result: native_runner.RunnerResult, reference) -> None:
    """Every step's logits and the final state within the fp32 limits, same top-1 at every step (-s prints the errors)."""
    ref_logits, ref_state = reference
    assert result.logits.shape == ref_logits.shape and result.logits.dtype == np.float32
    logits = OutputErrors()
    for step, (ref, got) in enumerate(zip(ref_logits, result.logits)):
        logits.add(step, ref, got)
    top1 = np.argmax(result.logits, axis=1) == np.argmax(ref_logits, axis=1)
    assert top1.all(), f"top-1 differs at steps {np.flatnonzero(~top1).tolist()}"
    assert max(logits.scaled) <= FP32.logits_scaled, f"logits max|Δ|/std {max(logits.scaled):.3g}"
    assert result.state.keys() == ref_state.keys()
    state = OutputErrors()
    for name, ref in ref_state.items():
        assert result.state[name].shape == ref.shape, name
        state.add(len(ref_logits) - 1, ref, result.state[name])
    worst = int(np.argmax(state.scaled))
    assert state.scaled[worst] <= FP32.state_scaled, f"{list(ref_state)[worst]} max|Δ|/std {state.scaled[worst]:.3g}"
    print(f"max|Δ|/std logits {max(logits.scaled):.2e} state {max(state.scaled):.2e}; "
          f"median step {np.median(result.step_ms):.3f} ms")


@needs_host
@pytest.mark.parametrize("version", list(ARCHITECTURES))
def test_host_runner_matches_pytorch(version, bundle, reference, host_runner):
    result = run_bundle(bundle(version, HOST), TOKENS, runner=host_runner, repeat=3, log=quiet)
    assert_matches(result, reference(version))
    assert result.command[0] == str(host_runner)  # natively, no emulator
    assert result.step_ms.shape == (len(TOKENS),) and result.decode_ms.shape == (3,)
    assert f"done: {len(TOKENS)} steps" in result.stdout and "median step" in result.stdout


@needs_arm
@pytest.mark.parametrize("version", list(ARCHITECTURES))
def test_aarch64_runner_matches_pytorch_under_qemu(version, bundle, reference, arm_runner):
    directory = bundle(version, "aarch64")
    assert read_manifest(directory).target.qemu_cpu == "cortex-a53"
    result = run_bundle(directory, TOKENS, runner=arm_runner, log=quiet)
    assert_matches(result, reference(version))
    assert result.command[:3] == ["qemu-aarch64-static", "-cpu", "cortex-a53"]
    assert ", aarch64-linux-gnu;" in result.stdout


@needs_arm
@pytest.mark.parametrize("weights", ["int8", "int4"])
@pytest.mark.parametrize("version", ["v4", "v5", "v6"])  # v7: tests/compile/test_tvm.py, over RPC
def test_aarch64_quantized_bundles_match_pytorch_under_qemu(version, weights, tvm_bundle, reference, arm_runner):
    """int8/int4 aarch64 bundles (NEON dequantizing GEMVs) against the PyTorch model with the same
    quantized weights, held to the same limits as fp32 (the int8/int4 fp32-compute limits equal them)."""
    directory = tvm_bundle(version, "aarch64-linux", weights)
    assert read_manifest(directory).weights == weights
    result = run_bundle(directory, TOKENS, runner=arm_runner, log=quiet)
    assert_matches(result, reference(version, 8 if weights == "int8" else 4))


@needs_arm
def test_emulated_cpu_can_be_chosen(bundle, arm_runner):
    result = run_bundle(bundle("v7", "aarch64"), TOKENS[:2], emulate_cpu="cortex-a72", runner=arm_runner, log=quiet)
    assert result.command[:3] == ["qemu-aarch64-static", "-cpu", "cortex-a72"]


@needs_host
def test_state_in_continues_a_rollout(bundle, host_runner):
    directory = bundle("v5", HOST)
    whole = run_bundle(directory, TOKENS, runner=host_runner, log=quiet)
    first = run_bundle(directory, TOKENS[:8], runner=host_runner, log=quiet)
    state = {k.replace("state_out.", "state.", 1): v for k, v in first.state.items()}
    rest = run_bundle(directory, TOKENS[8:], state=state, runner=host_runner, log=quiet)
    np.testing.assert_array_equal(np.concatenate([first.logits, rest.logits]), whole.logits)
    for name, value in whole.state.items():
        np.testing.assert_array_equal(rest.state[name], value)


PREFILL_CHUNK = 8  # TOKENS (20) = two prefill calls and four steps


@needs_host
@pytest.mark.parametrize("version", ["v5", "v7"])
def test_host_runner_prefills_as_the_python_backend_does(version, tvm_bundle, host_runner):
    """--prefill: whole chunks through the bundle's prefill function, the rest by steps, exactly as
    TvmBackend.prefill runs the same library: the same logits and state, bit for bit."""
    from rwkv_edge.runtime.tvm_backend import TvmBackend

    directory = tvm_bundle(version, "x86_64-host", prefill=PREFILL_CHUNK)
    result = run_bundle(directory, TOKENS, runner=host_runner, prefill=True, repeat=2, log=quiet)
    backend = TvmBackend(directory)
    logits, state = backend.prefill(TOKENS, backend.init_state())
    backend.close()
    assert result.logits.shape == (1, logits.shape[0])
    np.testing.assert_array_equal(result.logits[0], logits)
    for name, value in state.items():
        np.testing.assert_array_equal(result.state[name.replace("state.", "state_out.", 1)], value)
    calls = len(TOKENS) // PREFILL_CHUNK + len(TOKENS) % PREFILL_CHUNK
    assert result.step_ms.shape == (calls,) and result.decode_ms.shape == (2,)
    assert "prefill 1: tokens 8..15" in result.stdout and "step 16:" in result.stdout
    assert f"prompt: {len(TOKENS)} tokens in 2 prefill calls of {PREFILL_CHUNK} and 4 steps" in result.stdout


@needs_host
def test_prefill_without_a_prefill_function_steps_every_token(bundle, host_runner):
    directory = bundle("v7", HOST)  # compiled without a prefill function
    stepped = run_bundle(directory, TOKENS, runner=host_runner, log=quiet)
    prompt = run_bundle(directory, TOKENS, runner=host_runner, prefill=True, log=quiet)
    np.testing.assert_array_equal(prompt.logits, stepped.logits[-1:])
    assert prompt.step_ms.shape == (len(TOKENS),) and "0 prefill calls" in prompt.stdout


@needs_host
def test_token_outside_the_vocabulary_is_an_error(bundle, host_runner):
    directory = bundle("v7", HOST)
    with pytest.raises(TokenError, match="outside the vocabulary"):
        run_bundle(directory, [1, 256], runner=host_runner, log=quiet)
    for tokens in ("1,256", "-1"):  # the binary itself checks before the embedding lookup reads out of bounds
        done = subprocess.run([str(host_runner), str(directory), "--tokens", tokens], capture_output=True, text=True)
        assert done.returncode == 2
        assert done.stderr.count("\n") == 1 and "outside the vocabulary [0, 256)" in done.stderr


@needs_host
def test_the_runner_takes_the_token_range_from_the_library(bundle, host_runner, tmp_path):
    directory = shutil.copytree(bundle("v7", HOST), tmp_path / "bundle")
    manifest = json.loads((directory / "manifest.json").read_text())
    manifest["config"]["vocab_size"] = 10**6  # an edited manifest must not open the gather to id 999999
    (directory / "manifest.json").write_text(json.dumps(manifest))
    done = subprocess.run([str(host_runner), str(directory), "--tokens", "999999"], capture_output=True, text=True)
    assert done.returncode == 2 and done.stderr.count("\n") == 1
    assert "its embedding has 256 rows, the manifest says vocab_size 1000000" in done.stderr


@needs_host
def test_bad_arguments_exit_2_with_one_line(bundle, host_runner, tmp_path):
    directory = bundle("v7", HOST)
    for args in ([str(directory)], [str(directory), "--tokens", "1,x"], [str(tmp_path), "--tokens", "1"],
                 [str(directory), "--tokens", "1", "--bogus"]):
        done = subprocess.run([str(host_runner), *args], capture_output=True, text=True)
        assert done.returncode == 2, args
        assert done.stderr.startswith("rwkv-edge-runner: error:") and done.stderr.count("\n") == 1, done.stderr


@needs_host
def test_corrupted_model_is_refused(bundle, host_runner, tmp_path):
    directory = shutil.copytree(bundle("v7", HOST), tmp_path / "bundle")
    data = bytearray((directory / "model.so").read_bytes())
    data[len(data) // 2] ^= 0xFF
    (directory / "model.so").write_bytes(data)
    with pytest.raises(ArtifactError, match="sha256 differs"):
        run_bundle(directory, [1], runner=host_runner, log=quiet)


@needs_host
def test_a_truncated_params_file_is_refused_by_the_runner(bundle, host_runner, tmp_path):
    """The binary checks the params file itself (run_bundle's hashing aside): one line, exit 2."""
    directory = shutil.copytree(bundle("v7", HOST), tmp_path / "bundle")
    params = directory / read_manifest(directory).graphs["step"].params
    params.write_bytes(params.read_bytes()[:-4])
    done = subprocess.run([str(host_runner), str(directory), "--tokens", "1"], capture_output=True, text=True)
    assert done.returncode == 2 and done.stderr.count("\n") == 1, done.stderr
    assert "params.safetensors: w" in done.stderr and "past the end of the file" in done.stderr


@needs_host
def test_bundle_for_another_architecture_is_refused(bundle, host_runner, tmp_path):
    directory = shutil.copytree(bundle("v7", HOST), tmp_path / "bundle")
    for triple in ("riscv64-linux-gnu", "arm64-apple-macos", "aarch64-linux-android"):
        _set_triple(directory, triple)
        with pytest.raises(PlatformError, match=f"compiled for {triple}"):
            run_bundle(directory, [1], runner=host_runner, log=quiet)
    other = "aarch64-linux-gnu" if HOST == "x86_64" else "x86_64-linux-gnu"
    _set_triple(directory, other)  # the binary refuses it too, before loading model.so
    done = subprocess.run([str(host_runner), str(directory), "--tokens", "1"], capture_output=True, text=True)
    assert done.returncode == 2 and f"compiled for {other}" in done.stderr


@needs_host
def test_build_is_reused_while_sources_hash_the_same(host_runner):
    before = host_runner.stat().st_mtime_ns
    assert build_runner(HOST, log=quiet) == host_runner
    assert host_runner.stat().st_mtime_ns == before


def test_missing_tools_are_named_with_their_package(monkeypatch, tmp_path):
    monkeypatch.setattr(native_runner, "host_arch", lambda: "x86_64")
    monkeypatch.setattr(native_runner.shutil, "which", lambda name: None)
    monkeypatch.setenv("RWKV_EDGE_ARM_ROOT", str(tmp_path))
    reason = runner_unavailable("aarch64")
    for words in ("apt-get install cmake", "apt-get install g++-aarch64-linux-gnu",
                  "apt-get install qemu-user-static", "scripts/install-arm-tools.sh", str(tmp_path / "site")):
        assert words in reason
    with pytest.raises(ToolError, match="cannot build rwkv-edge-runner for aarch64"):
        build_runner("aarch64", tmp_path / "build", log=quiet)


def _set_triple(directory: Path, triple: str) -> None:
    manifest = json.loads((directory / "manifest.json").read_text())
    manifest["target"]["triple"] = triple
    (directory / "manifest.json").write_text(json.dumps(manifest))
