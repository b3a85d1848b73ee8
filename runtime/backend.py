"""Backends run the step contract on named numpy arrays: token -> logits, state.* -> state_out.*."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Protocol

import numpy as np

from ..errors import StateError, TokenError
from ..model import RWKVModel, StateTensor, state_from_named, state_to_named

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
    """Whole chunks through ``backend.run_prefill_chunk``, the remainder through ``backend.step``:
    (logits (V,) after the last token, state)."""
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
    """One compiled or eager model behind the step contract."""

    name: str
    vocab_size: int

    def state_spec(self) -> list[StateTensor]: ...

    def init_state(self) -> NamedState: ...

    def step(self, token: int, state: NamedState) -> tuple[np.ndarray, NamedState]:
        """(token, state) -> (logits (V,) fp32, next state under the input names)."""
        ...

    def prefill(self, tokens: list[int], state: NamedState) -> tuple[np.ndarray, NamedState]:
        """Feed several tokens; return the logits after the last one and the state."""
        ...


class TorchBackend:
    """The PyTorch model itself: the reference every other backend is compared with.

    On ``device`` "cpu" (the default) arrays cross as numpy. On a GPU (``"cuda"``) the model is moved
    there once; the logits come back as numpy, as from every backend, and the state stays there as
    ``TorchDeviceTensor`` values (numpy on demand) that the next step takes without a copy; ``sync()``
    waits for the GPU."""

    name = "torch"

    def __init__(self, model: RWKVModel, device: str = "cpu") -> None:
        self.device = device
        self.model = model if device == "cpu" else model.to(device)
        self.vocab_size = model.config.vocab_size

    def state_spec(self) -> list[StateTensor]:
        return self.model.state_spec()

    def init_state(self) -> NamedState:
        return _to_numpy(self.model.init_state())

    def step(self, token: int, state: NamedState) -> tuple[np.ndarray, NamedState]:
        return self.prefill([token], state)

    def prefill(self, tokens: list[int], state: NamedState) -> tuple[np.ndarray, NamedState]:
        import torch

        check_token_ids(tokens, self.vocab_size)
        check_named_state(state, self.state_spec())
        if self.device == "cpu":
            named = {k: torch.from_numpy(np.asarray(v, dtype=np.float32)) for k, v in state.items()}
            with torch.inference_mode():
                logits, new_state = self.model.forward(tokens, state_from_named(named, self.state_spec()))
            return logits[-1].numpy(), _to_numpy(new_state)
        named = {k: self._on_device(v) for k, v in state.items()}
        with torch.inference_mode():
            logits, new_state = self.model.forward(torch.tensor(tokens, dtype=torch.long, device=self.device),
                                                   state_from_named(named, self.state_spec()))
        return logits[-1].cpu().numpy(), {k: TorchDeviceTensor(v) for k, v in state_to_named(new_state).items()}

    def sync(self) -> None:
        """Wait until the device has finished the steps queued so far (call it after a timed step)."""
        if self.device != "cpu":
            import torch

            torch.cuda.synchronize(self.device)

    def _on_device(self, value):
        """A state value as an fp32 tensor on this backend's device: one it returned as is, anything else copied."""
        import torch

        if isinstance(value, TorchDeviceTensor) and value.tensor.device.type == torch.device(self.device).type:
            return value.tensor
        return torch.as_tensor(np.asarray(value, dtype=np.float32), device=self.device)


class TorchDeviceTensor:
    """A state tensor of TorchBackend left on its device between steps: ``shape`` and ``dtype`` like
    numpy's, and a copy to the host where numpy is asked for (``np.asarray``)."""

    __slots__ = ("tensor",)

    def __init__(self, tensor) -> None:
        self.tensor = tensor

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.tensor.shape)

    @property
    def dtype(self) -> np.dtype:
        return np.dtype(str(self.tensor.dtype).removeprefix("torch."))

    def __array__(self, dtype=None, copy=None) -> np.ndarray:
        array = self.tensor.detach().cpu().numpy()
        return array if dtype is None else array.astype(dtype, copy=False)

    def __repr__(self) -> str:
        return f"TorchDeviceTensor({self.shape}, {self.dtype}, {self.tensor.device})"


def _to_numpy(state) -> NamedState:
    return {k: v.numpy() for k, v in state_to_named(state).items()}
