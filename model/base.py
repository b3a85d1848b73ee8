"""What every RWKV version shares: the model face (init_state, step, forward) and loading."""

from __future__ import annotations

import dataclasses
from typing import Any, ClassVar

import torch
from torch import nn
from torch.nn import functional as F

from ..errors import TokenError
from .checkpoint import StateDict, check_tensors
from .state import State, StateTensor, check_state, zero_state


def token_shift(x: torch.Tensor, prev: torch.Tensor) -> torch.Tensor:
    """Each position's predecessor: ``prev`` first, then x[:-1].  (..., T, C), (..., C) -> (..., T, C)"""
    prev = prev.to(x.dtype).unsqueeze(-2)
    if x.shape[-2] == 1:
        return prev
    return torch.cat([prev, x[..., :-1, :]], dim=-2)


def to_heads(t: torch.Tensor, n_head: int, head_size: int) -> torch.Tensor:
    """Split channels into heads, in fp32.  (..., T, C) -> (..., T, H, N)"""
    return t.float().unflatten(-1, (n_head, head_size))


def group_norm_heads(y: torch.Tensor, norm: nn.GroupNorm) -> torch.Tensor:
    """GroupNorm with one group per head over the last axis, in fp32 (the variance of WKV outputs
    overflows fp16).  (..., C) -> (..., C) fp32"""
    flat = y.reshape(-1, y.shape[-1]).float()  # (B*T, C)
    return F.group_norm(flat, norm.num_groups, norm.weight.float(), norm.bias.float(), norm.eps).reshape(y.shape)


def n_layers(tensors: StateDict) -> int:
    """Number of blocks, from the ``blocks.{i}.`` keys."""
    ids = {int(k.split(".")[1]) for k in tensors if k.startswith("blocks.")}
    return 1 + max(ids) if ids else 0


class RWKVModel(nn.Module):
    """Base of the per-version models.

    Subclasses set ``version``, ``config_class`` and ``unused_keys``, build their parameters with the
    official checkpoint names, and implement ``state_spec`` and ``run_blocks``.
    """

    version: ClassVar[str]
    config_class: ClassVar[type]
    unused_keys: ClassVar[tuple[str, ...]] = ()

    def __init__(self, config: Any) -> None:
        super().__init__()
        self.config = config
        self.emb = nn.Embedding(config.vocab_size, config.n_embd)
        self.ln_out = nn.LayerNorm(config.n_embd)
        self.head = nn.Linear(config.n_embd, config.vocab_size, bias=False)

    # -- loading --------------------------------------------------------------------------------
    @classmethod
    def from_state_dict(cls, tensors: StateDict, dtype: torch.dtype = torch.float32, source: str = "checkpoint") -> "RWKVModel":
        """Build the model whose shapes the tensors imply, checking every key and shape."""
        config = cls.config_class.from_state_dict(tensors)
        with torch.device("meta"):
            model = cls(config)
        expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
        tensors = {k: v for k, v in tensors.items() if k not in cls.unused_keys}
        matched = check_tensors(tensors, expected, source)
        model.load_state_dict({k: v.to(dtype) for k, v in matched.items()}, assign=True)
        return model.eval().requires_grad_(False)

    def describe(self) -> dict[str, Any]:
        """The version and full config, for ``rwkv-edge info``."""
        return {"version": self.version, **dataclasses.asdict(self.config)}

    # -- the step contract ----------------------------------------------------------------------
    def state_spec(self) -> list[StateTensor]:
        raise NotImplementedError

    def init_state(self, batch: tuple[int, ...] = ()) -> State:
        """The state before the first token."""
        return zero_state(self.state_spec(), batch)

    def run_blocks(self, x: torch.Tensor, state: State) -> tuple[torch.Tensor, State]:
        raise NotImplementedError

    def step(self, token: int | torch.Tensor, state: State) -> tuple[torch.Tensor, State]:
        """One token in RNN form: (token, state) -> (logits (V,), new state). Pure: ``state`` is unchanged."""
        tokens = torch.as_tensor(token, dtype=torch.long).reshape(1)
        logits, state = self.forward(tokens, state)
        return logits[0], state

    def forward(self, tokens: torch.Tensor | list[int], state: State | None = None) -> tuple[torch.Tensor, State]:
        """Sequence form: tokens (..., T) -> (logits (..., T, V) fp32, state after the last token)."""
        tokens = torch.as_tensor(tokens, dtype=torch.long)
        if tokens.dim() == 0 or tokens.shape[-1] == 0:
            raise TokenError("forward needs at least one token")
        batch = tuple(tokens.shape[:-1])
        if state is None:
            state = self.init_state(batch)
        if not torch.compiler.is_compiling():
            self.check_tokens(tokens)
            check_state(state, self.state_spec(), batch)
        x = self.blocks[0].ln0(self.emb(tokens))  # (..., T, C)
        x, state = self.run_blocks(x, state)
        return self.head(self.ln_out(x)).float(), state

    def check_tokens(self, tokens: torch.Tensor) -> None:
        """Raise TokenError for ids outside [0, vocab_size)."""
        vocab = self.config.vocab_size
        bad = tokens[(tokens < 0) | (tokens >= vocab)]
        if bad.numel():
            raise TokenError(f"token id {int(bad[0])} is outside the vocabulary [0, {vocab})")
