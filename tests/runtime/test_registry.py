"""The backend registry: each entry is the whole of a backend (its kind, runners, options, bench row and
verify checks), the manifest's kinds and the registry agree, and the image runners refuse an option
that is not theirs with one line naming who takes it."""

from __future__ import annotations

import pytest

from rwkv_edge.artifact import open_artifact
from rwkv_edge.artifact.manifest import KINDS
from rwkv_edge.errors import ArtifactError, OptionError
from rwkv_edge.runtime.registry import BACKENDS, backend_entry, entry_of_kind, resolve, takers


def test_every_manifest_kind_has_its_own_backend_first():
    kinds = [e.kind for e in BACKENDS.values() if e.kind is not None]
    assert set(kinds) == set(KINDS)
    assert all(entry_of_kind(kind).kind == kind for kind in KINDS)
    assert entry_of_kind("tvm").name == "tvm" and BACKENDS["native"].kind == "tvm"  # native runs tvm bundles when named


@pytest.mark.parametrize("name", list(BACKENDS))
def test_every_reference_resolves_to_its_role(name):
    from rwkv_edge.bench.rows import BenchRow
    from rwkv_edge.verify.checks import KindChecks

    entry = BACKENDS[name]
    runner = entry.step_runner()
    assert isinstance(runner, type) and {"step", "prefill", "init_state", "close"} <= set(dir(runner))
    if entry.image is not None:
        assert {"run", "close"} <= set(dir(resolve(entry.image)))
    if entry.bench is not None:
        assert issubclass(resolve(entry.bench), BenchRow) and resolve(entry.bench).name == name
    if entry.verify is not None:
        assert issubclass(resolve(entry.verify), KindChecks)


def test_an_unknown_backend_names_the_choices():
    with pytest.raises(OptionError, match="unknown backend 'tensorrt'; choose one of torch, onnxruntime, coreml, tvm"):
        backend_entry("tensorrt")
    assert [e.name for e in takers("threads")] == ["torch", "onnxruntime", "native"]


@pytest.mark.parametrize("options,message", [
    ({"executor": "mil"}, "an executor applies to Core ML artifacts, this is onnx"),
    ({"remote": "unused"}, "an RPC device applies to TVM artifacts, this is onnx"),
    ({"executor": "mil", "threads": 1}, "an executor applies to Core ML artifacts, this is onnx"),
])
def test_an_image_runner_refuses_another_kind_s_option(options, message, vision_export):
    from rwkv_edge.runtime.vision import open_vision

    with pytest.raises(ArtifactError, match=message):
        open_vision(vision_export("plain"), **options)


def test_a_language_artifact_is_not_an_image_model(onnx_export):
    from rwkv_edge.runtime.vision import open_vision

    with pytest.raises(ArtifactError, match="holds a v7 language model, not an image model"):
        open_vision(open_artifact(onnx_export("v7")))
