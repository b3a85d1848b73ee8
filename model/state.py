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

import torch

from ..contract import CONTRACT_VERSION, StateTensor, matrix_state_spec  # noqa: F401 (re-exported)
from ..errors import StateError

LayerState = dict[str, torch.Tensor]
State = list[LayerState]


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
