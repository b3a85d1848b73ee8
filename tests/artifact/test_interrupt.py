"""Real exports and compiles killed at several points: the output directory then holds either the
previous artifact or the new one, and each passes `verify`; the next run removes what a killed one
left behind."""

from __future__ import annotations

import os
import resource
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from rwkv_edge.artifact import open_artifact
from rwkv_edge.export import OnnxOptions, export_onnx
from rwkv_edge.model import DEMO_CHECKPOINT, load_checkpoint
from rwkv_edge.verify import verify_artifact


def quiet(_: str) -> None:
    pass


def run_until(argv: list[str], stage: str, sig: int, preexec=None) -> tuple[int, str]:
    """Run ``rwkv-edge argv``; send ``sig`` when a line starts with ``stage`` (never: run to the end)."""
    proc = subprocess.Popen([sys.executable, "-m", "rwkv_edge.cli", *argv], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, env={**os.environ, "PYTHONUNBUFFERED": "1"},
                            preexec_fn=preexec)
    lines = []
    for line in proc.stdout:
        lines.append(line)
        if line.lstrip().startswith(stage):
            proc.send_signal(sig)
            break
    output = "".join(lines) + proc.stdout.read()
    return proc.wait(timeout=300), output


def holds_old_or_new(out: Path, old: str, new: str) -> str:
    """Which checkpoint the artifact in ``out`` was made from; it must open and pass a short verify."""
    made_from = {old: "old", new: "new"}[open_artifact(out).manifest.source["sha256"]]
    report = verify_artifact(out, steps=4, greedy_tokens=0, log=quiet)
    assert report.passed, report.summary()
    return made_from


def temporaries(out: Path) -> list[str]:
    return [p.name for p in out.parent.iterdir() if p.name.startswith(f".{out.name}.")]


@pytest.fixture(scope="module")
def checkpoints(make_ckpt) -> tuple[Path, Path]:
    return make_ckpt("v7"), make_ckpt("v7", seed=5)


EXPORT_POINTS = [("load checkpoint", signal.SIGKILL), ("export step graph", signal.SIGKILL),
                 ("clean up step graph", signal.SIGINT), ("save and check model.onnx", signal.SIGKILL),
                 ("export prefill graph", signal.SIGTERM), ("save and check prefill.onnx", signal.SIGKILL),
                 ("wrote ", signal.SIGKILL)]


def test_an_export_killed_anywhere_leaves_the_old_or_the_new_export(checkpoints, tmp_path):
    old, new = checkpoints
    out = tmp_path / "out"
    export_onnx(old, out, OnnxOptions(prefill_chunk=4), log=quiet)
    old_sha = open_artifact(out).manifest.source["sha256"]
    new_sha = load_checkpoint(new)[1]
    seen = []
    for stage, sig in EXPORT_POINTS:
        code, output = run_until(["export", "onnx", str(new), "-o", str(out), "--prefill-chunk", "4"], stage, sig)
        assert code != 0 or stage == "wrote ", output
        seen.append(holds_old_or_new(out, old_sha, new_sha))
        if sig != signal.SIGKILL:  # an interrupted run cleans up itself
            assert temporaries(out) == [] and "Traceback" not in output, output
        if seen[-1] == "new":
            export_onnx(old, out, OnnxOptions(prefill_chunk=4), log=quiet)  # back to the old one
    assert seen == ["old"] * (len(EXPORT_POINTS) - 1) + ["new"]
    export_onnx(new, out, OnnxOptions(prefill_chunk=4), log=quiet)
    assert temporaries(out) == [], "a complete run removes what killed runs left"


COMPILE_POINTS = [("import model.onnx into Relax", signal.SIGKILL), ("optimise", signal.SIGINT),
                  ("build for", signal.SIGKILL), ("link model.so", signal.SIGKILL), ("wrote ", signal.SIGKILL)]


def test_a_compile_killed_anywhere_leaves_the_old_or_the_new_bundle(checkpoints, tmp_path):
    exports = []
    for i, checkpoint in enumerate(checkpoints):
        exports.append(tmp_path / f"onnx-{i}")
        export_onnx(checkpoint, exports[-1], OnnxOptions(prefill_chunk=0), log=quiet)
    old_sha, new_sha = (open_artifact(e).manifest.source["sha256"] for e in exports)
    out = tmp_path / "bundle"
    argv = lambda source: ["compile", str(source), "--target", "x86_64-host", "-o", str(out)]  # noqa: E731
    assert run_until(argv(exports[0]), "never", signal.SIGKILL)[0] == 0
    for stage, sig in COMPILE_POINTS:
        code, output = run_until(argv(exports[1]), stage, sig)
        made_from = holds_old_or_new(out, old_sha, new_sha)
        assert made_from == ("new" if stage == "wrote " else "old"), output
        if made_from == "new":
            assert run_until(argv(exports[0]), "never", signal.SIGKILL)[0] == 0
    assert run_until(argv(exports[1]), "never", signal.SIGKILL)[0] == 0
    assert temporaries(out) == [], [sorted(str(p) for p in (out.parent / t).rglob("*")) for t in temporaries(out)]


def test_a_write_that_fails_keeps_the_old_export_and_says_so_in_one_line(tmp_path):
    """A file-size limit between the checkpoint's and prefill.onnx's sizes makes the kernel refuse a
    write half-way, as a full disk does (EFBIG here, ENOSPC there)."""
    out = tmp_path / "out"
    export_onnx(DEMO_CHECKPOINT, out, OnnxOptions(prefill_chunk=0), log=quiet)
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    limit = int(DEMO_CHECKPOINT.stat().st_size * 1.35)  # model.onnx ~1.12x, prefill.onnx (16 tokens) ~1.54x

    def small_files() -> None:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    code, output = run_until(["export", "onnx", "-o", str(out)], "never", signal.SIGKILL, preexec=small_files)
    assert code == 1 and "Traceback" not in output, output
    assert output.splitlines()[-1].startswith("rwkv-edge: error: ") and "File too large" in output, output
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before and temporaries(out) == []
    shutil.rmtree(out)
