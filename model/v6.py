"""RWKV-6 "Finch" (x060): data-dependent token shift and decay through small LoRAs."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .base import token_shift
from .checkpoint import StateDict, dims
from .state import LayerState
from .v4 import Block, vec
from .v5 import ConfigV5, MatrixStateModel, MatrixTimeMix


@dataclass(frozen=True)
class ConfigV6:
    vocab_size: int
    n_embd: int
    n_layer: int
    head_size: int
    n_head: int
    ffn_dim: int
    mix_lora: int  # rank of the data-dependent token-shift LoRA (5 of them share the input matrix)
    decay_lora: int
    time_state: bool  # the checkpoint carries a tuned initial WKV state
    norm_eps: float = 1e-5  # every LayerNorm's (a source's config may set another)
    ln_x_eps: float = 64e-5  # the per-head GroupNorm's

    @classmethod
    def from_state_dict(cls, t: StateDict, source: str = "checkpoint") -> "ConfigV6":
        shared = dataclasses.asdict(ConfigV5.from_state_dict(t, source))  # sizes, heads, time_state
        return cls(**shared, mix_lora=dims(t, "blocks.0.att.time_maa_w2", 3, source)[1],  # (5, D, C)
                   decay_lora=dims(t, "blocks.0.att.time_decay_w1", 2, source)[1])  # (C, D)


class TimeMix(MatrixTimeMix):
    def __init__(self, cfg: ConfigV6) -> None:
        super().__init__(cfg)
        C = cfg.n_embd
        for name in ("x", "w", "k", "v", "r", "g"):
            setattr(self, f"time_maa_{name}", vec(C))
        self.time_maa_w1 = nn.Parameter(torch.empty(C, 5 * cfg.mix_lora))
        self.time_maa_w2 = nn.Parameter(torch.empty(5, cfg.mix_lora, C))
        self.time_decay = vec(C)
        self.time_decay_w1 = nn.Parameter(torch.empty(C, cfg.decay_lora))
        self.time_decay_w2 = nn.Parameter(torch.empty(cfg.decay_lora, C))

    def forward(self, x: torch.Tensor, s: LayerState) -> tuple[torch.Tensor, LayerState]:
        dx = token_shift(x, s["att_shift"]) - x  # (..., T, C)
        lora = torch.tanh((x + dx * self.time_maa_x) @ self.time_maa_w1)  # (..., T, 5*D)
        lora = (lora.unflatten(-1, (5, -1)).unsqueeze(-2) @ self.time_maa_w2).squeeze(-2)  # (..., T, 5, C)
        mw, mk, mv, mr, mg = lora.unbind(-2)
        xw = x + dx * (self.time_maa_w + mw)
        xk = x + dx * (self.time_maa_k + mk)
        xv = x + dx * (self.time_maa_v + mv)
        xr = x + dx * (self.time_maa_r + mr)
        xg = x + dx * (self.time_maa_g + mg)

        r, k, v = self.heads(self.receptance(xr)), self.heads(self.key(xk)), self.heads(self.value(xv))
        g = F.silu(self.gate(xg))
        log_decay = self.time_decay + torch.tanh(xw @ self.time_decay_w1) @ self.time_decay_w2
        decay = torch.exp(-torch.exp(self.heads(log_decay)))  # (..., T, H, N)
        return self.read_out(x, r, k, v, g, decay, s)


class ChannelMix(nn.Module):
    """The v6 feed-forward: as v4/v5 with the token shift written x + (prev - x) * maa."""

    def __init__(self, n_embd: int, ffn_dim: int) -> None:
        super().__init__()
        self.time_maa_k, self.time_maa_r = vec(n_embd), vec(n_embd)
        self.key = nn.Linear(n_embd, ffn_dim, bias=False)
        self.receptance = nn.Linear(n_embd, n_embd, bias=False)
        self.value = nn.Linear(ffn_dim, n_embd, bias=False)

    def forward(self, x: torch.Tensor, shift: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        dx = token_shift(x, shift) - x
        r = torch.sigmoid(self.receptance(x + dx * self.time_maa_r))
        k = torch.relu(self.key(x + dx * self.time_maa_k)) ** 2  # (..., T, F)
        return r * self.value(k), x[..., -1, :].float()


class RWKV6(MatrixStateModel):
    version = "v6"
    config_class = ConfigV6

    def __init__(self, config: ConfigV6) -> None:
        super().__init__(config)
        C = config.n_embd
        self.blocks = nn.ModuleList(
            Block(C, i, TimeMix(config), ChannelMix(C, config.ffn_dim), config.norm_eps) for i in range(config.n_layer)
        )
