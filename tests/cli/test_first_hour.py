"""A new user's first hour (issue 26): an artifact runs on its own runtime, artifacts of the bundled demo
survive a reinstall, bad input is refused before anything heavy loads, and what is printed works."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from rwkv_edge.bundled import CHECKPOINTS, DEMO_CHECKPOINT, recorded_checkpoint, source_checkpoint
from rwkv_edge.errors import ArtifactError

HEAVY = ("torch", "onnx", "onnxruntime", "tvm", "coremltools")


@pytest.fixture(scope="module")
def demo_export(tmp_path_factory) -> Path:
    """The bundled demo model exported to ONNX (step graph only)."""
    from rwkv_edge.export import OnnxOptions, export_onnx

    out = tmp_path_factory.mktemp("demo") / "onnx"
    export_onnx(DEMO_CHECKPOINT, out, OnnxOptions(prefill_chunk=0), log=lambda _: None)
    return out


@pytest.fixture(scope="module")
def orphan_export(tmp_path_factory) -> Path:
    """An ONNX export whose source checkpoint is gone: only the artifact itself can run it."""
    from rwkv_edge.export import OnnxOptions, export_onnx
    from rwkv_edge.model.synthetic import make_checkpoint, save_checkpoint

    d = tmp_path_factory.mktemp("orphan")
    ckpt = save_checkpoint(make_checkpoint("v7"), d / "gone.pth")
    export_onnx(ckpt, d / "onnx", OnnxOptions(prefill_chunk=0), log=lambda _: None)
    ckpt.unlink()
    return d / "onnx"


def _with_source(export: Path, tmp_path: Path, checkpoint: str) -> Path:
    """A copy of ``export`` whose manifest names ``checkpoint`` as its source (the manifest is not hashed)."""
    copy = Path(shutil.copytree(export, tmp_path / "copy"))
    data = json.loads((copy / "manifest.json").read_text())
    data["source"]["checkpoint"] = checkpoint
    (copy / "manifest.json").write_text(json.dumps(data))
    return copy


# 1. an artifact runs on its own runtime unless --backend says otherwise

def test_generate_and_trace_run_an_artifact_on_its_own_backend(orphan_export, tmp_path, cli):
    code, out, err = cli("generate", str(orphan_export), "--prompt", "ab", "-n", "4", "--temperature", "0")
    assert code == 0 and out.startswith("ab"), err
    code, out, _ = cli("trace", str(orphan_export), "--tokens", "1,2", "-o", str(tmp_path / "t.npz"))
    assert code == 0 and "traced 2 tokens on onnxruntime" in out
    code, _, err = cli("generate", str(orphan_export), "--prompt", "ab", "-n", "4", "--backend", "torch")
    assert code == 1 and "gone.pth: no such checkpoint file" in err, "torch stays possible, on the source checkpoint"


# 2. bundled models are recorded by name, resolved only inside the package

def test_an_export_of_the_demo_records_it_by_name(demo_export):
    data = json.loads((demo_export / "manifest.json").read_text())
    assert data["source"]["checkpoint"] == "bundled:rwkv7-demo.pth"
    assert recorded_checkpoint(Path("/elsewhere/rwkv7-demo.pth")) == "/elsewhere/rwkv7-demo.pth"


@pytest.mark.parametrize("recorded", ["bundled:rwkv7-demo.pth",  # today's manifests
                                      "/old/venv/lib/python3.11/site-packages/rwkv_edge/model/demo/rwkv7-demo.pth"])
def test_a_demo_artifact_finds_its_checkpoint_after_a_reinstall(demo_export, tmp_path, cli, recorded):
    copy = _with_source(demo_export, tmp_path, recorded)
    code, out, err = cli("generate", str(copy), "--backend", "torch", "--prompt", "def ", "-n", "8", "--temperature", "0")
    assert code == 0, err
    assert out == cli("generate", str(copy), "--prompt", "def ", "-n", "8", "--temperature", "0")[1]
    code, out, err = cli("verify", str(copy), "--against-checkpoint", "--steps", "4", "--greedy-tokens", "0")
    assert code == 0 and "PASS" in out, err


@pytest.mark.parametrize("recorded", ["bundled:../../../../etc/passwd", "bundled:/etc/passwd", "bundled:train.py"])
def test_a_bundled_name_never_leads_outside_the_demo_models(demo_export, tmp_path, cli, recorded):
    with pytest.raises(ArtifactError, match="is not a model rwkv-edge ships"):
        source_checkpoint({"checkpoint": recorded, "sha256": "0" * 64})
    code, _, err = cli("generate", str(_with_source(demo_export, tmp_path, recorded)), "--backend", "torch",
                       "--prompt", "a")
    assert code == 1 and err.count("\n") == 1 and "is not a model rwkv-edge ships" in err, err


def test_a_missing_path_resolves_to_a_bundled_model_only_by_its_hash():
    missing = "/old/site-packages/rwkv_edge/model/demo/rwkv7-demo.pth"
    assert source_checkpoint({"checkpoint": missing, "sha256": "0" * 64}) == Path(missing)
    import hashlib

    sha = hashlib.sha256(DEMO_CHECKPOINT.read_bytes()).hexdigest()
    assert source_checkpoint({"checkpoint": missing, "sha256": sha}) == CHECKPOINTS["rwkv7-demo.pth"]


# 4. what needs no model is refused before torch, ONNX or TVM loads

@pytest.mark.parametrize("argv,message", [
    (["compile", "--target", "rpi5", "-o", "{tmp}/out"], "unknown target 'rpi5'"),
    (["compile", "--target", "x86_64-host", "-o", "{tmp}/full"], "is not empty and holds no rwkv-edge artifact"),
    (["compile", "{tmp}/missing.pth", "--target", "x86_64-host", "-o", "{tmp}/out"], "missing.pth: no such"),
    (["compile", "--target", "x86_64-host", "--stateful", "-o", "{tmp}/out"], "--stateful applies to Core ML targets"),
    (["compile", "--target", "raspberry-pi-5", "--weights", "fp16", "-o", "{tmp}/out"], "not fp16"),
    (["compile", "{tmp}/export", "--target", "ios-coreml", "-o", "{tmp}/out"], "not from an ONNX export"),
    (["export", "onnx", "-o", "{tmp}/full"], "is not empty and holds no rwkv-edge artifact"),
    (["export", "onnx", "-o", "{tmp}/file.txt"], "is a file, not a directory"),
    (["export", "onnx", "-o", "{tmp}/out", "--weights", "fp16", "--group-size", "32"], "--group-size applies to int8"),
    (["export", "onnx", "{tmp}/missing.pth", "-o", "{tmp}/out"], "missing.pth: no such checkpoint file"),
    (["generate", "{tmp}/missing", "--prompt", "a"], "missing: no such checkpoint file or artifact directory"),
    (["trace", "{tmp}/missing.pth", "--tokens", "1", "-o", "{tmp}/t.npz"], "missing.pth: no such"),
    (["info", "{tmp}/missing.pth"], "missing.pth: no such checkpoint file"),
    (["classify", "{tmp}/missing.png"], "missing.png: no such file"),
    (["bench", "--backends", "torch,tensorrt"], "unknown backend 'tensorrt'; choose from torch, onnxruntime, tvm"),
    (["bench", "--json-out", "{tmp}/no/dir/bench.json"], "cannot write"),
])
def test_bad_input_is_refused_before_the_heavy_imports(tmp_path, argv, message):
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "thesis.tex").write_text("user data")
    (tmp_path / "file.txt").write_text("a file")
    (tmp_path / "export").mkdir()
    (tmp_path / "export" / "manifest.json").write_text("{}")  # an artifact, by its manifest
    argv = [a.format(tmp=tmp_path) for a in argv]
    probe = ("import sys\nfrom rwkv_edge.cli.main import main\ncode = main(sys.argv[1:])\n"
             f"print(code, sorted(m for m in {HEAVY!r} if m in sys.modules))")
    done = subprocess.run([sys.executable, "-c", probe, *argv], capture_output=True, text=True, cwd=tmp_path)
    assert done.stdout.splitlines()[-1] == "1 []", (done.stdout, done.stderr)
    assert done.stderr.count("\n") == 1 and done.stderr.startswith("rwkv-edge: error: ") and message in done.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["export", "file.txt", "full"], "nothing was created"


# 8. --images takes the --backend habit of --tokens: agreeing is fine, contradicting is one line

def test_trace_images_accepts_the_artifact_s_own_backend_and_refuses_another(tmp_path, cli):
    from rwkv_edge.bundled import VISION_DEMO_CHECKPOINT
    from rwkv_edge.export import OnnxOptions, export_onnx

    export_onnx(VISION_DEMO_CHECKPOINT, tmp_path / "vision", OnnxOptions(), log=lambda _: None)
    np.save(tmp_path / "images.npy", np.zeros((2, 3, 64, 64), np.float32))
    trace = ["trace", "--images", str(tmp_path / "images.npy"), "-o", str(tmp_path / "t.npz")]
    assert cli(*trace, str(tmp_path / "vision"), "--backend", "onnxruntime")[0] == 0
    assert cli(*trace, "--backend", "torch")[0] == 0  # a checkpoint's own
    code, _, err = cli(*trace, str(tmp_path / "vision"), "--backend", "tvm")
    assert code == 1 and err.count("\n") == 1 and "--backend tvm contradicts" in err and "onnxruntime" in err, err


# 5. only commands that work afterwards are printed

def test_an_export_into_a_build_s_scratch_prints_no_pin_command(tmp_path, cli):
    from rwkv_edge.artifact import ArtifactWriter
    from rwkv_edge.export import OnnxOptions, export_onnx
    from rwkv_edge.model.synthetic import make_checkpoint, save_checkpoint

    ckpt = save_checkpoint(make_checkpoint("v7"), tmp_path / "m.pth")
    lines: list[str] = []
    with ArtifactWriter(tmp_path / "bundle", lines.append) as outer:  # as compile exports a checkpoint first
        export_onnx(ckpt, outer.scratch / "onnx", OnnxOptions(prefill_chunk=0), log=lines.append)
    assert not any("pin it" in line or "rwkv-edge verify" in line for line in lines), lines
    assert lines[-1] == "wrote model.onnx, reference.npz and manifest.json to a scratch directory (removed when this " \
                        "build ends)"
    code, out, _ = cli("export", "onnx", str(ckpt), "-o", str(tmp_path / "onnx"), "--prefill-chunk", "0")
    pin = out.splitlines()[-1].split("(pin it: ")[1].rstrip(")").split()
    assert code == 0 and pin[:2] == ["rwkv-edge", "verify"]
    assert cli(*pin[1:], "--steps", "2", "--greedy-tokens", "0")[0] == 0, "the printed command works"


# 3. a long stage is never silent, a short one prints its two lines

def test_a_long_stage_says_how_far_it_has_got_and_a_short_one_stays_quiet():
    import time

    from rwkv_edge.artifact.builder import stage

    lines: list[str] = []
    with stage(lines.append, "quick", every=5.0):
        pass
    assert len(lines) == 2 and lines[0] == "quick ..." and lines[1].startswith("  quick: 0.0 s, peak memory")
    lines.clear()
    with stage(lines.append, "slow", "sleeps", every=0.2) as slow:
        slow.progress("3/4 steps")
        time.sleep(0.9)  # beats at 0.2 and 0.6 s (later on a loaded machine)
    assert lines[0] == "slow (sleeps) ..." and lines[-1].startswith("  slow: ") and "s, peak memory" in lines[-1]
    beats = lines[1:-1]
    assert beats and all(re.fullmatch(r"  slow: \d+ s so far, 3/4 steps \.\.\.", line) for line in beats), lines


def test_the_reference_rollout_reports_where_it_has_got_to():
    from rwkv_edge.artifact.builder import GREEDY_TOKENS, ROLLOUT_STEPS, build_reference
    from rwkv_edge.model import load_model

    seen: list[str] = []
    build_reference(load_model(DEMO_CHECKPOINT), "bytes", progress=seen.append)
    assert seen[0] == f"rollout 0/{ROLLOUT_STEPS} steps" and f"rollout {ROLLOUT_STEPS - 1}/{ROLLOUT_STEPS} steps" in seen
    assert seen[-1] == f"greedy {GREEDY_TOKENS - 1}/{GREEDY_TOKENS} tokens"


# 9. --json prints JSON on stdout, in every command; info's keys agree across families

def test_bench_json_prints_the_report_and_json_out_saves_it(tmp_path, cli):
    code, out, err = cli("bench", "--backends", "torch", "--steps", "2", "--warmup", "0", "--prefill", "0", "--json",
                         "--json-out", str(tmp_path / "bench.json"), "--work", str(tmp_path / "work"))
    assert code == 0, err
    report = json.loads(out)  # stdout is the JSON alone; the progress went to stderr
    assert report["schema"] == "rwkv-edge.bench/1" and [r["backend"] for r in report["runs"]] == ["torch"]
    assert "read bandwidth" in err and f"wrote {tmp_path / 'bench.json'}" in err
    assert json.loads((tmp_path / "bench.json").read_text())["runs"] == report["runs"]


def test_info_json_names_family_and_architecture_alike_for_every_family(cli):
    from rwkv_edge.bundled import VISION_DEMO_CHECKPOINT

    language = json.loads(cli("info", "--json")[1])
    vision = json.loads(cli("info", str(VISION_DEMO_CHECKPOINT), "--json")[1])
    assert list(language)[:3] == list(vision)[:3] == ["family", "architecture", "label"]
    assert (language["family"], language["architecture"], language["version"]) == ("language", "v7", "v7")
    assert (vision["family"], vision["architecture"], vision["label"]) == ("image", "vrwkv", "Vision-RWKV")


# 10. errors name the command or flag to use, not a Python function

def test_errors_point_at_commands_and_flags(cli):
    from rwkv_edge.bundled import VISION_DEMO_CHECKPOINT

    code, _, err = cli("generate", str(VISION_DEMO_CHECKPOINT), "--prompt", "a")
    assert code == 1 and "run a Vision-RWKV with `rwkv-edge classify`" in err and "load_vision" not in err, err
    code, _, err = cli("generate", "--prompt", "Hello", "--tokenizer", "world")
    assert code == 1 and err.count("\n") == 1 and "use --tokenizer bytes" in err and "token id" not in err, err


# 7, 11. what the README tells a new user works from an install and prints what it says

def test_classify_samples_works_from_any_directory_and_says_where_they_are(tmp_path, cli, monkeypatch):
    from rwkv_edge.bundled import SAMPLE_IMAGES

    monkeypatch.chdir(tmp_path)  # not a source checkout: model/demo/... is no path here
    code, out, _ = cli("classify", "--samples", "--top", "1")
    lines = out.splitlines()
    assert code == 0 and lines[1::2] == [str(p) for p in SAMPLE_IMAGES]
    assert [line.split()[1] for line in lines[2::2]] == ["ring", "star", "checkerboard"]
    code, _, err = cli("classify")
    assert code == 1 and "no images to classify: give image files, or --samples" in err


def test_the_readme_sample_text_is_what_its_command_prints(cli):
    readme = (Path(__file__).parents[2] / "README.md").read_text()
    command = re.search(r'rwkv-edge (generate --prompt "def " [^&]*?) &&', readme).group(1)
    shown = readme.split("```text\n", 1)[1].split("\n```", 1)[0]
    argv = [a.strip('"') for a in re.findall(r'"[^"]*"|\S+', command)]
    code, out, _ = cli(*argv)
    assert code == 0 and out.rstrip("\n") == shown.rstrip("\n")
    assert "max_name, max_name" not in shown
