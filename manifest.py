"""manifest.json: what an artifact directory holds, where it came from, and its step contract."""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .atomic import atomic_path
from .errors import ArtifactError
from .model.state import StateTensor

MANIFEST = "manifest.json"


@dataclass
class Manifest:
    kind: str  # "onnx", "coreml"
    contract_version: str
    architecture: str
    config: dict[str, Any]
    tokenizer: str
    precision: str
    batch: int | str  # 1, or "dynamic"
    state: list[StateTensor]  # in graph input order; shapes without the batch axis
    source: dict[str, str]  # checkpoint path and sha256
    graphs: dict[str, Any]  # role ("step", "prefill") -> {"file": ..., ...}
    tools: dict[str, str]
    files: dict[str, dict[str, Any]] = field(default_factory=dict)  # name -> sha256, bytes
    initial_state: str | None = None  # .npz of the state before the first token, where not just the fills
    target: dict[str, Any] | None = None  # compiled artifacts: the resolved target settings

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["state"] = [{"input": t.input_name, "output": t.output_name, **asdict(t)} for t in self.state]
        return data

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> "Manifest":
        data = dict(data)
        data["state"] = [StateTensor(s["layer"], s["role"], tuple(s["shape"]), s["fill"]) for s in data["state"]]
        return cls(**data)


def initial_state(manifest: Manifest, directory: Path) -> dict[str, np.ndarray]:
    """The state before the first token: the fill values, or the arrays the artifact ships."""
    if manifest.initial_state is None:
        return {t.input_name: np.full(t.shape, t.fill, dtype=np.float32) for t in manifest.state}
    with np.load(directory / manifest.initial_state) as saved:
        return {t.input_name: saved[t.input_name].astype(np.float32) for t in manifest.state}


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def write_manifest(manifest: Manifest, directory: Path) -> Path:
    """Record the size and sha256 of every file, then write manifest.json atomically."""
    for name in manifest.files:
        path = directory / name
        manifest.files[name] = {"sha256": sha256_file(path), "bytes": path.stat().st_size}
    with atomic_path(directory / MANIFEST) as tmp:
        tmp.write_text(json.dumps(manifest.to_json(), indent=2) + "\n")
    return directory / MANIFEST


def read_manifest(directory: str | Path, kind: str | None = None) -> Manifest:
    """The manifest of an artifact directory; ArtifactError if there is none or its files are missing."""
    directory = Path(directory)
    path = directory / MANIFEST
    if not path.is_file():
        what = "not a directory" if not directory.is_dir() else f"no {MANIFEST} (not an rwkv-edge artifact)"
        raise ArtifactError(f"{directory}: {what}; create one with `rwkv-edge export onnx` or `rwkv-edge compile`")
    try:
        manifest = Manifest.from_json(json.loads(path.read_text()))
    except (json.JSONDecodeError, TypeError, KeyError) as e:
        raise ArtifactError(f"{path}: unreadable manifest ({e})") from None
    if kind is not None and manifest.kind != kind:
        raise ArtifactError(f"{directory}: holds a {manifest.kind} artifact, not {kind}")
    missing = [name for name in manifest.files if not (directory / name).is_file()]
    if missing:
        raise ArtifactError(f"{directory}: files listed in the manifest are missing: {', '.join(missing)}")
    return manifest


def check_hashes(manifest: Manifest, directory: Path) -> None:
    """ArtifactError if any file differs from what the manifest recorded."""
    for name, meta in manifest.files.items():
        if sha256_file(directory / name) != meta["sha256"]:
            raise ArtifactError(f"{directory / name}: sha256 differs from the manifest (modified or partly written)")
