"""TVM CPU bundles: every version compiled with the project's schedules and verified against PyTorch.

aarch64 bundles run under qemu in tests/runtime/test_native_runner.py (the C++ runner) and over
RPC in tests/runtime/test_rpc_verify.py; here: the host build, the generated code, bad input.
"""

from __future__ import annotations

import re
import shutil
import subprocess

import numpy as np
import pytest

from rwkv_edge.artifact import Graph
from rwkv_edge.artifact.files import LIBRARY, OBJECTS, PARAMS
from rwkv_edge.compile.tvm import PREFILL_CHUNK, TvmOptions, compile_tvm
from rwkv_edge.errors import (ArtifactError, OptionError, PlatformError, StateError, TokenError, ToolError,
                              UnknownTargetError)
from rwkv_edge.export import OnnxOptions, export_onnx
from rwkv_edge.artifact import read_manifest
from rwkv_edge.model import LANGUAGE_ARCHITECTURES
from rwkv_edge.runtime.rpc_client import Remote, open_session
from rwkv_edge.runtime.tvm_backend import TvmBackend
from rwkv_edge.verify import verify_artifact
from rwkv_edge.verify.tolerances import FP32
from rwkv_edge.targets import TARGETS, TvmTarget, get_target

TVM_TARGETS = sorted(name for name, t in TARGETS.items() if isinstance(t, TvmTarget))


def quiet(_: str) -> None:
    pass


@pytest.mark.parametrize("version", list(LANGUAGE_ARCHITECTURES))
def test_every_version_compiles_for_the_host_and_matches_pytorch(version, tvm_bundle):
    report = verify_artifact(tvm_bundle(version), steps=32, greedy_tokens=0, log=quiet)
    assert report.passed, report.summary()
    assert report.n_steps == 32
    manifest = read_manifest(tvm_bundle(version))
    assert manifest.kind == "tvm" and manifest.target.name == "x86_64-host"
    kernels = manifest.target.kernels
    assert kernels["packed gemv"] > 0 and kernels["gemv kernels"] > 0, kernels


@pytest.mark.parametrize("version", list(LANGUAGE_ARCHITECTURES))
def test_the_prefill_function_equals_single_steps(version, tvm_bundle, prefill_vs_steps):
    """``prefill`` (8 tokens in one call, GEMM projections) against 8 calls of ``main`` on the same
    bundle, and against PyTorch's rollout through verify."""
    bundle = tvm_bundle(version, prefill=8)
    manifest = read_manifest(bundle)
    assert manifest.graphs["prefill"] == Graph(LIBRARY, function="prefill", chunk=8, params=PARAMS,
                                               num_params=manifest.graphs["step"].num_params)
    assert manifest.target.kernels["packed gemm"] > 0 and manifest.target.kernels["gemm kernels"] > 0
    # measured on the tiny models: identical bits (the GEMM sums over K in the GEMV's order)
    for name, gap in prefill_vs_steps(TvmBackend(bundle), [3, 141, 59, 26, 5, 35, 89, 79]).items():
        assert gap <= FP32.logits_scaled, f"prefill {name}: max|Δ|/std {gap:.2e}"
    report = verify_artifact(bundle, steps=16, greedy_tokens=16, log=quiet)
    assert report.passed, report.summary()
    assert any(line.startswith("prefill graph: 8 tokens in one call") for line in report.what_ran), report.what_ran


def test_prefill_refuses_a_wrong_chunk_and_bad_tokens(tvm_bundle):
    backend = TvmBackend(tvm_bundle("v7", prefill=8))
    state = backend.init_state()
    with pytest.raises(StateError, match="exactly 8 tokens"):
        backend.run_prefill_chunk([1, 2, 3], state)
    with pytest.raises(TokenError, match="outside the vocabulary"):
        backend.run_prefill_chunk([1] * 7 + [backend.vocab_size], state)
    logits, _ = backend.prefill(list(range(1, 12)), state)  # one call of 8, then 3 single steps
    assert logits.shape == (backend.vocab_size,)


