"""The artifact writer: it deletes only what it can prove it wrote, never loses the previous build,
refuses directories that are not its own, and cleans up after killed runs. Every case runs in a
temporary tree; "outside" files live beside the output directory, where a bad manifest would point."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest

from rwkv_edge.artifact import MANIFEST, ArtifactWriter, Manifest, open_artifact, read_manifest
from rwkv_edge.artifact import writer as writer_module
from rwkv_edge.contract import CONTRACT_VERSION, StateTensor
from rwkv_edge.errors import ArtifactError


def quiet(_: str) -> None:
    pass


def manifest(**changes) -> Manifest:
    """A valid manifest of a one-layer ONNX artifact (the writer never looks inside the files)."""
    fields = dict(kind="onnx", contract_version=CONTRACT_VERSION, architecture="v7",
                  config={"vocab_size": 16, "n_layer": 1, "n_embd": 4}, tokenizer="bytes", weights="fp32", compute="fp32", group_size=0, batch=1,
                  state=[StateTensor(0, "att_shift", (4,))], source={"checkpoint": "/x.pth", "sha256": "0" * 64},
                  graphs={"step": {"file": "model.onnx"}}, tools={}, reference="reference.npz")
    return Manifest(**{**fields, **changes})


def build(out: Path, files: dict[str, bytes], **changes) -> str:
    """Write an artifact holding ``files`` (and a reference.npz) to ``out``; returns its manifest sha256."""
    with ArtifactWriter(out, quiet) as writer:
        for name, data in {"reference.npz": b"r", **files}.items():
            (writer.dir / name).parent.mkdir(parents=True, exist_ok=True)
            (writer.dir / name).write_bytes(data)
        return writer.commit(manifest(**changes))


def tamper(out: Path, edit) -> None:
    data = json.loads((out / MANIFEST).read_text())
    edit(data)
    (out / MANIFEST).write_text(json.dumps(data))


@pytest.fixture
def tree(tmp_path, monkeypatch) -> Path:
    """tmp_path/work: the working directory; tmp_path/work/important.txt and tmp_path/keep/ stand for user data."""
    work = tmp_path / "work"
    work.mkdir()
    (work / "important.txt").write_text("user data")
    (tmp_path / "keep").mkdir()
    (tmp_path / "keep" / "notes.txt").write_text("more user data")
    monkeypatch.chdir(work)
    return tmp_path


def user_data_intact(tree: Path) -> bool:
    return ((tree / "work" / "important.txt").read_text() == "user data"
            and (tree / "keep" / "notes.txt").read_text() == "more user data")


def siblings(out: Path) -> list[str]:
    return sorted(p.name for p in out.parent.iterdir() if p.name.startswith(f".{out.name}"))


def test_a_rebuild_replaces_the_artifact_and_its_reports_and_leaves_nothing_else(tree):
    out = tree / "work" / "out"
    build(out, {"model.onnx": b"old", "extra.bin": b"old"})
    (out / "parity.json").write_text("{}")
    sha = build(out, {"model.onnx": b"new"})
    assert sorted(p.name for p in out.iterdir()) == [MANIFEST, "model.onnx", "reference.npz"]
    assert open_artifact(out, expect_sha256=sha).manifest.files.keys() == {"model.onnx", "reference.npz"}
    assert (out / "model.onnx").read_bytes() == b"new" and siblings(out) == []
    assert oct(out.stat().st_mode & 0o777) == oct(0o777 & ~writer_module.current_umask())
    assert user_data_intact(tree)


@pytest.mark.parametrize("entry", ["../important.txt", "../../keep/notes.txt", "/etc/passwd", "..", "a/../../x",
                                   "C:\\x", ""])
def test_a_manifest_naming_files_outside_never_steers_a_deletion(tree, entry):
    out = tree / "work" / "out"
    build(out, {"model.onnx": b"old"})
    tamper(out, lambda data: data["files"].update({entry: {"sha256": "0" * 64, "bytes": 1}}))
    with pytest.raises(ArtifactError, match="cannot read, so it will not replace it"):
        build(out, {"model.onnx": b"new"})
    assert user_data_intact(tree) and (out / "model.onnx").read_bytes() == b"old"


@pytest.mark.parametrize("link", ["folder", "file"])
def test_a_symlink_in_the_artifact_is_never_followed(tree, link):
    out = tree / "work" / "out"
    build(out, {"model.onnx": b"old", "sub/w.bin": b"old"})
    if link == "folder":  # the listed "sub/w.bin" now resolves to keep/w.bin
        shutil.rmtree(out / "sub")
        (out / "sub").symlink_to(tree / "keep")
        (tree / "keep" / "w.bin").write_text("user data")
    else:
        (out / "model.onnx").unlink()
        (out / "model.onnx").symlink_to(tree / "work" / "important.txt")
    with pytest.raises(ArtifactError, match="holds files that are not part of its rwkv-edge artifact"):
        build(out, {"model.onnx": b"new"})
    assert user_data_intact(tree) and (link == "file" or (tree / "keep" / "w.bin").read_text() == "user data")


def test_a_directory_that_is_no_artifact_is_refused(tree):
    with pytest.raises(ArtifactError, match="not empty and holds no rwkv-edge artifact.*new or empty directory"):
        build(tree / "keep", {"model.onnx": b"new"})
    assert user_data_intact(tree) and sorted(p.name for p in (tree / "keep").iterdir()) == ["notes.txt"]


@pytest.mark.parametrize("mine", ["README", "data/table.csv", "sub/notes.txt", ".export-ab12cd34/x", "link"])
def test_an_artifact_holding_a_users_file_is_refused_and_the_file_named(tree, mine):
    """A folder named as rwkv-edge 0.1 named its temporary folders (.export-XXXXXXXX) is the user's too."""
    out = tree / "work" / "out"
    build(out, {"model.onnx": b"old", "sub/w.bin": b"old"})
    if mine == "link":
        (out / "link").symlink_to(tree / "keep")
    else:
        (out / mine).parent.mkdir(exist_ok=True)
        (out / mine).write_text("mine")
    shown = mine.split("/")[0] if mine.startswith(("data", ".export")) else mine
    with pytest.raises(ArtifactError, match=rf"\({shown}\): move them"):
        build(out, {"model.onnx": b"new"})
    assert (out / "model.onnx").read_bytes() == b"old" and user_data_intact(tree)
    assert mine == "link" or (out / mine).read_text() == "mine"


