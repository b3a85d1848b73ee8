"""``verify`` is tied to what it judged: it holds the artifact against writers while it runs, its
report names the manifest it judged, and its verdict stands when the report cannot be written."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from rwkv_edge.artifact import ArtifactWriter, open_artifact
from rwkv_edge.errors import ArtifactError
from rwkv_edge.verify import verify_artifact


def quiet(_: str) -> None:
    pass


@pytest.fixture
def artifact(onnx_export, tmp_path) -> Path:
    """A copy of the session's v7 ONNX export (with a prefill graph), free to lock and change."""
    copy = tmp_path / "art"
    shutil.copytree(onnx_export("v7", 4), copy)
    return copy


def test_the_report_names_the_manifest_it_judged(artifact):
    report = verify_artifact(artifact, steps=8, greedy_tokens=4, log=quiet)
    saved = json.loads((artifact / "parity.json").read_text())
    assert report.passed and saved["passed"] is True
    assert saved["manifest_sha256"] == open_artifact(artifact).manifest_sha256


def test_no_writer_replaces_the_artifact_while_it_is_verified(artifact):
    """The review's case: an export swapped another artifact in while verify ran, and verify then wrote
    its verdict into the directory that held the new artifact. Now the writer fails at once."""
    tried: list[str] = []

    def log(line: str) -> None:
        if line.startswith("rollout of") and not tried:  # mid-verify: the artifact is loaded and running
            try:
                ArtifactWriter(artifact, quiet).__enter__()
                tried.append("the writer got in")
            except ArtifactError as e:
                tried.append(str(e))

    report = verify_artifact(artifact, steps=4, greedy_tokens=0, log=log)
    assert report.passed and len(tried) == 1
    assert "another rwkv-edge run is using" in tried[0] and "(writing or verifying it)" in tried[0]
    with ArtifactWriter(artifact, quiet):  # once verify is done, a writer gets the directory
        pass


def test_an_artifact_being_written_is_not_verified(artifact):
    with ArtifactWriter(artifact, quiet):
        with pytest.raises(ArtifactError, match="another rwkv-edge run is writing .*: wait for it to finish"):
            verify_artifact(artifact, steps=4, greedy_tokens=0, log=quiet)
    assert not (artifact / "parity.json").exists()


def test_a_report_that_cannot_be_written_leaves_the_verdict_and_one_warning(artifact, cli):
    (artifact / "parity.json").mkdir()  # a directory where the report goes
    code, out, err = cli("verify", str(artifact), "--steps", "4", "--greedy-tokens", "0")
    warnings = [line for line in out.splitlines() if line.startswith("warning:")]
    assert code == 0 and "\nPASS  onnxruntime" in out and err == ""
    assert len(warnings) == 1 and f"cannot write {artifact / 'parity.json'}" in warnings[0]


def _read_only(directory: Path) -> bool:
    """Make ``directory`` unwritable, even to root where the file system allows (chattr +i)."""
    if os.geteuid() != 0:
        directory.chmod(0o555)
        return True
    return shutil.which("chattr") is not None and subprocess.run(["chattr", "+i", str(directory)]).returncode == 0


def test_a_read_only_artifact_is_verified(artifact, cli):
    """The review's case: the rollout completed, then `cannot write .../parity.json: Read-only file
    system`, exit 1, and no verdict printed."""
    if not _read_only(artifact):
        pytest.skip("cannot make a directory read-only here: running as root and chattr +i is refused")
    try:
        code, out, err = cli("verify", str(artifact), "--steps", "4", "--greedy-tokens", "0")
    finally:
        if os.geteuid() == 0:
            subprocess.run(["chattr", "-i", str(artifact)], check=True)
        artifact.chmod(0o755)
    assert code == 0 and "\nPASS  onnxruntime" in out and err == ""
    assert sum(line.startswith("warning: the verdict is not saved: cannot write") for line in out.splitlines()) == 1
    assert not (artifact / "parity.json").exists()


def test_a_failing_verdict_keeps_its_exit_code_when_unsaved(artifact, rehash, cli):
    """Exit code by verdict: a FAIL that cannot be saved still exits 1."""
    import numpy as np

    with np.load(artifact / "reference.npz") as saved:
        arrays = {name: saved[name] for name in saved.files}
    arrays["logits_full"] = arrays["logits_full"] + 1.0  # a reference the artifact no longer matches
    np.savez(artifact / "reference.npz", **arrays)
    rehash(artifact)
    (artifact / "parity.json").mkdir()
    code, out, _ = cli("verify", str(artifact), "--steps", "4", "--greedy-tokens", "0")
    assert code == 1 and "\nFAIL  onnxruntime" in out and "warning: the verdict is not saved" in out
