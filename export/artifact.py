"""What every artifact builder shares: the source checkpoint, its initial state, timed stages."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from ..artifact import MANIFEST, Manifest
from ..model import ARCHITECTURES, RWKVModel, load_checkpoint, state_to_named
from ..model.tokenizer import TokenizerError, tokenizer_for_vocab

INITIAL_STATE = "initial_state.npz"


def load_source(checkpoint: Path, log: Callable[[str], None], dtype: torch.dtype = torch.float32,
                note: str = "") -> tuple[RWKVModel, str]:
    """Load the checkpoint an artifact is made from (a timed stage) and its sha256; log what it is."""
    with stage(log, "load checkpoint"):
        model, sha = load_checkpoint(checkpoint, dtype=dtype)
    log(f"  {ARCHITECTURES[model.version].label}: {model.config.n_layer} layers x {model.config.n_embd}, "
        f"vocab {model.config.vocab_size}{note}")
    return model, sha


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


def report_commit(log: Callable[[str], None], out_dir: Path, manifest: Manifest, manifest_sha256: str) -> None:
    """The last lines of a build: what it wrote where, and the sha256 that pins exactly this artifact."""
    entries = list(dict.fromkeys(name.split("/")[0] for name in manifest.files))
    log(f"wrote {', '.join(entries)} and {MANIFEST} to {out_dir}")
    log(f"manifest sha256 {manifest_sha256} (pin it: rwkv-edge verify {out_dir} --expect-sha256 {manifest_sha256})")


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
