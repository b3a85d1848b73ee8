"""What every artifact writer shares: output checks, clearing an earlier artifact, timed stages."""

from __future__ import annotations

import shutil
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from ..errors import ArtifactError
from ..manifest import MANIFEST, read_manifest, sha256_file
from ..model import ARCHITECTURES, RWKVModel, load_model, state_to_named
from ..model.tokenizer import TokenizerError, tokenizer_for_vocab

INITIAL_STATE = "initial_state.npz"
REPORTS = ("parity.json", "parity.png")


def load_source(checkpoint: Path, log: Callable[[str], None], dtype: torch.dtype = torch.float32,
                note: str = "") -> tuple[RWKVModel, str]:
    """Load the checkpoint an artifact is made from (a timed stage) and its sha256; log what it is."""
    with stage(log, "load checkpoint"):
        model = load_model(checkpoint, dtype=dtype)
        sha = sha256_file(checkpoint)
    log(f"  {ARCHITECTURES[model.version].label}: {model.config.n_layer} layers x {model.config.n_embd}, "
        f"vocab {model.config.vocab_size}{note}")
    return model, sha


def check_writable(out_dir: Path) -> None:
    """Create ``out_dir`` and make sure files can be written there, before any long work."""
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        tempfile.NamedTemporaryFile(dir=out_dir).close()
    except OSError as e:
        raise ArtifactError(f"cannot write to {out_dir}: {e.strerror}") from None


def clear_previous_artifact(out_dir: Path) -> None:
    """Remove an earlier artifact (its manifest first), so no mix of old and new files ever looks valid."""
    try:
        previous = list(read_manifest(out_dir).files)
    except ArtifactError:
        previous = []
    (out_dir / MANIFEST).unlink(missing_ok=True)
    for top in {Path(name).parts[0] for name in previous} | set(REPORTS):
        path = out_dir / top
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        else:
            path.unlink(missing_ok=True)


def move_into_place(tmp: Path, out_dir: Path) -> None:
    """Move every entry of ``tmp`` into ``out_dir``, replacing what is there."""
    for entry in sorted(tmp.iterdir()):
        target = out_dir / entry.name
        if target.is_dir() and not target.is_symlink():
            shutil.rmtree(target)
        else:
            target.unlink(missing_ok=True)
        shutil.move(entry, target)


def save_initial_state(model: RWKVModel, path: Path) -> bool:
    """Write the model's initial state if it is not the spec's fills (v5/v6 ``time_state``)."""
    state = {k: v.numpy() for k, v in state_to_named(model.init_state()).items()}
    if all(np.all(state[t.input_name] == t.fill) for t in model.state_spec()):
        return False
    with open(path, "wb") as f:
        np.savez(f, **state)
    return True


def tokenizer_name(model: RWKVModel) -> str:
    try:
        return tokenizer_for_vocab(model.config.vocab_size)
    except TokenizerError:
        return "unknown"


def artifact_files(directory: Path) -> list[str]:
    """Every file under ``directory``, as paths relative to it (an .mlpackage is a folder)."""
    return sorted(str(p.relative_to(directory)) for p in directory.rglob("*") if p.is_file())


class stage:
    """Log a stage's name, then its wall time when it ends."""

    def __init__(self, log: Callable[[str], None], name: str) -> None:
        self.log, self.name = log, name

    def __enter__(self) -> None:
        self.start = time.perf_counter()
        self.log(f"{self.name} ...")

    def __exit__(self, *exc) -> None:
        if exc[0] is None:
            self.log(f"  {self.name}: {time.perf_counter() - self.start:.1f} s")
