"""The recurrent state: named per layer and role, fp32, and the one mapping to graph I/O names.

A state is a list with one dict per layer, ``state[layer][role] -> Tensor``. Roles mean the same
thing in every architecture that has them:

- ``att_shift``  (C,)      the last normalised input of the time-mix block (token shift)
- ``ffn_shift``  (C,)      the last normalised input of the channel-mix block
- ``wkv``        (H, N, N) the WKV matrix state of v5/v6/v7, indexed [head, key, value]
- ``wkv_num``, ``wkv_den``, ``wkv_max`` (C,) RWKV-4's numerically stable (aa, bb, pp) form:
  numerator and denominator of the weighted average, scaled by exp(-wkv_max)
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..errors import StateError

CONTRACT_VERSION = "1.0"  # of docs/onnx-contract.md; bump on any change to names, shapes or dtypes

LayerState = dict[str, torch.Tensor]
State = list[LayerState]


@dataclass(frozen=True)
class StateTensor:
    """One tensor of the state: where it lives, its shape and its value in the zero state."""

    layer: int
    role: str
    shape: tuple[int, ...]
    fill: float = 0.0

    @property
    def input_name(self) -> str:
        return f"state.{self.layer}.{self.role}"

    @property
    def output_name(self) -> str:
        return f"state_out.{self.layer}.{self.role}"


def matrix_state_spec(n_layer: int, n_embd: int, n_head: int, head_size: int) -> list[StateTensor]:
    """The v5/v6/v7 state: token shift, [head, key, value] WKV matrix, token shift, per layer."""
    spec = []
    for i in range(n_layer):
        spec += [
            StateTensor(i, "att_shift", (n_embd,)),
            StateTensor(i, "wkv", (n_head, head_size, head_size)),
            StateTensor(i, "ffn_shift", (n_embd,)),
        ]
    return spec


def zero_state(spec: list[StateTensor], batch: tuple[int, ...] = ()) -> State:
    """A fresh state: every tensor filled with its spec's fill value, fp32."""
    n_layer = 1 + max(t.layer for t in spec)
    state: State = [{} for _ in range(n_layer)]
    for t in spec:
        state[t.layer][t.role] = torch.full(batch + t.shape, t.fill, dtype=torch.float32)
    return state


def check_state(state: State, spec: list[StateTensor], batch: tuple[int, ...] = ()) -> None:
    """Raise StateError naming the first tensor that is missing or mis-shaped."""
    n_layer = 1 + max(t.layer for t in spec)
    if not isinstance(state, list) or len(state) != n_layer:
        got = len(state) if isinstance(state, list) else type(state).__name__
        raise StateError(f"state must be a list of {n_layer} layer dicts, got {got}")
    for t in spec:
        tensor = state[t.layer].get(t.role)
        if tensor is None:
            raise StateError(f"state tensor {t.input_name} is missing")
        want = batch + t.shape
        if tuple(tensor.shape) != want:
            raise StateError(f"state tensor {t.input_name} has shape {tuple(tensor.shape)}, expected {want}")


def state_to_named(state: State, prefix: str = "state") -> dict[str, torch.Tensor]:
    """Flatten to graph I/O names: ``{prefix}.{layer}.{role}``."""
    return {f"{prefix}.{i}.{role}": t for i, layer in enumerate(state) for role, t in layer.items()}


def state_from_named(named: dict[str, torch.Tensor], spec: list[StateTensor], prefix: str = "state") -> State:
    """Inverse of state_to_named; raises StateError naming any missing tensor."""
    n_layer = 1 + max(t.layer for t in spec)
    state: State = [{} for _ in range(n_layer)]
    for t in spec:
        name = f"{prefix}.{t.layer}.{t.role}"
        if name not in named:
            raise StateError(f"state tensor {name} is missing")
        state[t.layer][t.role] = named[name]
    return state
