"""TVM GPU bundles: every GPU target builds for every version here (no GPU needed); the device code
is in the bundle and `verify` says "built, not executed". The GEMV rewrite and weight lifting that
GPU bundles use (fp32, fp16, int8 and int4 weights) are checked numerically on the CPU. With a CUDA GPU
the bundles also run."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from rwkv_edge.artifact.files import CUDA_SOURCE, FATBIN, MSL, OBJECTS, PARAMS, PTX
from rwkv_edge.artifact.params import map_params
from rwkv_edge.compile.tvm import TvmOptions, compile_tvm
from rwkv_edge.errors import OptionError, PlatformError, ToolError
from rwkv_edge.artifact import read_manifest
from rwkv_edge.model import LANGUAGE_ARCHITECTURES
from rwkv_edge.verify.build_check import NOT_EXECUTED_EXIT
from rwkv_edge.platforms import cuda_device_arch
from rwkv_edge.runtime.tvm_backend import DeviceTensor, TvmBackend
from rwkv_edge.verify import verify_artifact
from rwkv_edge.targets import TARGETS, GpuTarget

GPU_TARGETS = sorted(name for name, t in TARGETS.items() if isinstance(t, GpuTarget))
CUDA_ARCH = cuda_device_arch()
needs_nvcc = pytest.mark.skipif(shutil.which("nvcc") is None, reason="nvcc (CUDA toolkit 13) is not installed here")
needs_cuda_gpu = pytest.mark.skipif(CUDA_ARCH is None, reason="no CUDA GPU here: the run is checked on a GPU "
                                                              "machine (scripts/gpu-check.sh)")


def quiet(_: str) -> None:
    pass


def test_the_issue_s_gpu_targets_are_registered():
    assert set(GPU_TARGETS) == {"cuda-sm80", "cuda-sm89", "cuda-sm90", "jetson-orin", "apple-m-metal", "ios-metal"}
    assert TARGETS["jetson-orin"].arch == "sm_87" and TARGETS["jetson-orin"].triple == "aarch64-linux-gnu"
    assert TARGETS["apple-m-metal"].tvm_target()["host"]["mtriple"] == "arm64-apple-macos"
    assert TARGETS["ios-metal"].tvm_target()["host"]["mtriple"] == "arm64-apple-ios"
    for name in GPU_TARGETS:
        assert TARGETS[name].settings()["device code"]


@needs_nvcc
@pytest.mark.parametrize("target", GPU_TARGETS)
@pytest.mark.parametrize("version", list(LANGUAGE_ARCHITECTURES))
def test_every_gpu_target_builds_every_version(version, target, tvm_bundle, cli):
    linker = TARGETS[target].cross_compiler
    if linker and shutil.which(linker) is None:
        pytest.skip(f"{linker} is not installed here (scripts/install-arm-tools.sh installs it)")
    directory = tvm_bundle(version, target)
    manifest = read_manifest(directory)
    record = manifest.target
    assert record.device == TARGETS[target].device and record.arch == TARGETS[target].arch
    assert record.executed.startswith("none of it")
    assert record.kernels["row gemv"] > 0 and record.kernels.get("gemv kernels", 0) > 0, record.kernels
    if version != "v4":  # v4's state is per channel; the others carry a (H, N, N) WKV state per layer
        assert record.kernels.get("wkv update kernels", 0) > 0, record.kernels
        assert record.kernels.get("wkv matvec kernels", 0) > 0, record.kernels
    for name in record.device_code + [PARAMS, manifest.graphs["step"].file]:
        assert name in manifest.files and (directory / name).stat().st_size > 0, name
    if record.device == "metal":
        assert manifest.graphs["step"].file == OBJECTS  # no Mach-O linker on Linux
        assert "kernel void" in (directory / MSL).read_text()
    else:
        assert ".entry" in (directory / PTX).read_text() and f".target {record.arch}" in (directory / PTX).read_text()

    if TARGETS[target].runs_here():
        return  # the GPU is present: the run tests below cover it
    code, out, _ = cli("verify", str(directory))
    assert code == NOT_EXECUTED_EXIT, out
    assert "\nBUILT, NOT EXECUTED  " in out, out
    saved = json.loads((directory / "parity.json").read_text())
    assert saved["status"] == "built, not executed" and saved["executed"] is False and not saved["problems"]


@needs_nvcc
def test_fp16_weights_are_stored_in_fp16(tvm_bundle):
    fp32, fp16 = (map_params(tvm_bundle("v7", "cuda-sm80", weights) / PARAMS,
                             read_manifest(tvm_bundle("v7", "cuda-sm80", weights)).graphs["step"].num_params)
                  for weights in ("fp32", "fp16"))
    assert [w.shape for w in fp32] == [w.shape for w in fp16]
    assert {w.dtype for w in fp32} == {np.dtype(np.float32)}
    halves = [w for w in fp16 if w.dtype == np.float16]
    assert halves and sum(w.nbytes for w in fp16) < 0.6 * sum(w.nbytes for w in fp32)
    manifest = read_manifest(tvm_bundle("v7", "cuda-sm80", "fp16"))
    assert (manifest.weights, manifest.compute) == ("fp16", "fp32")


@needs_nvcc
@pytest.mark.parametrize("weights", ["int8", "int4"])
@pytest.mark.parametrize("version", ["v7", "v5"])
def test_quantized_gpu_bundles_hold_the_integers(version, weights, tvm_bundle, version_ckpt, cli):
    """int8 / int4 on cuda-sm90: each projection's integers (int8 (N, K), int4 (N, K/2) uint8) and fp16 scales
    (N, K/32) in params.safetensors, dequantized in GEMVs that dlight's GEMV rule schedules; built, not executed."""
    import torch

    from rwkv_edge.model import load_model

    bits = int(weights[3:])
    directory = tvm_bundle(version, "cuda-sm90", weights)
    manifest = read_manifest(directory)
    assert (manifest.weights, manifest.compute, manifest.group_size) == (weights, "fp32", 32)
    kernels = manifest.target.kernels
    assert kernels[f"{weights} gemv"] > 0 and kernels["gemv kernels"] > 0, kernels
    assert [k for k in kernels if k.startswith("dequantizing")] == ["dequantizing gemv kernels"], kernels  # dlight's GEMV
    values = map_params(directory / PARAMS, manifest.graphs["step"].num_params)
    integers = [v for v in values if v.dtype == (np.int8 if bits == 8 else np.uint8)]
    scales = sorted(v.shape for v in values if v.dtype == np.float16)
    model = load_model(version_ckpt(version))
    linears = [m for m in model.modules() if isinstance(m, torch.nn.Linear)]
    rows, width = model.emb.weight.shape  # the embedding's integers too, gathered a row at a time (uint8)
    assert sorted(v.shape for v in integers) == sorted([(m.out_features, m.in_features * bits // 8) for m in linears]
                                                       + [(rows, width * bits // 8)] * (bits == 4))
    assert scales and set(scales) <= {(m.out_features, m.in_features // 32) for m in linears}  # fp16 per 32 weights
    # (scales below LIFT_MIN_ELEMENTS stay in the library, as every small constant does: the tiny model's 128 x 4)
    assert sum(v.nbytes for v in integers) * 32 // bits == sum(m.weight.numel() * 4 for m in linears) + 4 * rows * width * (bits == 4)
    if TARGETS["cuda-sm90"].runs_here():
        return
    code, out, _ = cli("verify", str(directory))
    assert code == NOT_EXECUTED_EXIT and "\nBUILT, NOT EXECUTED  " in out, out


@pytest.mark.parametrize("version", ["v7"])
def test_an_int4_metal_bundle_builds(version, tvm_bundle):
    manifest = read_manifest(tvm_bundle(version, "apple-m-metal", "int4"))
    assert (manifest.weights, manifest.compute) == ("int4", "fp32") and manifest.graphs["step"].file == OBJECTS
    kernels = manifest.target.kernels
    assert kernels["int4 gemv"] > 0 and kernels["dequantizing gemv kernels"] > 0 and len(
        [k for k in kernels if k.startswith("dequantizing")]) == 1, kernels
    assert "uchar" in (tvm_bundle(version, "apple-m-metal", "int4") / MSL).read_text()  # the nibbles are read as bytes


@pytest.mark.parametrize("weights", ["fp32", "fp16", "int8", "int4"])
def test_the_gpu_rewrite_computes_the_step_on_the_cpu(weights, onnx_export, version_ckpt):
    """Row GEMVs over W^T (fp16 weights summed in fp32; int8/int4: integers and scales dequantized in the
    GEMV) and lifted weights, built for the CPU with TVM's default lowering: the same numbers as PyTorch
    (int8/int4: the model with the same quantized weights), so a GPU mismatch is the GPU's code."""
    import tvm
    from tvm import relax

    from rwkv_edge.compile.tvm.gpu_schedules import gpu_weights
    from rwkv_edge.compile.tvm.importer import import_graph
    from rwkv_edge.compile.tvm.params import WeightTable
    from rwkv_edge.model import load_model
    from rwkv_edge.runtime.torch_backend import TorchBackend
    from rwkv_edge.weights import weight_format

    fmt = weight_format(weights)
    directory = onnx_export("v7", weights=weights if fmt.quantized else "fp32")
    table = WeightTable()
    mod = import_graph(directory / "model.onnx", quiet, table=table)
    mod, values, counts = gpu_weights(mod, table, fmt.float_dtype, fmt.bits, fmt.group_size)
    assert counts["row gemv"] > 0 and values
    model = load_model(version_ckpt("v7"))
    if fmt.quantized:
        quantized = model.quantize_weights(fmt.bits, fmt.group_size)
        assert 0 < counts[f"{weights} gemv"] == quantized < counts["row gemv"], counts  # v7's LoRA factors stay fp32
        assert {np.dtype(np.int8 if fmt.bits == 8 else np.uint8), np.dtype(np.float16)} <= {v.dtype for v in values}
    vm = relax.VirtualMachine(tvm.compile(mod, "llvm"), tvm.cpu())
    params = [tvm.runtime.tensor(np.asarray(v)) for v in values]
    reference = TorchBackend(model)
    state = reference.init_state()
    names = [t.input_name for t in reference.state_spec()]
    worst = 0.0
    for token in (1, 7, 42, 3):
        args = [tvm.runtime.tensor(np.array([token], np.int64))] + [tvm.runtime.tensor(state[n][None]) for n in names]
        logits, *_ = vm["main"](*args, *params)
        expected, state = reference.step(token, state)
        worst = max(worst, np.abs(logits.numpy()[0] - expected).max() / expected.std())
    print(f"{weights}: max|Δ|/std {worst:.2e}")
    assert worst < (2e-2 if weights == "fp16" else 1e-5), worst  # fp16: within its limit (5e-2); else fp32 rounding


def test_gpu_bundles_refuse_to_run_without_their_gpu(tvm_bundle):
    if shutil.which("nvcc") is None:
        pytest.skip("nvcc is not installed here")
    if CUDA_ARCH is None:
        with pytest.raises(PlatformError, match="no CUDA GPU"):
            TvmBackend(tvm_bundle("v4", "cuda-sm80"))
    with pytest.raises(PlatformError, match="Mac"):
        TvmBackend(tvm_bundle("v4", "apple-m-metal"))
    with pytest.raises(PlatformError, match="aarch64-linux-gnu"):
        TvmBackend(tvm_bundle("v4", "jetson-orin"))


def test_each_target_holds_its_weight_formats(onnx_export, tmp_path, cli):
    with pytest.raises(OptionError, match="a x86_64-host bundle holds fp32, int8 or int4 weights, not fp16"):
        compile_tvm(onnx_export("v4"), tmp_path, TvmOptions("x86_64-host", weights="fp16"), log=quiet)
    with pytest.raises(OptionError, match="fp32 weights cannot become an int8 bundle"):
        compile_tvm(onnx_export("v4"), tmp_path, TvmOptions("cuda-sm90", weights="int8"), log=quiet)
    code, _, err = cli("compile", str(onnx_export("v4")), "--target", "ios-coreml", "--weights", "fp16",
                       "-o", str(tmp_path / "x"))
    assert code != 0 and "Core ML converts from the PyTorch checkpoint" in err and len(err.strip().splitlines()) == 1
    assert not list(tmp_path.iterdir())


def test_quantized_gpu_bad_input(make_ckpt, onnx_export, tmp_path):
    """One line each, nothing written: a group size that does not divide K, int8 compute, another format."""
    cases = [(make_ckpt("v7", n_embd=96, head_size=32), TvmOptions("cuda-sm90", weights="int8", group_size=64),
              "a group size of 64 does not divide the input dimension 96"),
             (onnx_export("v4"), TvmOptions("cuda-sm90", weights="int4", compute="int8"),
              "cuda-sm90 bundles compute in fp32"),
             (onnx_export("v7", weights="int8"), TvmOptions("cuda-sm90", weights="fp16"),
              "int8 weights cannot become an fp16 bundle")]
    for source, options, message in cases:
        with pytest.raises(OptionError, match=message):
            compile_tvm(source, tmp_path / "out", options, log=quiet)
        assert not (tmp_path / "out").exists()


def test_cuda_without_nvcc_names_the_toolkit(onnx_export, tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", "/nonexistent")
    with pytest.raises(ToolError, match="nvcc"):
        compile_tvm(onnx_export("v4"), tmp_path / "b", TvmOptions("cuda-sm90"), log=quiet)
    assert not (tmp_path / "b" / "manifest.json").exists()


@needs_nvcc
def test_a_broken_device_code_file_is_reported(tvm_bundle, tmp_path, cli):
    from rwkv_edge.artifact import Artifact
    from rwkv_edge.verify.build_check import check_gpu_build

    directory = tmp_path / "b"
    shutil.copytree(tvm_bundle("v4", "cuda-sm80"), directory)
    (directory / PTX).write_text("// nothing\n")
    code, _, err = cli("verify", str(directory))
    assert code != 0 and "kernels.ptx" in err and "modified or partly written" in err  # the manifest catches it first
    unchecked = Artifact(directory, read_manifest(directory), manifest_sha256="")  # bypass the hashes:
    report = check_gpu_build(unchecked, "no GPU")  # the device-code check catches it too
    assert report.exit_code == 1 and "kernels.ptx lacks" in report.problems[0], report.summary()


@needs_cuda_gpu
@pytest.mark.parametrize("weights", ["fp32", "fp16", "int8", "int4"])
@pytest.mark.parametrize("version", list(LANGUAGE_ARCHITECTURES))
def test_cuda_bundles_match_pytorch_on_the_gpu(version, weights, tvm_bundle):
    target = max((t for t in GPU_TARGETS if TARGETS[t].device == "cuda" and TARGETS[t].runs_here()),
                 key=lambda t: TARGETS[t].arch)
    directory = tvm_bundle(version, target, weights)
    report = verify_artifact(directory, steps=32, greedy_tokens=16, log=quiet)
    assert report.passed, report.summary()
    backend = TvmBackend(directory)
    _, state = backend.step(1, backend.init_state())
    assert all(isinstance(v, DeviceTensor) for v in state.values())  # the state stays on the GPU
    assert {CUDA_SOURCE, FATBIN} <= set(read_manifest(directory).files)
