"""The artifact carries its tokenizer's vocabulary (manifest ``tokenizer_file``): a World model's export
holds the World vocabulary, listed and hashed like any file; a byte-level model's holds none; the key
is a listed file or null, and manifests written before it existed still read."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from rwkv_edge.artifact import MANIFEST, open_artifact
from rwkv_edge.artifact.builder import vocabulary_file
from rwkv_edge.artifact.reader import read_tokenizer_file
from rwkv_edge.errors import ArtifactError
from rwkv_edge.model.synthetic import make_checkpoint, save_checkpoint

WORLD_VOCAB = "rwkv_vocab_v20230424.txt"


@pytest.fixture(scope="module")
def world_export(tmp_path_factory) -> Path:
    """An ONNX export of a tiny model with the World vocabulary's 65536 rows."""
    from rwkv_edge.export import OnnxOptions, export_onnx

    root = tmp_path_factory.mktemp("world")
    checkpoint = save_checkpoint(make_checkpoint("v7", n_layer=1, n_embd=64, vocab_size=65536), root / "world.pth")
    export_onnx(checkpoint, root / "onnx", OnnxOptions("fp32", prefill_chunk=0), log=lambda _: None)
    return root / "onnx"


def edit_manifest(directory: Path, edit) -> None:
    data = json.loads((directory / MANIFEST).read_text())
    edit(data)
    (directory / MANIFEST).write_text(json.dumps(data))


def test_a_world_export_carries_the_world_vocabulary(world_export):
    artifact = open_artifact(world_export)
    assert artifact.manifest.tokenizer == "world" and artifact.manifest.tokenizer_file == WORLD_VOCAB
    assert WORLD_VOCAB in artifact.manifest.files
    assert artifact.tokenizer_path().read_bytes() == vocabulary_file("world").read_bytes()
    assert read_tokenizer_file(world_export) == ("world", world_export / WORLD_VOCAB)


def test_a_byte_level_artifact_carries_none(onnx_export, tvm_bundle):
    for directory in (onnx_export("v7"), tvm_bundle("v7")):
        artifact = open_artifact(directory)
        assert artifact.manifest.tokenizer == "bytes" and artifact.manifest.tokenizer_file is None
        assert artifact.tokenizer_path() is None and read_tokenizer_file(directory) == ("bytes", None)
        assert json.loads((directory / MANIFEST).read_text())["tokenizer_file"] is None  # written, as null


def test_a_modified_vocabulary_is_refused(world_export, tmp_path):
    copy = Path(shutil.copytree(world_export, tmp_path / "copy"))
    with open(copy / WORLD_VOCAB, "r+b") as f:
        f.write(b"9")
    with pytest.raises(ArtifactError, match=f"{WORLD_VOCAB}: differs from the manifest"):
        read_tokenizer_file(copy)
    with pytest.raises(ArtifactError, match=f"{WORLD_VOCAB}: sha256 differs from the manifest"):
        open_artifact(copy)


@pytest.mark.parametrize("value,message", [
    ("../vocab.txt", "tokenizer_file '../vocab.txt' is not one of the listed files"),
    ("unlisted.txt", "tokenizer_file 'unlisted.txt' is not one of the listed files"),
    (["model.onnx"], "tokenizer_file has the wrong type"),
])
def test_the_key_is_a_listed_file_or_null(onnx_export, tmp_path, value, message):
    copy = Path(shutil.copytree(onnx_export("v7"), tmp_path / "copy"))
    edit_manifest(copy, lambda d: d.update(tokenizer_file=value))
    with pytest.raises(ArtifactError, match=message):
        open_artifact(copy)


def test_a_manifest_without_the_key_still_reads(onnx_export, tmp_path):
    copy = Path(shutil.copytree(onnx_export("v7"), tmp_path / "copy"))
    edit_manifest(copy, lambda d: d.pop("tokenizer_file"))
    assert open_artifact(copy).manifest.tokenizer_file is None
