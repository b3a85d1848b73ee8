"""``rwkv-edge trace``: run a backend over tokens from the initial state and save what it computed."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..atomic import atomic_path
from .backend import Backend, NamedState, check_token_ids


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
    path = Path(path)
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as f:
            np.savez(f, tokens=trace.tokens, logits=trace.logits, **trace.state)
    return path