@pytest.mark.parametrize("bad", ["not json", b"\xff\xfe", json.dumps("a string"), "[" * 100_000 + "]" * 100_000,
                                 json.dumps({"files": []})])
def test_an_unreadable_manifest_is_not_replaced(tree, bad):
    out = tree / "work" / "out"
    build(out, {"model.onnx": b"old"})
    (out / MANIFEST).write_bytes(bad.encode() if isinstance(bad, str) else bad)
    with pytest.raises(ArtifactError, match="cannot read, so it will not replace it"):
        build(out, {"model.onnx": b"new"})
    assert (out / "model.onnx").read_bytes() == b"old"


def test_an_artifact_of_an_older_rwkv_edge_is_replaced(tree):
    out = tree / "work" / "out"
    build(out, {"model.onnx": b"old"})
    tamper(out, lambda data: data.pop("schema"))
    build(out, {"model.onnx": b"new"})
    assert sorted(p.name for p in out.iterdir()) == [MANIFEST, "model.onnx", "reference.npz"]


def test_a_failed_build_keeps_the_previous_artifact_and_no_temporary_files(tree):
    out = tree / "work" / "out"
    sha = build(out, {"model.onnx": b"old"})
    for error in (RuntimeError("boom"), KeyboardInterrupt()):
        with pytest.raises(type(error)), ArtifactWriter(out, quiet) as writer:
            (writer.dir / "model.onnx").write_bytes(b"half")
            (writer.scratch / "x").write_bytes(b"scratch")
            raise error
        assert open_artifact(out, expect_sha256=sha) and siblings(out) == []


def test_an_os_error_while_building_is_one_artifact_error(tree):
    out = tree / "work" / "out"
    build(out, {"model.onnx": b"old"})
    with pytest.raises(ArtifactError, match="No space left on device; the previous one .* is unchanged"):
        with ArtifactWriter(out, quiet):
            raise OSError(28, "No space left on device")
    assert (out / "model.onnx").read_bytes() == b"old"


def test_a_first_build_that_fails_leaves_no_directory(tree):
    out = tree / "work" / "new"
    with pytest.raises(RuntimeError), ArtifactWriter(out, quiet):
        raise RuntimeError("boom")
    assert not out.exists() and siblings(out) == []


def test_a_second_writer_to_the_same_directory_fails_at_once(tree):
    out = tree / "work" / "out"
    with ArtifactWriter(out, quiet) as first:
        with pytest.raises(ArtifactError, match="another rwkv-edge run is using .* \\(writing or verifying it\\)"):
            ArtifactWriter(out, quiet).__enter__()
        (first.dir / "model.onnx").write_bytes(b"first")
        (first.dir / "reference.npz").write_bytes(b"r")
        first.commit(manifest())
    build(out, {"model.onnx": b"second"})  # the lock is gone with the first writer
    assert (out / "model.onnx").read_bytes() == b"second"


def test_files_appearing_during_a_build_stop_the_swap(tree):
    out = tree / "work" / "out"
    build(out, {"model.onnx": b"old"})
    with pytest.raises(ArtifactError, match="not part of its rwkv-edge artifact"), ArtifactWriter(out, quiet) as writer:
        (writer.dir / "model.onnx").write_bytes(b"new")
        (writer.dir / "reference.npz").write_bytes(b"r")
        (out / "late.txt").write_text("a user's file, saved meanwhile")
        writer.commit(manifest())
    assert (out / "model.onnx").read_bytes() == b"old" and (out / "late.txt").exists()


