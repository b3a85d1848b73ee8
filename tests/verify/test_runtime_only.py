"""A machine with the runtime and the artifact alone verifies it: a fresh venv holding onnxruntime,
TVM's runtime and numpy (no torch, no coremltools, no matplotlib, no checkpoint) runs `rwkv-edge
verify` on the demo model's ONNX export and TVM bundle against the reference rollout they carry, and on
an image model's export and bundle against their reference images."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from rwkv_edge.compile.tvm import TvmOptions, compile_tvm
from rwkv_edge.export import OnnxOptions, export_onnx
from rwkv_edge.model import DEMO_CHECKPOINT

ROOT = Path(__file__).resolve().parents[2]
RUNTIME_PACKAGES = ["numpy", "onnxruntime", "apache-tvm", "apache-tvm-ffi"]  # docs/artifacts.md


def quiet(_: str) -> None:
    pass


@pytest.fixture(scope="module")
def runtime_python(tmp_path_factory) -> tuple[Path, dict[str, str]]:
    """A fresh venv with the runtime packages only, and rwkv_edge importable from this checkout."""
    root = tmp_path_factory.mktemp("runtime-only")
    subprocess.run([sys.executable, "-m", "venv", str(root / "venv")], check=True)
    python = root / "venv" / "bin" / "python"
    pip = subprocess.run([str(python), "-m", "pip", "install", "-q", "-c", str(ROOT / "constraints.txt"),
                          *RUNTIME_PACKAGES], capture_output=True, text=True)
    assert pip.returncode == 0, pip.stderr[-2000:]
    (root / "path").mkdir()
    (root / "path" / "rwkv_edge").symlink_to(ROOT)  # the package as `pip install --no-deps .` would place it
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTHON")}
    env["PYTHONPATH"] = str(root / "path")
    return python, env


@pytest.fixture(scope="module")
def demo_artifacts(tmp_path_factory) -> dict[str, Path]:
    work = tmp_path_factory.mktemp("demo-artifacts")
    export_onnx(DEMO_CHECKPOINT, work / "onnx", OnnxOptions(prefill_chunk=4), log=quiet)
    compile_tvm(work / "onnx", work / "tvm", TvmOptions("x86_64-host"), log=quiet)
    return {"onnx": work / "onnx", "tvm": work / "tvm"}


def test_the_venv_has_no_torch(runtime_python):
    python, env = runtime_python
    for module in ("torch", "coremltools", "matplotlib"):
        done = subprocess.run([str(python), "-c", f"import {module}"], capture_output=True, text=True, env=env)
        assert done.returncode != 0 and "ModuleNotFoundError" in done.stderr, module


@pytest.mark.parametrize("kind", ["onnx", "tvm"])
def test_verify_runs_without_torch_or_the_checkpoint(kind, runtime_python, demo_artifacts, tmp_path):
    python, env = runtime_python
    artifact = shutil.copytree(demo_artifacts[kind], tmp_path / kind)  # away from the checkpoint's manifest path
    done = subprocess.run([str(python), "-m", "rwkv_edge.cli", "verify", str(artifact)], capture_output=True,
                          text=True, env=env, cwd=tmp_path)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    assert "PASS" in done.stdout and "recorded at build" in done.stdout and "64/64 steps" in done.stdout
    assert "greedy     identical over 128 tokens" in done.stdout
    assert (artifact / "parity.json").is_file() and not (artifact / "parity.png").exists()  # no matplotlib there


@pytest.mark.parametrize("kind", ["onnx", "tvm"])
def test_generate_runs_an_artifact_without_torch(kind, runtime_python, demo_artifacts, tmp_path):
    """What a board runs: `generate` on the artifact, on its own runtime, with the tokenizer and no torch; the
    same greedy text as on this machine's full install."""
    python, env = runtime_python
    argv = ["-m", "rwkv_edge.cli", "generate", str(demo_artifacts[kind]), "--prompt", "def ", "-n", "24",
            "--temperature", "0"]
    done = subprocess.run([str(python), *argv], capture_output=True, text=True, env=env, cwd=tmp_path)
    here = subprocess.run([sys.executable, *argv], capture_output=True, text=True, cwd=tmp_path)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    assert done.stdout.startswith("def ") and len(done.stdout) > 10 and done.stdout == here.stdout


@pytest.mark.parametrize("kind", ["onnx", "tvm"])
def test_an_image_artifact_verifies_without_torch(kind, runtime_python, vision_export, vision_bundle, tmp_path):
    python, env = runtime_python
    source = vision_export("plain") if kind == "onnx" else vision_bundle("scaled")
    artifact = shutil.copytree(source, tmp_path / kind)
    done = subprocess.run([str(python), "-m", "rwkv_edge.cli", "verify", str(artifact)], capture_output=True,
                          text=True, env=env, cwd=tmp_path)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    assert f"PASS  {kind}" in done.stdout and "8 images" in done.stdout and "top-5      8/8" in done.stdout
