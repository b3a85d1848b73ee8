"""The PyTorch model behind the step contract: the reference every other backend is compared with."""

from __future__ import annotations

import numpy as np

from ..model import RWKVModel, StateTensor, state_from_named, state_to_named
from ..model.threads import parameter_count, threads_for, torch_threads
from .backend import NamedState, check_named_state, check_token_ids, no_prefill_graph


class TorchBackend:
    """The PyTorch model itself: the reference every other backend is compared with.

    On ``device`` "cpu" (the default) arrays cross as numpy. On a GPU (``"cuda"``) the model is moved
    there once; the logits come back as numpy, as from every backend, and the state stays there as
    ``TorchDeviceTensor`` values (numpy on demand) that the next step takes without a copy; ``sync()``
    waits for the GPU. Each call runs on ``threads`` intra-op threads where given, else on those
    ``threads_for`` picks for its tokens (one for a step of a model below ~1e9 parameters)."""

    name = "torch"
    chunk = 0  # forward() takes any number of tokens: prefill is one call

    def __init__(self, model: RWKVModel, device: str = "cpu", threads: int | None = None) -> None:
        self.device, self.threads = device, threads
        self.model = model if device == "cpu" else model.to(device)
        self.vocab_size = model.config.vocab_size
        self.parameters = parameter_count(model)
        import torch

        self.runs_on = f"PyTorch {torch.__version__} eager, {device}"

    def state_spec(self) -> list[StateTensor]:
        return self.model.state_spec()

    def init_state(self) -> NamedState:
        return _to_numpy(self.model.init_state())

    def step(self, token: int, state: NamedState) -> tuple[np.ndarray, NamedState]:
        return self.prefill([token], state)

    def prefill(self, tokens: list[int], state: NamedState) -> tuple[np.ndarray, NamedState]:
        check_token_ids(tokens, self.vocab_size)
        check_named_state(state, self.state_spec())
        with torch_threads(threads_for(self.parameters, len(tokens), self.threads)):
            return self._forward(tokens, state)

    def _forward(self, tokens: list[int], state: NamedState) -> tuple[np.ndarray, NamedState]:
        """``prefill`` once checked, on the threads chosen."""
        import torch

        if self.device == "cpu":
            named = {k: torch.from_numpy(np.asarray(v, dtype=np.float32)) for k, v in state.items()}
            with torch.inference_mode():
                logits, new_state = self.model.forward(tokens, state_from_named(named, self.state_spec()), last_only=True)
            return logits.numpy(), _to_numpy(new_state)
        named = {k: self._on_device(v) for k, v in state.items()}
        with torch.inference_mode():
            logits, new_state = self.model.forward(torch.tensor(tokens, dtype=torch.long, device=self.device),
                                                   state_from_named(named, self.state_spec()), last_only=True)
        return logits.cpu().numpy(), {k: TorchDeviceTensor(v) for k, v in state_to_named(new_state).items()}

    def run_prefill_chunk(self, tokens: list[int], state: NamedState) -> tuple[np.ndarray, NamedState]:
        raise no_prefill_graph(self)

    def close(self) -> None:
        pass

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
