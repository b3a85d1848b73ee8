"""``rwkv-edge trace``: run a backend over tokens from the initial state, or an image model over a batch of
images, and save what it computed."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from ..atomic import atomic_path
from .backend import Backend, NamedState, check_token_ids

if TYPE_CHECKING:  # classify imports Pillow, which the step backends do not need
    from .classify import ImageModel


@dataclass
class Trace:
    tokens: np.ndarray  # (T,) int64
    logits: np.ndarray  # (T, V) fp32, the logits after each token
    state: NamedState  # final state under the output names, state_out.{layer}.{role}


def run_trace(backend: Backend, tokens: list[int]) -> Trace:
    """Step through ``tokens`` one at a time, feeding back the backend's own state."""
    check_token_ids(tokens, backend.vocab_size)
    state = backend.init_state()
    logits = []
    for token in tokens:
        out, state = backend.step(token, state)
        logits.append(out)
    final = {name.replace("state.", "state_out.", 1): value for name, value in state.items()}
    return Trace(np.asarray(tokens, dtype=np.int64), np.stack(logits).astype(np.float32), final)


def save_trace(trace: Trace, path: str | Path) -> Path:
    """Write ``tokens``, ``logits`` and every ``state_out.*`` array to an .npz file, atomically."""
    return save_arrays({"tokens": trace.tokens, "logits": trace.logits, **trace.state}, path)


def run_image_trace(model: ImageModel, images: np.ndarray) -> dict[str, np.ndarray]:
    """``{"logits": (N, classes)}`` of a classifier, ``{"features": (N, C, h, w)}`` of a backbone, for
    images (N, 3, H, W) float32 already normalised."""
    out = np.asarray(model.run(images), dtype=np.float32)
    return {"logits" if out.ndim == 2 else "features": out}


def save_arrays(arrays: dict[str, np.ndarray], path: str | Path) -> Path:
    """Write named arrays to an .npz file, atomically."""
    path = Path(path)
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as f:
            np.savez(f, **arrays)
    return path