def test_the_prefill_chunk_comes_from_the_export(onnx_export, tmp_path):
    """An export's prefill graph decides the chunk; asking for another, or for one from an export
    without a prefill graph, is refused before any work; 0 builds the decode step only."""
    with pytest.raises(OptionError, match="takes 8 tokens, not 16"):
        compile_tvm(onnx_export("v7", 8), tmp_path / "a", TvmOptions(prefill_chunk=16), log=quiet)
    with pytest.raises(OptionError, match="has no prefill graph"):
        compile_tvm(onnx_export("v7"), tmp_path / "b", TvmOptions(prefill_chunk=8), log=quiet)
    with pytest.raises(OptionError, match=">= 0"):
        TvmOptions(prefill_chunk=-1)
    compile_tvm(onnx_export("v7", 8), tmp_path / "c", TvmOptions(prefill_chunk=0), log=quiet)
    backend = TvmBackend(tmp_path / "c")
    assert "prefill" not in read_manifest(tmp_path / "c").graphs and backend.chunk == 0
    with pytest.raises(StateError, match="no prefill graph"):
        backend.run_prefill_chunk([1] * 8, backend.init_state())
# Every version at one format, each format on two versions: the int8-compute default covers v4-v7 x int8/int4
# on this host (tests/compile/test_intdot.py), so the fp32-compute kernels are checked on a diagonal.
@pytest.mark.parametrize("version, weights", [("v4", "int4"), ("v5", "int8"), ("v6", "int4"), ("v7", "int8")])
def test_quantized_bundles_match_pytorch_with_the_same_weights(version, weights, tvm_bundle):
    """int8/int4 exports with fp32 compute: every projection a quantized GEMV; held to the int8/int4
    fp32-compute limits against the PyTorch model with the same quantized weights."""
    report = verify_artifact(tvm_bundle(version, weights=weights, compute="fp32"), steps=32, greedy_tokens=0, log=quiet)
    assert report.passed, report.summary()
    assert report.tolerance.name == f"{weights} weights, fp32 compute"
    manifest = read_manifest(tvm_bundle(version, weights=weights, compute="fp32"))
    assert manifest.weights == weights and manifest.group_size == 32 and manifest.compute == "fp32"
    kernels = manifest.target.kernels
    assert kernels[f"{weights} gemv"] > 0 and kernels["quantized gemv kernels"] > 0, kernels
    # the LoRA matrices of v6/v7 are not quantized: they stay fp32 GEMVs
    assert (kernels["packed gemv"] > 0) == (version in ("v6", "v7")), kernels