def test_temporary_directories_of_killed_runs_are_removed_by_the_next(tree):
    out = tree / "work" / "out"
    build(out, {"model.onnx": b"old"})
    scratch = tree / "work" / f".out{writer_module.TEMP_INFIX}dead0001"  # a build killed mid-way
    scratch.mkdir()
    (scratch / writer_module.MARKER).write_text(writer_module._marker_text(scratch))
    (scratch / "model.onnx").write_bytes(b"half")
    swapped = tree / "work" / f".out{writer_module.TEMP_INFIX}dead0002"  # killed after the swap
    build(swapped, {"model.onnx": b"older"})
    unknown = tree / "work" / f".out{writer_module.TEMP_INFIX}dead0003"  # no marker, no manifest: not provably ours
    unknown.mkdir()
    (unknown / "mine.txt").write_text("?")
    (tree / "work" / f".out{writer_module.TEMP_INFIX}dead0004").mkdir()  # killed between mkdir and marker
    build(out, {"model.onnx": b"new"})
    assert siblings(out) == [unknown.name] and (unknown / "mine.txt").exists()


@pytest.mark.parametrize("name, marker", [
    (".keep.rwkv-edge-notes", ""),  # the writer's prefix and a marker file (the review's case)
    (".keep.rwkv-edge-notes", "the writer's"),  # ... even one that names the folder
    (".keep.rwkv-edge-dead00051", "the writer's"),  # nine hex digits
    (".keep.rwkv-edge-dead0005", ""),  # its exact name, but an empty marker
    (".keep.rwkv-edge-dead0005", "rwkv-edge temporary directory .keep.rwkv-edge-dead0006\n"),  # another folder's
])
def test_a_users_folder_is_never_taken_for_a_temporary_directory(tree, name, marker):
    """Only a folder with the writer's exact name holding the marker that names it is removed: a user's
    folder that merely looks like one (a marker file alone, the prefix alone) is left whole."""
    folder = tree / "work" / name
    (folder / "sub").mkdir(parents=True)
    (folder / writer_module.MARKER).write_text(writer_module._marker_text(folder) if marker == "the writer's" else marker)
    (folder / "precious.txt").write_text("mine")
    (folder / "sub" / "b.txt").write_text("mine too")
    build(tree / "work" / "keep", {"model.onnx": b"new"})
    build(tree / "work" / "keep", {"model.onnx": b"newer"})  # a run that finds an artifact there too
    assert (folder / "precious.txt").read_text() == "mine" and (folder / "sub" / "b.txt").read_text() == "mine too"


def test_a_symlink_named_as_a_temporary_directory_is_left_alone(tree):
    link = tree / "work" / f".out{writer_module.TEMP_INFIX}dead0007"
    (tree / "keep" / writer_module.MARKER).write_text(writer_module._marker_text(link))
    link.symlink_to(tree / "keep")
    build(tree / "work" / "out", {"model.onnx": b"new"})
    assert link.is_symlink() and user_data_intact(tree)


def test_without_an_atomic_exchange_two_renames_still_swap(tree, monkeypatch):
    monkeypatch.setattr(writer_module, "_rename_exchange", lambda a, b: False)
    out = tree / "work" / "out"
    build(out, {"model.onnx": b"old"})
    sha = build(out, {"model.onnx": b"new"})
    assert open_artifact(out, expect_sha256=sha) and (out / "model.onnx").read_bytes() == b"new"
    assert siblings(out) == []


@pytest.mark.parametrize("out", [".", "..", "important.txt"])
def test_outputs_that_cannot_be_an_artifact(tree, out):
    with pytest.raises(ArtifactError, match="current directory|is a file"):
        build(Path(out), {"model.onnx": b"x"})
    assert user_data_intact(tree)


def test_a_build_may_not_write_over_what_it_reads(tree):
    out = tree / "work" / "out"
    build(out, {"model.onnx": b"old"})
    with pytest.raises(ArtifactError, match="which this build reads: write the artifact to another directory"):
        ArtifactWriter(out, quiet, reads=[out / "model.onnx"]).__enter__()


def test_the_output_may_be_a_symlink_to_a_directory(tree):
    real = tree / "work" / "real"
    build(real, {"model.onnx": b"old"})
    link = tree / "work" / "link"
    link.symlink_to(real)
    build(link, {"model.onnx": b"new"})
    assert link.is_symlink() and (real / "model.onnx").read_bytes() == b"new"


def test_the_manifest_written_is_what_readers_accept(tree):
    out = tree / "work" / "out"
    build(out, {"model.onnx": b"x", "sub/part.bin": b"y"})
    assert read_manifest(out).files.keys() == {"model.onnx", "sub/part.bin", "reference.npz"}
    with pytest.raises(ArtifactError):  # an invalid manifest never replaces anything
        build(out, {"model.onnx": b"z"}, graphs={"step": {"file": "absent.onnx"}})
    assert (out / "model.onnx").read_bytes() == b"x"
    assert os.listdir(out.parent).count("out") == 1 and siblings(out) == []
