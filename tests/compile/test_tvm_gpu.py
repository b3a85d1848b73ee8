"""TVM GPU bundles: every GPU target builds for every version here (no GPU needed); the device code
is in the bundle and `verify` says "built, not executed". The GEMV rewrite and weight lifting that
GPU bundles use are checked numerically on the CPU. With a CUDA GPU the bundles also run."""

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
from rwkv_edge.model import ARCHITECTURES
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
@pytest.mark.parametrize("version", list(ARCHITECTURES))
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


@pytest.mark.parametrize("weights", ["fp32", "fp16"])
def test_the_gpu_rewrite_computes_the_step_on_the_cpu(weights, onnx_export, version_ckpt):
    """Row GEMVs over W^T (fp16 weights summed in fp32) and lifted weights, built for the CPU with
    TVM's default lowering: the same numbers as PyTorch, so a GPU mismatch is the GPU's code."""
    import onnx
    import tvm
    from tvm import relax
    from tvm.relax.frontend.onnx import from_onnx

    from rwkv_edge.compile.gpu import WEIGHT_DTYPES
    from rwkv_edge.compile.gpu_schedules import gpu_weights
    from rwkv_edge.model import load_model
    from rwkv_edge.runtime.torch_backend import TorchBackend

    directory = onnx_export("v7")
    mod = from_onnx(onnx.load(str(directory / "model.onnx")), keep_params_in_input=False)
    mod, values, gemvs = gpu_weights(mod, WEIGHT_DTYPES[weights])
    assert gemvs > 0 and values
    vm = relax.VirtualMachine(tvm.compile(mod, "llvm"), tvm.cpu())
    params = [tvm.runtime.tensor(v) for v in values]
    reference = TorchBackend(load_model(version_ckpt("v7")))
    state = reference.init_state()
    names = [t.input_name for t in reference.state_spec()]
    for token in (1, 7, 42, 3):
        args = [tvm.runtime.tensor(np.array([token], np.int64))] + [tvm.runtime.tensor(state[n][None]) for n in names]
        logits, *_ = vm["main"](*args, *params)
        expected, state = reference.step(token, state)
        scaled = np.abs(logits.numpy()[0] - expected).max() / expected.std()
        assert scaled < (1e-5 if weights == "fp32" else 2e-2), scaled  # within the fp16 limit (5e-2): fp16 weights, fp32 sums


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
    with pytest.raises(OptionError, match="a cuda-sm90 bundle holds fp32 or fp16 weights, not int8"):
        compile_tvm(onnx_export("v4"), tmp_path, TvmOptions("cuda-sm90", weights="int8"), log=quiet)
    code, _, err = cli("compile", str(onnx_export("v4")), "--target", "ios-coreml", "--weights", "fp16",
                       "-o", str(tmp_path / "x"))
    assert code != 0 and "Core ML converts from the PyTorch checkpoint" in err and len(err.strip().splitlines()) == 1
    assert not list(tmp_path.iterdir())


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
@pytest.mark.parametrize("weights", ["fp32", "fp16"])
@pytest.mark.parametrize("version", list(ARCHITECTURES))
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
