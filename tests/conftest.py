"""Shared fixtures: tiny seeded checkpoints of every registered architecture, made in-process."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from rwkv_edge.model.synthetic import make_checkpoint, save_checkpoint


def pytest_configure(config) -> None:
    """One torch thread for the session and the Python processes it starts (OpenMP reads
    OMP_NUM_THREADS): the suite's models are tiny, and on a busy machine torch's default of one
    thread per core made each step wait on the scheduler (rwkv_edge/model/threads.py)."""
    import torch

    os.environ.setdefault("OMP_NUM_THREADS", "1")
    torch.set_num_threads(1)


@pytest.fixture(scope="session")
def checkpoint_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("checkpoints")


@pytest.fixture(scope="session")
def make_ckpt(checkpoint_dir):
    """make_ckpt(version, **kwargs) -> path of a saved random checkpoint (cached per arguments)."""
    cache: dict[tuple, Path] = {}

    def make(version: str, suffix: str = ".pth", **kwargs) -> Path:
        key = (version, suffix, tuple(sorted(kwargs.items())))
        if key not in cache:
            name = "-".join([version] + [f"{k}{v}" for k, v in sorted(kwargs.items())]).replace(".", "_")
            cache[key] = save_checkpoint(make_checkpoint(version, **kwargs), checkpoint_dir / f"{name}{suffix}")
        return cache[key]

    return make


@pytest.fixture(scope="session")
def version_ckpt(make_ckpt):
    """version_ckpt(version) -> the tiny checkpoint artifact tests use: v5/v6 with a trained initial state."""
    return lambda version: make_ckpt(version, time_state=True) if version in ("v5", "v6") else make_ckpt(version)


@pytest.fixture(scope="session")
def onnx_export(version_ckpt, tmp_path_factory):
    """onnx_export(version, prefill=0, weights="fp32") -> ONNX export of a tiny checkpoint: the decode step,
    and a prefill graph of ``prefill`` tokens if not 0; v5/v6 carry a trained initial state. Shared by
    the TVM tests."""
    from rwkv_edge.export import OnnxOptions, export_onnx

    done: dict[tuple[str, int, str], Path] = {}

    def get(version: str, prefill: int = 0, weights: str = "fp32") -> Path:
        key = (version, prefill, weights)
        if key not in done:
            done[key] = tmp_path_factory.mktemp(f"onnx-{version}-prefill{prefill}-{weights}")
            export_onnx(version_ckpt(version), done[key], OnnxOptions(weights, prefill_chunk=prefill),
                        log=lambda _: None)
        return done[key]

    return get


@pytest.fixture(scope="session")
def tvm_bundle(onnx_export, tmp_path_factory):
    """tvm_bundle(version, target="x86_64-host", weights="fp32", prefill=0, compute=None) -> a TVM bundle
    compiled once per session (int8/int4: from an export with those weights; copy it before changing
    it), with a prefill function of ``prefill`` tokens if not 0; ``compute`` as ``TvmOptions.compute``
    (None: the target's default)."""
    from rwkv_edge.compile.tvm import TvmOptions, compile_tvm

    done: dict[tuple[str, str, str, int, str | None], Path] = {}

    def get(version: str, target: str = "x86_64-host", weights: str = "fp32", prefill: int = 0,
            compute: str | None = None) -> Path:
        key = (version, target, weights, prefill, compute)
        if key not in done:
            done[key] = tmp_path_factory.mktemp(f"tvm-{version}-{target}-{weights}-prefill{prefill}-{compute}")
            source = onnx_export(version, prefill, weights if weights in ("int8", "int4") else "fp32")  # GPU fp16: from fp32
            compile_tvm(source, done[key], TvmOptions(target, weights=weights, compute=compute), log=lambda _: None)
        return done[key]

    return get


@pytest.fixture(scope="session")
def demo_bundle(tmp_path_factory) -> Path:
    """The bundled demo model (bytes tokenizer) compiled once per session for this machine's CPU, with
    the default prefill function; shared: copy it before changing it."""
    from rwkv_edge.bundled import DEMO_CHECKPOINT
    from rwkv_edge.compile.tvm import TvmOptions, compile_tvm
    from rwkv_edge.platforms import host_arch

    out = tmp_path_factory.mktemp("demo") / "tvm"
    compile_tvm(DEMO_CHECKPOINT, out, TvmOptions("x86_64-host" if host_arch() == "x86_64" else "aarch64-linux"),
                log=lambda _: None)
    return out


@pytest.fixture
def cli(capsys):
    """cli(*argv) -> (exit code, stdout, stderr) of ``rwkv-edge argv`` run in-process."""
    from rwkv_edge.cli.main import main

    def run(*argv: str) -> tuple[int, str, str]:
        try:
            code = main(list(argv))
        except SystemExit as e:  # argparse
            code = e.code
        out, err = capsys.readouterr()
        return code, out, err

    return run


@pytest.fixture
def rehash():
    """rehash(directory, edit=None) -> path of manifest.json: apply ``edit(data)`` to the manifest's JSON,
    list and hash every file again and rewrite it, as a user who tampers with an artifact would."""
    import json

    from rwkv_edge.artifact import MANIFEST, REPORTS, sha256_file

    def run(directory: Path, edit=None) -> Path:
        path = directory / MANIFEST
        data = json.loads(path.read_text())
        names = sorted(p.relative_to(directory).as_posix() for p in directory.rglob("*")
                       if p.is_file() and p.name != MANIFEST and p.name not in REPORTS)
        data["files"] = {n: {"sha256": sha256_file(directory / n), "bytes": (directory / n).stat().st_size} for n in names}
        if edit is not None:
            edit(data)
        path.write_text(json.dumps(data))
        return path

    return run


@pytest.fixture
def prefill_vs_steps():
    """prefill_vs_steps(backend, tokens) -> {output name: max|Δ|/std} of one prefill call against
    len(tokens) single steps, for the logits and every state tensor."""
    from rwkv_edge.verify.report import OutputErrors

    def gaps(backend, tokens: list[int]) -> dict[str, float]:
        logits, state = backend.run_prefill_chunk(tokens, backend.init_state())
        step_state = backend.init_state()
        for token in tokens:
            step_logits, step_state = backend.step(token, step_state)
        found = {}
        for name, (expected, got) in {"logits": (step_logits, logits),
                                      **{k: (step_state[k], state[k]) for k in state}}.items():
            errors = OutputErrors()
            errors.add(len(tokens) - 1, expected, got)
            found[name] = errors.scaled[0]
        return found

    return gaps


# -- image models -----------------------------------------------------------------------------------
VISION_MODELS = {  # name -> (make_vision_checkpoint arguments, export options): tiny seeded Vision-RWKV models
    "plain": (dict(embed_dims=32, depth=2, patch_size=4, grid=4, num_classes=10), {}),  # 16 px, 4 x 4 patches
    # key_norm, layer scale and (the recipe's) post-norm, exported at 20 px: an odd 5 x 5 grid, pos_embed resized
    "scaled": (dict(embed_dims=32, depth=2, patch_size=4, grid=4, num_classes=12, key_norm=True, layer_scale=True),
               dict(image_size=20)),
    "backbone": (dict(embed_dims=24, depth=2, patch_size=4, grid=3, num_classes=0), dict(dynamic_batch=True)),
}


@pytest.fixture(scope="session")
def vision_ckpt(checkpoint_dir):
    """vision_ckpt(name) -> path of the VISION_MODELS checkpoint ``name``, an mmcls file with class names
    in its meta where it has a head."""
    import torch

    from rwkv_edge.model.synthetic import make_vision_checkpoint

    def get(name: str) -> Path:
        path = checkpoint_dir / f"vision-{name}.pth"
        if not path.exists():
            kwargs = VISION_MODELS[name][0]
            meta = {"CLASSES": [f"class {i}" for i in range(kwargs["num_classes"])]} if kwargs["num_classes"] else {}
            torch.save({"meta": meta, "state_dict": make_vision_checkpoint(**kwargs)}, path)
        return path

    return get


@pytest.fixture(scope="session")
def vision_export(vision_ckpt, tmp_path_factory):
    """vision_export(name, weights="fp32") -> ONNX export of the VISION_MODELS model ``name``, once per session
    (copy it before changing it)."""
    from rwkv_edge.export import OnnxOptions, export_onnx

    done: dict[tuple[str, str], Path] = {}

    def get(name: str, weights: str = "fp32") -> Path:
        if (name, weights) not in done:
            out = tmp_path_factory.mktemp(f"vision-onnx-{name}-{weights}")
            export_onnx(vision_ckpt(name), out, OnnxOptions(weights, **VISION_MODELS[name][1]), log=lambda _: None)
            done[name, weights] = out
        return done[name, weights]

    return get


@pytest.fixture(scope="session")
def vision_bundle(vision_export, tmp_path_factory):
    """vision_bundle(name, target="x86_64-host") -> TVM bundle of the fp32 export of ``name``, once per session."""
    from rwkv_edge.compile.tvm import TvmOptions, compile_tvm

    done: dict[tuple[str, str], Path] = {}

    def get(name: str, target: str = "x86_64-host") -> Path:
        if (name, target) not in done:
            out = tmp_path_factory.mktemp(f"vision-tvm-{name}-{target}")
            compile_tvm(vision_export(name), out, TvmOptions(target), log=lambda _: None)
            done[name, target] = out
        return done[name, target]

    return get
