"""Backends run the step contract on named numpy arrays: token -> logits, state.* -> state_out.*."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Protocol

import numpy as np

from ..errors import StateError, TokenError
from ..contract import StateTensor

NamedState = dict[str, np.ndarray]  # contract input names ("state.3.wkv") -> fp32 arrays


def check_token_ids(tokens: list[int], vocab_size: int) -> None:
    """Raise TokenError before an id that is not an integer in [0, vocab_size) reaches a backend
    (compiled ones read out of bounds); at least one id."""
    if isinstance(tokens, (str, bytes)) or not hasattr(tokens, "__len__") or len(tokens) == 0:
        raise TokenError(f"expected a non-empty list of token ids, got {tokens!r:.60}")
    for token in tokens:
        if isinstance(token, bool) or not isinstance(token, (int, np.integer)):
            raise TokenError(f"token id {token!r:.40} is not an integer")
        if not 0 <= token < vocab_size:
            raise TokenError(f"token id {token} is outside the vocabulary [0, {vocab_size})")


def check_named_state(state: NamedState, spec: list[StateTensor]) -> None:
    """Raise StateError naming the first state tensor that is missing, unexpected, mis-shaped or not
    numeric (shapes without the batch axis)."""
    if not isinstance(state, Mapping):
        raise StateError(f"the state must be a dict of contract names to arrays, got {type(state).__name__}")
    unexpected = sorted(set(state) - {t.input_name for t in spec}, key=str)
    if unexpected:
        raise StateError(f"unexpected state tensor {unexpected[0]!r}; expected {spec[0].input_name}, ...")
    for t in spec:
        value = state.get(t.input_name)
        if value is None:
            raise StateError(f"state tensor {t.input_name} is missing")
        dtype = getattr(value, "dtype", None)
        if dtype is None:
            try:
                dtype = np.asarray(value).dtype
            except ValueError:  # a ragged nesting of lists
                dtype = np.dtype(object)
        if np.dtype(dtype).kind not in "fiu":
            raise StateError(f"state tensor {t.input_name} holds {dtype} values, expected float32")
        if tuple(np.shape(value)) != t.shape:
            raise StateError(f"state tensor {t.input_name} has shape {tuple(np.shape(value))}, expected {t.shape}")


def prefill_in_chunks(backend, tokens: list[int], state: NamedState) -> tuple[np.ndarray, NamedState]:
    """Whole chunks through ``backend.run_prefill_chunk``, the remainder (all of it where ``chunk``
    is 0) through ``backend.step``: (logits (V,) after the last token, state)."""
    check_token_ids(tokens, backend.vocab_size)
    logits = None
    n_chunks = len(tokens) // backend.chunk if backend.chunk else 0
    for i in range(n_chunks):
        logits, state = backend.run_prefill_chunk(tokens[i * backend.chunk:(i + 1) * backend.chunk], state)
        if logits.ndim == 2:  # a prefill graph that returns all positions: (T, V)
            logits = logits[-1]
    for token in tokens[n_chunks * backend.chunk:]:
        logits, state = backend.step(token, state)
    return logits, state


class Backend(Protocol):
    """One compiled or eager model behind the step contract. Every backend implements all of it:
    ``step`` and ``prefill`` are pure (the caller's state is never modified, and a returned state
    never shares memory with one passed in), and both refuse bad token ids (TokenError) and states
    (StateError) before anything runs."""

    name: str
    runs_on: str  # what computes it, where: "onnxruntime 1.32 CPUExecutionProvider, on this machine"
    vocab_size: int  # the range of token ids, [0, vocab_size), as the graph itself says
    chunk: int  # tokens per call of ``run_prefill_chunk``; 0 where there is no prefill graph

    def state_spec(self) -> list[StateTensor]: ...

    def init_state(self) -> NamedState:
        """The state before the first token (a fresh copy)."""
        ...

    def step(self, token: int, state: NamedState) -> tuple[np.ndarray, NamedState]:
        """(token, state) -> (logits (V,) fp32, next state under the input names)."""
        ...

    def prefill(self, tokens: list[int], state: NamedState) -> tuple[np.ndarray, NamedState]:
        """Feed several tokens; return the logits after the last one and the state."""
        ...

    def run_prefill_chunk(self, tokens: list[int], state: NamedState) -> tuple[np.ndarray, NamedState]:
        """One call of the prefill graph: exactly ``chunk`` tokens; logits (V,) or (T, V), and the state."""
        ...

    def close(self) -> None:
        """Release what the backend holds (a remote session serves one client at a time)."""
        ...


def no_prefill_graph(backend: Backend) -> StateError:
    return StateError(f"{backend.name}: this artifact has no prefill graph (prefill runs one step per token)")
