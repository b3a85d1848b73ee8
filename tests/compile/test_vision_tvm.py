"""TVM bundles of tiny Vision-RWKV image graphs: x86_64 here and aarch64 under qemu, each verified
against PyTorch on the reference images."""

from __future__ import annotations

import shutil

import numpy as np
import pytest

from rwkv_edge.architectures import IMAGE
from rwkv_edge.artifact import open_artifact
from rwkv_edge.compile.tvm import TvmOptions, compile_tvm
from rwkv_edge.errors import OptionError
from rwkv_edge.platforms import gpu_unavailable
from rwkv_edge.runtime.rpc_client import Remote
from rwkv_edge.runtime.rpc_server import emulation_unavailable_reason, rpc_server
from rwkv_edge.runtime.vision import open_vision
from rwkv_edge.verify import verify_artifact
from rwkv_edge.verify.build_check import NOT_EXECUTED_EXIT


def quiet(_: str) -> None:
    pass


def test_x86_bundle_matches_pytorch(vision_bundle, vision_export):
    """The odd 5 x 5 grid with key_norm, layer scale and post-norm. Measured max|Δ|/std 2.1e-6 (the scans as
    graph ops, before the Bi-WKV kernel: 1.5e-6), top-1/5 8/8."""
    bundle = vision_bundle("scaled")
    manifest = open_artifact(bundle).manifest
    assert manifest.kind == "tvm" and list(manifest.graphs) == ["image"] and manifest.state == []
    kernels = manifest.target.kernels
    assert kernels["packed gemm"] == 2 * 7 + 1  # every projection of both layers and the patch embedding: the project's GEMMs
    assert kernels["bi-wkv kernels"] == 2 and kernels["patch matmul"] == 1  # compile/tvm/bi_wkv.py, patches.py
    report = verify_artifact(bundle, against_checkpoint=True, log=quiet)
    assert report.passed, report.summary()
    assert report.worst_scaled < 1e-5
    images = np.random.default_rng(2).standard_normal((2, 3, 20, 20)).astype(np.float32)
    assert np.abs(open_vision(bundle).run(images) - open_vision(vision_export("scaled")).run(images)).max() < 1e-4


def test_aarch64_bundle_matches_pytorch_under_qemu(vision_bundle):
    reason = emulation_unavailable_reason()
    if reason:
        pytest.skip(reason)
    bundle = vision_bundle("plain", "aarch64-linux")
    with pytest.raises(Exception, match="built for aarch64-linux-gnu"):
        open_vision(bundle)  # not on this x86-64 machine: through an RPC device only
    with rpc_server(emulate="cortex-a53") as (host, port):
        report = verify_artifact(bundle, remote=Remote(f"{host}:{port}"), log=quiet)
    assert report.passed, report.summary()
    assert "aarch64-linux-gnu" in report.candidate and report.worst_scaled < 1e-5


def test_cuda_image_bundles_are_built_and_checked_not_executed(vision_export, tmp_path):
    """No GPU here: the bundle's device code, library and weights are checked, nothing runs (exit 3). The
    Metal build takes the same path (compile/tvm/gpu.py) and is not repeated here."""
    if shutil.which("nvcc") is None:
        pytest.skip("nvcc (CUDA toolkit 13) is not installed here")
    if gpu_unavailable("cuda", "sm_90", "x86_64-linux-gnu") is None:
        pytest.skip("a CUDA GPU is present: the bundle would run; the image runtime runs CPU bundles only so far")
    out = tmp_path / "cuda"
    compile_tvm(vision_export("plain"), out, TvmOptions("cuda-sm90"), log=quiet)
    report = verify_artifact(out, log=quiet)
    assert report.exit_code == NOT_EXECUTED_EXIT and not report.problems, report.summary()
    assert any("kernels.ptx" in check for check in report.checks) and any("params" in c for c in report.checks)
    manifest = open_artifact(out).manifest
    assert manifest.family == IMAGE and manifest.target.device == "cuda"
    assert manifest.target.kernels.get("matmul kernels", 0) > 0, manifest.target.kernels  # the GEMMs: dlight Matmul


def test_image_bundles_refuse_what_they_cannot_hold(vision_export, tmp_path):
    with pytest.raises(OptionError, match="batch dynamic"):
        compile_tvm(vision_export("backbone"), tmp_path / "dyn", TvmOptions("x86_64-host"), log=quiet)