@pytest.mark.parametrize("bits", [8, 4])
def test_quantized_packing_holds_the_exact_integers_and_scales(bits):
    """pack_quantized's tiles give back every weight, the padding columns are zero (N = 70, tile 32)."""
    from rwkv_edge.compile.tvm.quantized import pack_quantized
    from rwkv_edge.quantize import quantize

    found = quantize(np.random.default_rng(bits).normal(size=(70, 64)).astype(np.float32), bits, 32)
    values, scales = pack_quantized(found, 32)
    assert values.dtype == (np.int8 if bits == 8 else np.uint8) and scales.dtype == np.float16
    assert values.shape == (3, 64 * bits // 8, 32) and scales.shape == (3, 2, 32)
    q = values.transpose(0, 2, 1).reshape(96, -1).astype(np.int16)  # (N padded, K * bits / 8)
    if bits == 4:  # unsigned nibbles q + 8, the even k low
        q = np.stack([q & 0xF, q >> 4], axis=-1).reshape(96, -1) - 8
    s = scales.transpose(0, 2, 1).reshape(96, -1)
    np.testing.assert_array_equal(q[:70], found.values)
    np.testing.assert_array_equal(s[:70], found.scales)
    assert not s[70:].any()  # padding columns: zero scales


def test_a_vocabulary_of_no_whole_tiles_is_padded(make_ckpt, tmp_path):
    """RWKV-4 Pile models have 50277 tokens: the head's columns are padded to whole tiles, then sliced.
    A checkpoint is exported with a prefill graph of PREFILL_CHUNK tokens, which verify checks too."""
    compile_tvm(make_ckpt("v4", vocab_size=1001), tmp_path, log=quiet)
    assert read_manifest(tmp_path).graphs["prefill"].chunk == PREFILL_CHUNK
    report = verify_artifact(tmp_path, steps=16, greedy_tokens=0, log=quiet)
    assert report.passed, report.summary()
    assert any(line.startswith("prefill graph") for line in report.what_ran)
    assert TvmBackend(tmp_path).step(1000, TvmBackend(tmp_path).init_state())[0].shape == (1001,)


def test_the_bundle_carries_its_initial_state(tvm_bundle, onnx_export):
    """v5 with a trained time_state: initial_state() in model.so returns it, and the .npz travels along."""
    directory = tvm_bundle("v5")
    backend = TvmBackend(directory)
    with np.load(onnx_export("v5") / "initial_state.npz") as saved:
        for name, value in backend.init_state().items():
            np.testing.assert_array_equal(value, saved[name])
    assert "initial_state.npz" in read_manifest(directory).files


def test_schedules_change_the_code_not_the_numbers(onnx_export, tvm_bundle, tmp_path):
    """The default lowering and the scheduled build agree to float rounding on the same steps."""
    plain = tmp_path / "plain"
    lines: list[str] = []
    compile_tvm(onnx_export("v7"), plain, TvmOptions(schedules=False), log=lines.append)
    assert read_manifest(plain).target.schedules is None
    assert "prefill" not in read_manifest(plain).graphs  # the export has none: said, not an error
    assert any("has no prefill graph: the bundle prefills one step per token" in line for line in lines)
    a, b = TvmBackend(plain), TvmBackend(tvm_bundle("v7"))
    sa, sb = a.init_state(), b.init_state()
    for token in [1, 7, 200, 3, 3, 90]:
        la, sa = a.step(token, sa)
        lb, sb = b.step(token, sb)
    # measured on the demo model: max|Δ| 6.6e-7 of max|logits| (summation order only); 1e-4 is the fp32 limit
    np.testing.assert_allclose(lb, la, rtol=1e-4, atol=1e-4 * float(np.abs(la).max()))


@pytest.mark.skipif(shutil.which("objdump") is None, reason="objdump (binutils) is not installed")
@pytest.mark.parametrize("kind", ["gemv", "gemm"])
def test_host_gemv_and_gemm_loops_are_vector_fma(kind, tvm_bundle):
    """The packed GEMV kernels (decode) and GEMM kernels (prefill) compile to packed fused
    multiply-adds (AVX2/AVX-512 or SSE)."""
    text = subprocess.run(["objdump", "-d", "--no-show-raw-insn", str(tvm_bundle("v7", prefill=8) / LIBRARY)],
                          check=True, capture_output=True, text=True).stdout
    kernels = _kernels(_functions(text, kind))
    assert kernels, f"no {kind} kernel in the library"
    for name, body in kernels.items():
        assert re.search(r"\bv?fmadd\w*ps\b|\bv?mulps\b", body), f"{name} is not vectorised"


def test_aarch64_gemv_loops_are_neon(onnx_export, tmp_path):
    """The same schedules (GEMV and prefill GEMM) emit NEON fmla on 4 lanes for the Cortex-A53 baseline."""
    if shutil.which("aarch64-linux-gnu-gcc") is None or shutil.which("aarch64-linux-gnu-objdump") is None:
        pytest.skip("aarch64 GNU toolchain missing: apt-get install gcc-aarch64-linux-gnu binutils-aarch64-linux-gnu "
                    "(scripts/install-arm-tools.sh)")
    compile_tvm(onnx_export("v7", 8), tmp_path, TvmOptions("aarch64-linux"), log=quiet)
    manifest = read_manifest(tmp_path)
    assert manifest.target.triple == "aarch64-linux-gnu" and manifest.target.qemu_cpu == "cortex-a53"
    text = subprocess.run(["aarch64-linux-gnu-objdump", "-d", "--no-show-raw-insn", str(tmp_path / LIBRARY)],
                          check=True, capture_output=True, text=True).stdout
    for kind in ("gemv", "gemm"):
        kernels = _kernels(_functions(text, kind))
        assert kernels, f"no {kind} kernel in the library"
        for name, body in kernels.items():
            assert re.search(r"fmla\s+v\d+\.4s", body), f"{name} has no 4-lane NEON fmla"
    with pytest.raises(PlatformError, match="aarch64-linux-gnu") as refused:
        TvmBackend(tmp_path)  # built for another architecture: refused, not loaded
    assert f"`rwkv-edge verify {tmp_path} --rpc HOST:PORT`" in str(refused.value), "a command, not a Python module"


@pytest.mark.skipif(shutil.which("objdump") is None, reason="objdump (binutils) is not installed")
@pytest.mark.parametrize("weights", ["int8", "int4"])
def test_host_quantized_gemv_loops_convert_and_fma_in_vectors(weights, tvm_bundle):
    """The quantized GEMVs widen the integers, convert and multiply-add them in vector registers."""
    text = subprocess.run(["objdump", "-d", "--no-show-raw-insn",
                           str(tvm_bundle("v7", weights=weights, compute="fp32") / LIBRARY)],
                          check=True, capture_output=True, text=True).stdout
    kernels = _kernels(_functions(text, "qgemv"))
    assert kernels, "no quantized GEMV kernel in the library"
    for name, body in kernels.items():
        assert re.search(r"\bvpmov[sz]xbd\b", body), f"{name} does not widen its integers in vectors"
        assert re.search(r"\bvcvtdq2ps\b", body), f"{name} does not convert in vectors"
        assert re.search(r"\bvfmadd\w*ps\b", body), f"{name} has no packed FMA"


@pytest.mark.parametrize("weights", ["int8", "int4"])
def test_aarch64_quantized_bundles_are_neon_and_match_under_qemu(weights, tvm_bundle):
    """Cortex-A53 baseline: conversions and fmla on 4 lanes; the parity rollout runs on an emulated board
    over RPC (its timings mean nothing)."""
    from rwkv_edge.runtime.rpc_server import emulation_unavailable_reason, rpc_server

    if shutil.which("aarch64-linux-gnu-objdump") is None or emulation_unavailable_reason():
        pytest.skip(emulation_unavailable_reason() or "aarch64-linux-gnu-objdump missing (binutils-aarch64-linux-gnu)")
    directory = tvm_bundle("v7", "aarch64-linux", weights)
    text = subprocess.run(["aarch64-linux-gnu-objdump", "-d", "--no-show-raw-insn", str(directory / LIBRARY)],
                          check=True, capture_output=True, text=True).stdout
    kernels = _kernels(_functions(text, "qgemv"))
    assert kernels
    for name, body in kernels.items():
        assert re.search(r"[su]cvtf\s+v\d+\.4s", body), f"{name} does not convert on 4 lanes"
        assert re.search(r"fmla\s+v\d+\.4s", body), f"{name} has no 4-lane NEON fmla"
    with rpc_server(emulate="cortex-a53") as (host, port):
        report = verify_artifact(directory, steps=16, greedy_tokens=0, remote=Remote(f"{host}:{port}"), log=quiet)
    assert report.passed, report.summary()
    assert report.tolerance.name == f"{weights} weights, fp32 compute"


def test_android_without_ndk_writes_objects_and_says_so(onnx_export, tmp_path, monkeypatch):
    monkeypatch.delenv("TVM_NDK_CC", raising=False)
    lines: list[str] = []
    compile_tvm(onnx_export("v7"), tmp_path, TvmOptions("android-arm64"), log=lines.append)
    manifest = read_manifest(tmp_path)
    assert OBJECTS in manifest.files and manifest.target.linked is False
    assert any("NDK" in line for line in lines)
    with pytest.raises(PlatformError, match="final link"):
        TvmBackend(tmp_path)


def test_every_tvm_target_has_settings_and_tuning_data():
    assert {"x86_64-host", "aarch64-linux", "raspberry-pi-4", "raspberry-pi-5", "android-arm64"} <= set(TVM_TARGETS)
    for name in TVM_TARGETS:
        target = get_target(name)
        assert target.tvm_target()["kind"] == "llvm"
        params = target.schedule_data()["params"]
        assert params["tile"] % params["vector"] == 0
        assert target.settings()["triple"] == target.triple


def test_unknown_target_lists_the_tvm_ones(onnx_export, tmp_path):
    with pytest.raises(UnknownTargetError, match="aarch64-linux.*raspberry-pi-5.*x86_64-host"):
        compile_tvm(onnx_export("v7"), tmp_path, TvmOptions("raspberry-pi-9"), log=quiet)
    with pytest.raises(OptionError, match="coreml target"):
        compile_tvm(onnx_export("v7"), tmp_path, TvmOptions("ios-coreml"), log=quiet)
    assert not any(tmp_path.iterdir())


@pytest.mark.parametrize("option", [OnnxOptions(weights="fp16", prefill_chunk=0),
                                    OnnxOptions(dynamic_batch=True, prefill_chunk=0)])
def test_only_fp32_batch_1_exports_compile(option, make_ckpt, tmp_path):
    export_onnx(make_ckpt("v7"), tmp_path / "onnx", option, log=quiet)
    with pytest.raises(OptionError, match="TVM bundles compile fp32, int8 or int4 batch-1 exports"):
        compile_tvm(tmp_path / "onnx", tmp_path / "out", log=quiet)
    assert not (tmp_path / "out").exists()


def test_weights_that_the_export_does_not_have_are_refused_before_any_work(onnx_export, tmp_path):
    """An int8/int4 bundle takes its integers from an export in that format; one line each, nothing written."""
    cases = [(onnx_export("v7"), TvmOptions(weights="int8"), "fp32 weights cannot become an int8 bundle: export with "
                                                             "`--weights int8`, or give the checkpoint"),
             (onnx_export("v7", weights="int8"), TvmOptions(weights="int4"), "int8 weights cannot become an int4 bundle"),
             (onnx_export("v7", weights="int8"), TvmOptions(weights="fp32"), "int8 weights cannot become an fp32 bundle"),
             (onnx_export("v7", weights="int8"), TvmOptions(group_size=64), "--group-size 64 applies when compiling a checkpoint"),
             (onnx_export("v7", weights="int4"), TvmOptions(schedules=False), "int4 bundles need the project's schedules"),
             (onnx_export("v7", weights="int8"), TvmOptions("cuda-sm80", weights="fp16"), "int8 weights cannot become an fp16 bundle"),
             (onnx_export("v7"), TvmOptions(weights="fp16"), "x86_64-host bundle holds fp32, int8 or int4 weights")]
    for source, options, message in cases:
        with pytest.raises(OptionError, match=re.escape(message)):
            compile_tvm(source, tmp_path / "out", options, log=quiet)
        assert not (tmp_path / "out").exists()


def test_a_checkpoint_with_quantized_weights_is_exported_in_that_format_first(make_ckpt, tmp_path, cli):
    code, out, err = cli("compile", str(make_ckpt("v5")), "--target", "x86_64-host", "--weights", "int4", "--compute", "fp32",
                         "--group-size", "64", "-o", str(tmp_path))
    assert code in (0, None), err
    manifest = read_manifest(tmp_path)
    assert manifest.weights == "int4" and manifest.group_size == 64 and manifest.target.kernels["int4 gemv"] > 0
    assert verify_artifact(tmp_path, steps=8, greedy_tokens=0, log=quiet).passed


def test_the_bundle_cannot_overwrite_its_own_onnx_export(onnx_export, tmp_path):
    source = shutil.copytree(onnx_export("v7"), tmp_path / "onnx")
    with pytest.raises(ArtifactError, match="which this build reads: write the artifact to another directory"):
        compile_tvm(source, source, log=quiet)
    assert read_manifest(source).kind == "onnx"


def test_missing_cross_compiler_names_the_package(onnx_export, tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    with pytest.raises(ToolError, match="gcc-aarch64-linux-gnu"):
        compile_tvm(onnx_export("v7"), tmp_path / "out", TvmOptions("raspberry-pi-5"), log=quiet)


def test_corrupted_library_is_refused(tvm_bundle, tmp_path):
    copy = tmp_path / "bundle"
    shutil.copytree(tvm_bundle("v7"), copy)
    data = bytearray((copy / LIBRARY).read_bytes())
    data[len(data) // 2] ^= 0xFF
    (copy / LIBRARY).write_bytes(bytes(data))
    with pytest.raises(ArtifactError, match="sha256"):
        TvmBackend(copy)
    with pytest.raises(ArtifactError, match="sha256"):
        verify_artifact(copy, steps=4, greedy_tokens=0, log=quiet)


def test_the_library_holds_code_and_the_weights_are_mapped_not_copied(tvm_bundle):
    directory = tvm_bundle("v7")
    step = read_manifest(directory).graphs["step"]
    assert step.params == PARAMS and step.num_params > 0
    library, params = (directory / LIBRARY).read_bytes(), directory / PARAMS
    assert len(library) < params.stat().st_size / 2
    backend = TvmBackend(directory)
    arrays = [np.from_dlpack(p) for p in backend.loaded.params]
    largest = max(arrays, key=lambda a: a.nbytes)
    assert largest.tobytes()[:4096] not in library  # the weights are not in the library
    mapped = _mappings_of(params)
    for a in arrays:  # each weight the library runs on lies in a mapping of the file: a view, not a copy
        assert any(lo <= a.ctypes.data and a.ctypes.data + a.nbytes <= hi for lo, hi in mapped)
        assert a.ctypes.data % 64 == 0


def _mappings_of(path) -> list[tuple[int, int]]:
    """Address ranges of this process's mappings of ``path`` (/proc/self/maps)."""
    ranges = []
    for line in open("/proc/self/maps"):
        fields = line.split()
        if len(fields) >= 6 and fields[5] == str(path.resolve()):
            lo, hi = (int(x, 16) for x in fields[0].split("-"))
            ranges.append((lo, hi))
    return ranges


def test_a_tampered_or_truncated_params_file_is_refused(tvm_bundle, tmp_path):
    copy = shutil.copytree(tvm_bundle("v7"), tmp_path / "bundle")
    data = bytearray((copy / PARAMS).read_bytes())
    data[-1] ^= 0xFF
    (copy / PARAMS).write_bytes(bytes(data))
    with pytest.raises(ArtifactError, match="sha256 differs") as tampered:
        TvmBackend(copy)
    (copy / PARAMS).write_bytes(bytes(data[:-4]))
    with pytest.raises(ArtifactError, match="bytes, the manifest says") as truncated:
        TvmBackend(copy)
    assert "\n" not in str(tampered.value) + str(truncated.value)


def test_failed_compile_leaves_the_previous_bundle(tvm_bundle, tmp_path):
    copy = tmp_path / "bundle"
    shutil.copytree(tvm_bundle("v7"), copy)
    with pytest.raises(ArtifactError):
        compile_tvm(tmp_path / "missing.pth", copy, log=quiet)
    assert verify_artifact(copy, steps=4, greedy_tokens=0, log=quiet).passed


def test_bad_tokens_and_state_are_refused_before_the_library(tvm_bundle):
    backend = TvmBackend(tvm_bundle("v7"))
    state = backend.init_state()
    with pytest.raises(TokenError, match="outside the vocabulary"):
        backend.step(backend.vocab_size, state)
    name = next(iter(state))
    with pytest.raises(StateError, match=name):
        backend.step(1, {**state, name: np.zeros((3,), np.float32)})


def test_rpc_server_that_is_not_there_fails_fast():
    import socket
    import time

    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    start = time.monotonic()
    with pytest.raises(ToolError, match="no TVM RPC server at"):
        open_session(Remote(f"127.0.0.1:{port}"))
    assert time.monotonic() - start < 30
    with pytest.raises(OptionError, match="HOST:PORT"):
        Remote("nonsense").host_port()


def _kernels(functions: dict[str, str]) -> dict[str, str]:
    """Kernel name -> the text of its wrapper and its parallel body (``__tvm_ffi_K``, ``K``, ``K_compute_``)."""
    kernels: dict[str, str] = {}
    for name, body in functions.items():
        kernel = name.removeprefix("__tvm_ffi_").removesuffix("_compute_")
        kernels[kernel] = kernels.get(kernel, "") + body
    return kernels


def _functions(disassembly: str, needle: str) -> dict[str, str]:
    """Function name -> body text of the functions in an objdump listing whose name contains ``needle``."""
    functions: dict[str, list[str]] = {}
    current = None
    for line in disassembly.splitlines():
        if line.endswith(">:"):
            name = line.split("<", 1)[1][:-2]
            current = name if needle in name else None
            if current:
                functions[current] = []
        elif current and line.strip():
            functions[current].append(line)
    return {name: "\n".join(lines) for name, lines in functions.items()}
