"""RWKV-5 "Eagle" (x052): multi-head matrix-valued WKV state with a per-channel decay."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .base import group_norm_heads, to_heads, token_shift
from .checkpoint import StateDict, dims, heads, n_layers
from .state import LayerState, StateTensor, matrix_state_spec, zero_state
from .v4 import Block, ChannelMix, RecurrentModel, lerp_shift, vec


@dataclass(frozen=True)
class ConfigV5:
    vocab_size: int
    n_embd: int
    n_layer: int
    head_size: int
    n_head: int
    ffn_dim: int
    time_state: bool  # the checkpoint carries a tuned initial WKV state
    norm_eps: float = 1e-5  # every LayerNorm's (a source's config may set another)
    ln_x_eps: float = 64e-5  # the per-head GroupNorm's

    @classmethod
    def from_state_dict(cls, t: StateDict, source: str = "checkpoint") -> "ConfigV5":
        n_layer = n_layers(t, source)
        vocab_size, n_embd = dims(t, "emb.weight", 2, source)  # (V, C)
        n_head, head_size = heads(t, "blocks.0.att.time_faaaa", n_embd, source)  # (H, N)
        return cls(vocab_size=vocab_size, n_embd=n_embd, n_layer=n_layer, head_size=head_size,
                   n_head=n_head, ffn_dim=dims(t, "blocks.0.ffn.key.weight", 2, source)[0],
                   time_state="blocks.0.att.time_state" in t)


def wkv5(r, decay, k, v, bonus, wkv):
    """Linear attention with per-key-channel decay, state [head, key, value].

    r, k, v: (..., T, H, N); decay: (..., T, H, N) or (H, N); bonus: (H, N); wkv: (..., H, N, N).
    y_t = r_t^T (bonus * k_t v_t^T + S) ;  S' = k_t v_t^T + decay_t * S
    """
    ys = []
    for t in range(r.shape[-3]):
        kv = k[..., t, :, :].unsqueeze(-1) * v[..., t, :, :].unsqueeze(-2)  # (..., H, N, N)
        ys.append((r[..., t, :, :].unsqueeze(-2) @ (bonus.unsqueeze(-1) * kv + wkv)).squeeze(-2))
        w_t = decay if decay.dim() == 2 else decay[..., t, :, :]
        wkv = kv + w_t.unsqueeze(-1) * wkv
    return torch.stack(ys, dim=-3), wkv


class MatrixStateModel(RecurrentModel):
    """v5/v6: the zero state, except for a checkpoint's tuned initial WKV state (``att.time_state``)."""

    def state_spec(self) -> list[StateTensor]:
        c = self.config
        return matrix_state_spec(c.n_layer, c.n_embd, c.n_head, c.head_size)

    def init_state(self, batch: tuple[int, ...] = ()):
        state = zero_state(self.state_spec(), batch)
        if self.config.time_state:
            for block, s in zip(self.blocks, state):
                # stored [head, value, key] by the trainers
                s["wkv"] = block.att.time_state.float().transpose(-1, -2).expand(batch + s["wkv"].shape[-3:]).clone()
        return state


class MatrixTimeMix(nn.Module):
    """What the v5 and v6 time-mix blocks share: projections, bonus, optional initial state, read-out."""

    def __init__(self, cfg) -> None:
        super().__init__()
        C, H, N = cfg.n_embd, cfg.n_head, cfg.head_size
        self.H, self.N = H, N
        self.time_faaaa = nn.Parameter(torch.empty(H, N))  # the bonus of the current token ("u")
        if cfg.time_state:
            self.time_state = nn.Parameter(torch.empty(H, N, N))
        self.receptance = nn.Linear(C, C, bias=False)
        self.key = nn.Linear(C, C, bias=False)
        self.value = nn.Linear(C, C, bias=False)
        self.gate = nn.Linear(C, C, bias=False)
        self.output = nn.Linear(C, C, bias=False)
        self.ln_x = nn.GroupNorm(H, C, eps=cfg.ln_x_eps)

    def heads(self, t: torch.Tensor) -> torch.Tensor:
        return to_heads(t, self.H, self.N)

    def read_out(self, x: torch.Tensor, r, k, v, g: torch.Tensor, decay: torch.Tensor, s: LayerState):
        """Run the WKV recurrence and project its per-head norm, gated.  r, k, v: (..., T, H, N)"""
        y, wkv = wkv5(r, decay, k, v, self.time_faaaa.float(), s["wkv"])
        y = group_norm_heads(y.flatten(-2), self.ln_x).to(x.dtype)
        return self.output(y * g), {"att_shift": x[..., -1, :].float(), "wkv": wkv}


class TimeMix(MatrixTimeMix):
    def __init__(self, cfg: ConfigV5) -> None:
        super().__init__(cfg)
        C = cfg.n_embd
        self.time_mix_k, self.time_mix_v, self.time_mix_r, self.time_mix_g = vec(C), vec(C), vec(C), vec(C)
        self.time_decay = nn.Parameter(torch.empty(cfg.n_head, cfg.head_size))

    def forward(self, x: torch.Tensor, s: LayerState) -> tuple[torch.Tensor, LayerState]:
        prev = token_shift(x, s["att_shift"])
        r = self.heads(self.receptance(lerp_shift(x, prev, self.time_mix_r)))
        k = self.heads(self.key(lerp_shift(x, prev, self.time_mix_k)))
        v = self.heads(self.value(lerp_shift(x, prev, self.time_mix_v)))
        g = F.silu(self.gate(lerp_shift(x, prev, self.time_mix_g)))
        decay = torch.exp(-torch.exp(self.time_decay.float()))  # (H, N)
        return self.read_out(x, r, k, v, g, decay, s)


class RWKV5(MatrixStateModel):
    version = "v5"
    config_class = ConfigV5

    def __init__(self, config: ConfigV5) -> None:
        super().__init__(config)
        C = config.n_embd
        self.blocks = nn.ModuleList(
            Block(C, i, TimeMix(config), ChannelMix(C, config.ffn_dim), config.norm_eps) for i in range(config.n_layer)
        )
