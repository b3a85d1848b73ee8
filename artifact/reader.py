"""Opening an artifact directory: the manifest validated, every file hashed before anything loads it.

The trust model (docs/artifacts.md): a manifest never steers a load outside its directory, every
file it lists is a regular file inside the directory (no symlink anywhere on its path) whose size
and sha256 match before any backend opens it, and nothing unlisted is opened. A TVM bundle is
native code: running one means trusting whoever built it, so a user can pin the manifest's sha256
printed at build time (``expect_sha256``); a tampered and rehashed bundle then fails before it loads.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import ArtifactError
from .files import read_npz
from .manifest import MANIFEST, MAX_MANIFEST_BYTES, Manifest, is_listed, parse_files, parse_manifest, sha256_bytes, sha256_file
from .reference import Reference, VisionReference, load_reference, load_vision_reference

ANNOUNCE_HASHING_BYTES = 256 << 20  # say that hashing runs when the files are at least this large


@dataclass(frozen=True)
class Artifact:
    """An artifact directory whose manifest was validated and whose files were hashed once, at open."""

    directory: Path
    manifest: Manifest
    manifest_sha256: str  # of manifest.json's bytes: what `verify --expect-sha256` pins

    def path(self, name: str) -> Path:
        """A listed file, or a folder of listed files (a .mlpackage); ArtifactError for anything else."""
        if not is_listed(name, self.manifest.files):
            raise ArtifactError(f"{self.directory}: {name!r} is not one of the artifact's listed files")
        return self.directory / name

    def graph(self, role: str = "step") -> Path:
        return self.path(self.manifest.graphs[role].file)

    def initial_state(self) -> dict[str, np.ndarray]:
        """The state before the first token: the fills, or the arrays the artifact ships (checked)."""
        spec = self.manifest.state
        if self.manifest.initial_state is None:
            return {t.input_name: np.full(t.shape, t.fill, dtype=np.float32) for t in spec}
        path = self.path(self.manifest.initial_state)
        arrays = read_npz(path)
        for t in spec:
            value = arrays.get(t.input_name)
            if value is None:
                raise ArtifactError(f"{path}: holds no {t.input_name}")
            if value.shape != t.shape or value.dtype.kind != "f":
                raise ArtifactError(f"{path}: {t.input_name} is {value.dtype} {value.shape}, expected float {t.shape}")
            if not np.isfinite(value).all():
                raise ArtifactError(f"{path}: {t.input_name} holds non-finite values")
        return {t.input_name: arrays[t.input_name].astype(np.float32) for t in spec}

    def tokenizer_path(self) -> Path | None:
        """The tokenizer's vocabulary file the artifact carries (``tokenizer_file``), or None."""
        name = self.manifest.tokenizer_file
        return None if name is None else self.path(name)

    def reference(self) -> Reference:
        """The PyTorch model's rollout recorded at build time (checked)."""
        return load_reference(self.path(self.manifest.reference), self.manifest.state, self.manifest.vocab_size)

    def vision_reference(self) -> VisionReference:
        """An image model's reference images and the PyTorch model's outputs on them (checked)."""
        return load_vision_reference(self.path(self.manifest.reference), self.manifest.config)


def read_manifest(directory: str | Path) -> Manifest:
    """The validated manifest of ``directory``; no file is hashed (``open_artifact`` does that)."""
    path, data = _manifest_bytes(Path(directory))
    return parse_manifest(data, path)


def read_files(directory: str | Path) -> dict[str, dict]:
    """The validated ``files`` of ``directory``'s manifest, of any rwkv-edge version (for the writer)."""
    path, data = _manifest_bytes(Path(directory))
    return parse_files(data, path)


