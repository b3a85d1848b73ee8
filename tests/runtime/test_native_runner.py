"""The C++ runner: TVM bundles of every version run natively and, cross-compiled, under qemu, and match PyTorch.

Each runner (x86-64 host; aarch64 under ``qemu-aarch64-static -cpu cortex-a53``) steps 20 tokens on
its own state; the logits of every step and the final state are held to the fp32 parity limits.
The aarch64 tests skip, naming what is missing, where the cross compiler, qemu or the aarch64 TVM
libraries are not installed (``scripts/install-arm-tools.sh``).

The binary checks a bundle itself, as the Python reader does, before any of its code loads: the
tamper tests put a real shared library whose constructor leaves a file behind in place of model.so.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

from rwkv_edge.errors import ArtifactError, PlatformError, TokenError, ToolError
from rwkv_edge.artifact import read_manifest
from rwkv_edge.model import LANGUAGE_ARCHITECTURES, load_model
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
@pytest.mark.parametrize("version", list(LANGUAGE_ARCHITECTURES))
def test_host_runner_matches_pytorch(version, bundle, reference, host_runner):
    result = run_bundle(bundle(version, HOST), TOKENS, runner=host_runner, repeat=3, log=quiet)
    assert_matches(result, reference(version))
    assert result.command[0] == str(host_runner)  # natively, no emulator
    assert result.step_ms.shape == (len(TOKENS),) and result.decode_ms.shape == (3,)
    assert f"done: {len(TOKENS)} steps" in result.stdout and "median step" in result.stdout


@needs_arm
@pytest.mark.parametrize("version", list(LANGUAGE_ARCHITECTURES))
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
def test_a_params_file_shorter_than_its_header_says_is_refused_by_the_runner(bundle, host_runner, tmp_path, rehash):
    """The binary checks the params file's header against its size (a truncated file rehashed into
    the manifest passes the hashes): one line, exit 2."""
    directory = shutil.copytree(bundle("v7", HOST), tmp_path / "bundle")
    params = directory / read_manifest(directory).graphs["step"].params
    params.write_bytes(params.read_bytes()[:-4])
    rehash(directory)
    done = subprocess.run([str(host_runner), str(directory), "--tokens", "1"], capture_output=True, text=True)
    assert done.returncode == 2 and done.stderr.count("\n") == 1, done.stderr
    assert "params.safetensors: w" in done.stderr and "past the end of the file" in done.stderr


# -- the binary checks the bundle itself --------------------------------------------------------------

EVIL_LIBRARY = r"""
#include <stdio.h>
__attribute__((constructor)) static void leave_trace(void) {
    FILE *f = fopen(TRACE, "w");
    if (f) {
        fputs("the constructor ran\n", f);
        fclose(f);
    }
}
"""


@pytest.fixture
def tampered(bundle, tmp_path):
    """(a copy of the v7 host bundle, an evil library of the size of its model.so whose constructor writes
    ``trace``, trace): the library padded with zeros, so only its sha256 tells it apart."""
    compiler = shutil.which("gcc") or shutil.which("cc")
    if compiler is None:
        pytest.skip("no C compiler (apt-get install gcc)")
    directory = shutil.copytree(bundle("v7", HOST), tmp_path / "bundle")
    original = (directory / "model.so").read_bytes()
    trace = tmp_path / "trace"
    (tmp_path / "evil.c").write_text(EVIL_LIBRARY)
    subprocess.run([compiler, "-shared", "-fPIC", f'-DTRACE="{trace}"', str(tmp_path / "evil.c"),
                    "-o", str(tmp_path / "evil.so")], check=True, capture_output=True)
    evil = (tmp_path / "evil.so").read_bytes()
    assert len(evil) < len(original)
    return directory, evil + bytes(len(original) - len(evil)), trace


def run_runner(runner: Path, directory: Path, *args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    """The runner on one token of ``directory`` (a copy in a test's tmp_path: its output goes beside it)."""
    return subprocess.run([str(runner), str(directory), "--tokens", "1", "--out", str(directory.parent / "out"), *args],
                          capture_output=True, text=True, env=env)


def assert_refused(done: subprocess.CompletedProcess, *words: str) -> None:
    """Exit 2 with one line on stderr holding every one of ``words``."""
    assert done.returncode == 2, done.stderr
    assert done.stderr.startswith("rwkv-edge-runner: error: ") and done.stderr.count("\n") == 1, done.stderr
    for part in words:
        assert part in done.stderr, done.stderr


def sha256_of(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@needs_host
def test_a_replaced_library_is_refused_before_its_code_runs(tampered, host_runner):
    directory, evil, trace = tampered
    (directory / "model.so").write_bytes(evil)  # the manifest unchanged
    assert_refused(run_runner(host_runner, directory), f"{directory}/model.so: sha256 differs from the manifest")
    assert not trace.exists()


@needs_host
def test_bytes_appended_to_the_library_are_refused(bundle, host_runner, tmp_path):
    directory = shutil.copytree(bundle("v7", HOST), tmp_path / "bundle")
    original = (directory / "model.so").read_bytes()
    (directory / "model.so").write_bytes(original + bytes(64))
    assert_refused(run_runner(host_runner, directory),
                   f"model.so: {len(original) + 64} bytes, the manifest says {len(original)} (modified or partly written)")


@needs_host
def test_a_rehashed_tamper_fails_against_the_pinned_manifest(tampered, host_runner, rehash):
    """A consistent tamper (the evil library's size and sha256 written into the manifest) passes every
    hash; only the manifest's own sha256, pinned at build time, catches it: before the library loads."""
    directory, evil, trace = tampered
    pinned = sha256_of(directory / "manifest.json")
    (directory / "model.so").write_bytes(evil)
    rehash(directory)
    assert_refused(run_runner(host_runner, directory, "--expect-sha256", pinned.upper()),
                   f"manifest.json: sha256 {sha256_of(directory / 'manifest.json')}, not the expected {pinned}: "
                   "this is not the artifact you pinned (rebuilt or modified since)")
    assert not trace.exists()
    with pytest.raises(ArtifactError, match=f"not the expected {pinned}"):  # the Python driver refuses it too
        run_bundle(directory, [1], runner=host_runner, expect_sha256=pinned, log=quiet)
    # Unpinned, nothing tells it apart (docs/artifacts.md): its code runs, which shows the trace is real.
    done = run_runner(host_runner, directory)
    assert done.returncode == 2 and "has no function 'vm_load_executable'" in done.stderr
    assert trace.read_text() == "the constructor ran\n"


@needs_host
def test_run_bundle_pins_the_runner_to_the_manifest_it_checked(bundle, host_runner, tmp_path):
    """A manifest swapped after run_bundle checked it (here by a wrapper around the runner) fails in the
    runner: run_bundle passes the sha256 it validated as --expect-sha256."""
    directory = shutil.copytree(bundle("v7", HOST), tmp_path / "bundle")
    pinned = sha256_of(directory / "manifest.json")
    result = run_bundle(directory, [1], runner=host_runner, expect_sha256=pinned.upper(), log=quiet)
    assert result.command[result.command.index("--expect-sha256") + 1] == pinned
    swapper = tmp_path / "swap-then-run"
    swapper.write_text(f'#!/bin/sh\nprintf " " >> "$1/manifest.json"\nexec {host_runner} "$@"\n')
    swapper.chmod(0o755)
    with pytest.raises(ToolError, match=f"exit 2.*manifest.json: sha256 .*, not the expected {pinned}"):
        run_bundle(directory, [1], runner=swapper, log=quiet)


@needs_host
def test_the_library_loads_from_the_bytes_that_were_hashed(bundle, host_runner, tmp_path):
    """The dynamic loader opens a sealed in-memory copy of model.so, never the file in the bundle
    (which could be swapped between the hash and the load)."""
    directory = shutil.copytree(bundle("v7", HOST), tmp_path / "bundle")
    done = run_runner(host_runner, directory, env={**os.environ, "LD_DEBUG": "files"})
    assert done.returncode == 0, done.stderr
    loaded = [line for line in done.stderr.splitlines() if "calling init:" in line]
    assert any("/proc/self/fd/" in line for line in loaded), loaded
    assert not any("model.so" in line for line in loaded), loaded


def _edit_manifest(directory: Path, edit) -> None:
    path = directory / "manifest.json"
    data = json.loads(path.read_text())
    edit(data)
    path.write_text(json.dumps(data))


def _listed(name: str, meta: dict | None = None):
    """An edit that lists one more file, ``name``."""
    return lambda data: data["files"].__setitem__(name, meta or {"sha256": "0" * 64, "bytes": 0})


def _symlinked_library(directory: Path) -> str:
    real = directory.parent / "elsewhere.so"
    (directory / "model.so").rename(real)
    (directory / "model.so").symlink_to(real)  # the very same bytes, through a link
    return f"{directory}/model.so: a symbolic link"


def _renamed_params(directory: Path, name: str) -> None:
    """params.safetensors moved to ``name``, the manifest following it (sizes and hashes unchanged)."""
    (directory / name).parent.mkdir(exist_ok=True)
    (directory / "params.safetensors").rename(directory / name)

    def edit(data):
        data["files"][name] = data["files"].pop("params.safetensors")
        for graph in data["graphs"].values():
            if graph.get("params") == "params.safetensors":
                graph["params"] = name

    _edit_manifest(directory, edit)


def _symlinked_folder(directory: Path) -> str:
    _renamed_params(directory, "weights/params.safetensors")
    (directory / "weights").rename(directory.parent / "weights")
    (directory / "weights").symlink_to(directory.parent / "weights")
    return f"{directory}/weights: a symbolic link"


def _truncated_params(directory: Path) -> str:
    params = directory / "params.safetensors"
    size = params.stat().st_size
    params.write_bytes(params.read_bytes()[:-4])
    return f"params.safetensors: {size - 4} bytes, the manifest says {size}"


def _missing_file(directory: Path) -> str:
    (directory / "reference.npz").unlink()
    return f"{directory}: reference.npz, listed in the manifest, is missing"


def _manifest_edit(edit, message: str):
    def damage(directory: Path) -> str:
        _edit_manifest(directory, edit)
        return message

    return damage


def _unlinked(data: dict) -> None:
    """The manifest of a bundle whose objects are still to link (model.tar), as a Metal bundle's is."""
    data["files"]["model.tar"] = data["files"].pop("model.so")
    for graph in data["graphs"].values():
        if graph.get("file") == "model.so":
            graph["file"] = "model.tar"


def _symlinked_manifest(directory: Path) -> str:
    (directory / "manifest.json").rename(directory.parent / "manifest.json")
    (directory / "manifest.json").symlink_to(directory.parent / "manifest.json")
    return "manifest.json: not a regular file"


def _huge_manifest(directory: Path) -> str:
    with open(directory / "manifest.json", "ab") as f:
        f.write(b" " * (16 << 20))
    return "bytes, more than a manifest can hold"


NOT_INSIDE = "is not a relative path inside the artifact directory"
DAMAGES = {
    "symlinked library": _symlinked_library,
    "symlinked folder on a listed path": _symlinked_folder,
    "truncated params": _truncated_params,
    "missing listed file": _missing_file,
    "symlinked manifest": _symlinked_manifest,
    "manifest over 16 MiB": _huge_manifest,
    "bad schema": _manifest_edit(lambda d: d.update(schema="rwkv-edge.artifact/1"),
                                 "written by another version of rwkv-edge (schema 'rwkv-edge.artifact/1'"),
    "name with ..": _manifest_edit(_listed("../outside.so"), f"file name '../outside.so' {NOT_INSIDE}"),
    "absolute name": _manifest_edit(_listed("/etc/passwd"), f"file name '/etc/passwd' {NOT_INSIDE}"),
    "empty component": _manifest_edit(_listed("weights//w.bin"), f"file name 'weights//w.bin' {NOT_INSIDE}"),
    "dot component": _manifest_edit(_listed("./w.bin"), f"file name './w.bin' {NOT_INSIDE}"),
    "backslash": _manifest_edit(_listed("weights\\w.bin"), f"file name 'weights\\\\w.bin' {NOT_INSIDE}"),
    "newline and NUL": _manifest_edit(_listed("a\nb\0"), f"file name 'a\\x0ab\\x00' {NOT_INSIDE}"),
    "name too long": _manifest_edit(_listed("é" * 1025), NOT_INSIDE),
    "reserved name": _manifest_edit(_listed("parity.json"), "file name 'parity.json' is reserved"),
    "upper-case sha256": _manifest_edit(_listed("x.bin", {"sha256": "A" * 64, "bytes": 0}),
                                        "files['x.bin'].sha256 is not a sha256 hex digest"),
    "negative size": _manifest_edit(_listed("x.bin", {"sha256": "0" * 64, "bytes": -1}),
                                    "files['x.bin'].bytes is negative"),
    "boolean size": _manifest_edit(_listed("x.bin", {"sha256": "0" * 64, "bytes": True}),
                                   "files['x.bin'].bytes has the wrong type (boolean)"),
    "params not listed": _manifest_edit(lambda d: d["graphs"]["step"].update(params="other.safetensors"),
                                        "graphs.step.params 'other.safetensors' is not one of the listed files"),
    "objects not linked": _manifest_edit(_unlinked, "holds no linked model.so (files: model.tar, params.safetensors, "
                                                    "reference.npz); link it for the target first"),
}


@needs_host
@pytest.mark.parametrize("damage", list(DAMAGES))
def test_a_damaged_bundle_is_refused_with_one_line(damage, bundle, host_runner, tmp_path):
    directory = shutil.copytree(bundle("v7", HOST), tmp_path / "bundle")
    message = DAMAGES[damage](directory)
    assert_refused(run_runner(host_runner, directory), message)


@needs_host
def test_listed_files_in_a_folder_are_found(bundle, host_runner, tmp_path):
    """A listed path through a real folder is fine (a symlinked one is refused above)."""
    directory = shutil.copytree(bundle("v7", HOST), tmp_path / "bundle")
    _renamed_params(directory, "weights/params.safetensors")
    done = run_runner(host_runner, directory)
    assert done.returncode == 0, done.stderr


SHA256_DRIVER = r"""
#include "sha256.h"
#include <cstdio>
#include <vector>

// Prints the sha256 of each file named, fed to Update in pieces of 1 to 1000 bytes.
int main(int argc, char** argv) {
  for (int i = 1; i < argc; ++i) {
    std::FILE* f = std::fopen(argv[i], "rb");
    if (f == nullptr) return 1;
    rwkv_edge::Sha256 h;
    std::vector<char> buffer(1000);
    size_t piece = 1;
    for (size_t n; (n = std::fread(buffer.data(), 1, piece, f)) > 0; piece = piece * 7 % 1000 + 1) h.Update(buffer.data(), n);
    std::fclose(f);
    std::printf("%s\n", h.HexDigest().c_str());
  }
  return 0;
}
"""


@needs_host
def test_the_runners_sha256_agrees_with_hashlib(bundle, tmp_path):
    """runtime/cpp/sha256.cc on the FIPS 180-4 examples, every length around the block and padding
    boundaries, data split into uneven pieces, and a bundle's real files."""
    (tmp_path / "driver.cc").write_text(SHA256_DRIVER)
    sources = native_runner.SOURCES
    compiler = shutil.which("g++") or shutil.which("c++")
    subprocess.run([compiler, "-std=c++17", "-O2", f"-I{sources}", str(sources / "sha256.cc"), str(tmp_path / "driver.cc"),
                    "-o", str(tmp_path / "driver")], check=True, capture_output=True)
    rng = np.random.default_rng(0)
    messages = [b"abc", b"", b"abcdbcdecdefdefgefghfghighijhijkijkljklmklmnlmnomnopnopq", b"a" * 1_000_000]
    messages += [rng.bytes(n) for n in [*range(0, 200), 1000, 4095, 4096, 65537, 3_000_001]]
    files = []
    for i, data in enumerate(messages):
        files.append(tmp_path / f"m{i}")
        files[-1].write_bytes(data)
    directory = bundle("v7", HOST)
    files += sorted(p for p in directory.iterdir() if p.is_file())
    done = subprocess.run([str(tmp_path / "driver"), *map(str, files)], capture_output=True, text=True, check=True)
    assert done.stdout.split() == [sha256_of(p) for p in files]
    assert done.stdout.split()[:4] == [  # FIPS 180-4 examples (and the empty message)
        "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad",
        "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
        "248d6a61d20638b8e5c026930c3e6039a33ce45964ff2167f6ecedd419db06c1",
        "cdc76e5c9914fb9281a1c7e284d73e67f1809a48a497200e046d39ccc7112cd0",
    ]


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
    with pytest.raises(ToolError, match=r"cannot build the native runtime \(librwkv_edge, rwkv-edge-run, rwkv-edge-runner\) for aarch64"):
        build_runner("aarch64", tmp_path / "build", log=quiet)


def _set_triple(directory: Path, triple: str) -> None:
    manifest = json.loads((directory / "manifest.json").read_text())
    manifest["target"]["triple"] = triple
    (directory / "manifest.json").write_text(json.dumps(manifest))