def read_tokenizer_file(directory: str | Path) -> tuple[str, Path | None]:
    """(the manifest's tokenizer, the vocabulary file it carries or None) of the artifact in ``directory``;
    that one file is checked against the manifest (size and sha256), no other is hashed."""
    directory = Path(directory)
    manifest = read_manifest(directory)
    name = manifest.tokenizer_file
    if name is None:
        return manifest.tokenizer, None
    meta = manifest.files[name]
    if _regular_file_inside(directory, name).st_size != meta["bytes"] or \
            sha256_file(directory / name, follow_symlinks=False) != meta["sha256"]:
        raise ArtifactError(f"{directory / name}: differs from the manifest (modified or partly written)")
    return manifest.tokenizer, directory / name


def _manifest_bytes(directory: Path) -> tuple[Path, bytes]:
    path = directory / MANIFEST
    if not directory.is_dir():
        raise ArtifactError(f"{directory}: not a directory; create an artifact with `rwkv-edge export onnx` or "
                            "`rwkv-edge compile`")
    try:
        info = os.lstat(path)
    except FileNotFoundError:
        raise ArtifactError(f"{directory}: no {MANIFEST} (not an rwkv-edge artifact); create one with "
                            "`rwkv-edge export onnx` or `rwkv-edge compile`") from None
    if not stat.S_ISREG(info.st_mode):
        raise ArtifactError(f"{path}: not a regular file")
    if info.st_size > MAX_MANIFEST_BYTES:
        raise ArtifactError(f"{path}: {info.st_size} bytes, more than a manifest can hold")
    return path, _read(path, MAX_MANIFEST_BYTES + 1)


def open_artifact(directory: str | Path, kind: str | None = None, expect_sha256: str | None = None,
                  log: Callable[[str], None] | None = None) -> Artifact:
    """Validate ``directory``'s manifest (and its sha256 against ``expect_sha256``), then check that
    every listed file is a regular file inside the directory with the recorded size and sha256."""
    directory = Path(directory)
    path, data = _manifest_bytes(directory)
    manifest_sha = sha256_bytes(data)
    if expect_sha256 is not None and manifest_sha != expect_sha256.lower():
        raise ArtifactError(f"{directory / MANIFEST}: sha256 {manifest_sha}, not the expected {expect_sha256.lower()}: "
                            "this is not the artifact you pinned (rebuilt or modified since)")
    manifest = parse_manifest(data, path)
    if kind is not None and manifest.kind != kind:
        raise ArtifactError(f"{directory}: holds a {manifest.kind} artifact, not {kind}")
    for name, meta in manifest.files.items():  # sizes first: a truncated or missing file fails at once
        size = _regular_file_inside(directory, name).st_size
        if size != meta["bytes"]:
            raise ArtifactError(f"{directory / name}: {size} bytes, the manifest says {meta['bytes']} "
                                "(modified or partly written)")
    total = sum(meta["bytes"] for meta in manifest.files.values())
    if log is not None and total >= ANNOUNCE_HASHING_BYTES:
        log(f"checking the sha256 of {len(manifest.files)} files ({total / 1e6:,.0f} MB)")
    for name, meta in manifest.files.items():
        if sha256_file(directory / name, follow_symlinks=False) != meta["sha256"]:
            raise ArtifactError(f"{directory / name}: sha256 differs from the manifest (modified or partly written)")
    return Artifact(directory, manifest, manifest_sha)


def _regular_file_inside(directory: Path, name: str) -> os.stat_result:
    """lstat of a listed file, after checking that no component of its path is a symlink."""
    current = directory
    parts = name.split("/")
    for i, part in enumerate(parts):
        current = current / part
        try:
            info = os.lstat(current)
        except FileNotFoundError:
            raise ArtifactError(f"{directory}: {name}, listed in the manifest, is missing") from None
        last = i == len(parts) - 1
        if stat.S_ISLNK(info.st_mode):
            raise ArtifactError(f"{current}: a symbolic link; artifacts hold regular files only")
        if last and not stat.S_ISREG(info.st_mode) or not last and not stat.S_ISDIR(info.st_mode):
            raise ArtifactError(f"{current}: not a regular {'file' if last else 'directory'}")
    return info


def _read(path: Path, limit: int) -> bytes:
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))
    with os.fdopen(fd, "rb") as f:
        return f.read(limit)
