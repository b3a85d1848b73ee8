"""RWKV-4 (the paper): per-channel WKV with exponential decay, in the numerically stable form."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from .base import RWKVModel, token_shift
from .checkpoint import StateDict, dims, n_layers
from .state import LayerState, State, StateTensor


@dataclass(frozen=True)
class ConfigV4:
    vocab_size: int
    n_embd: int
    n_layer: int
    ffn_dim: int
    norm_eps: float = 1e-5  # every LayerNorm's (a source's config may set another)

    @classmethod
    def from_state_dict(cls, t: StateDict, source: str = "checkpoint") -> "ConfigV4":
        n_layer = n_layers(t, source)
        vocab_size, n_embd = dims(t, "emb.weight", 2, source)  # (V, C)
        return cls(vocab_size=vocab_size, n_embd=n_embd, n_layer=n_layer,
                   ffn_dim=dims(t, "blocks.0.ffn.key.weight", 2, source)[0])  # (F, C)


def vec(c: int) -> nn.Parameter:
    """A per-channel parameter; checkpoints store it as (C,) or (1, 1, C)."""
    return nn.Parameter(torch.empty(c))


def lerp_shift(x: torch.Tensor, prev: torch.Tensor, mix: torch.Tensor) -> torch.Tensor:
    """RWKV-4/5 token shift: mix * x + (1 - mix) * prev."""
    return x * mix + prev * (1 - mix)


class TimeMix(nn.Module):
    def __init__(self, cfg: ConfigV4) -> None:
        super().__init__()
        C = cfg.n_embd
        self.time_decay, self.time_first = vec(C), vec(C)
        self.time_mix_k, self.time_mix_v, self.time_mix_r = vec(C), vec(C), vec(C)
        self.key = nn.Linear(C, C, bias=False)
        self.value = nn.Linear(C, C, bias=False)
        self.receptance = nn.Linear(C, C, bias=False)
        self.output = nn.Linear(C, C, bias=False)

    def forward(self, x: torch.Tensor, s: LayerState) -> tuple[torch.Tensor, LayerState]:
        prev = token_shift(x, s["att_shift"])  # (..., T, C)
        r = torch.sigmoid(self.receptance(lerp_shift(x, prev, self.time_mix_r)))
        k = self.key(lerp_shift(x, prev, self.time_mix_k)).float()
        v = self.value(lerp_shift(x, prev, self.time_mix_v)).float()
        decay = -torch.exp(self.time_decay.float())  # log of the per-token decay
        wkv, num, den, top = wkv4(k, v, decay, self.time_first.float(), s["wkv_num"], s["wkv_den"], s["wkv_max"])
        out = self.output(r * wkv.to(x.dtype))
        return out, {"att_shift": x[..., -1, :].float(), "wkv_num": num, "wkv_den": den, "wkv_max": top}


def wkv4(k, v, decay, bonus, num, den, top):
    """Weighted average of past values with weights exp(k), kept as (num, den) scaled by exp(-top).

    k, v: (..., T, C); decay, bonus: (C,); num, den, top: (..., C) -> wkv (..., T, C), num, den, top.
    """
    out = []
    for t in range(k.shape[-2]):
        k_t, v_t = k[..., t, :], v[..., t, :]
        now = bonus + k_t  # the current token gets the bonus
        m = torch.maximum(top, now)
        e_past, e_now = torch.exp(top - m), torch.exp(now - m)
        out.append((e_past * num + e_now * v_t) / (e_past * den + e_now))
        past = top + decay
        m = torch.maximum(past, k_t)
        e_past, e_now = torch.exp(past - m), torch.exp(k_t - m)
        num, den, top = e_past * num + e_now * v_t, e_past * den + e_now, m
    return torch.stack(out, dim=-2), num, den, top


class ChannelMix(nn.Module):
    """The RWKV-4/5 feed-forward: squared-ReLU key, sigmoid receptance gate."""

    def __init__(self, n_embd: int, ffn_dim: int) -> None:
        super().__init__()
        self.time_mix_k, self.time_mix_r = vec(n_embd), vec(n_embd)
        self.key = nn.Linear(n_embd, ffn_dim, bias=False)
        self.receptance = nn.Linear(n_embd, n_embd, bias=False)
        self.value = nn.Linear(ffn_dim, n_embd, bias=False)

    def forward(self, x: torch.Tensor, shift: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        prev = token_shift(x, shift)
        r = torch.sigmoid(self.receptance(lerp_shift(x, prev, self.time_mix_r)))
        k = torch.relu(self.key(lerp_shift(x, prev, self.time_mix_k))) ** 2  # (..., T, F)
        return r * self.value(k), x[..., -1, :].float()


class Block(nn.Module):
    """Pre-norm residual block shared by v4, v5 and v6: x += att(ln1 x); x += ffn(ln2 x)."""

    def __init__(self, n_embd: int, layer_id: int, att: nn.Module, ffn: nn.Module, eps: float) -> None:
        super().__init__()
        if layer_id == 0:
            self.ln0 = nn.LayerNorm(n_embd, eps=eps)
        self.ln1 = nn.LayerNorm(n_embd, eps=eps)
        self.ln2 = nn.LayerNorm(n_embd, eps=eps)
        self.att, self.ffn = att, ffn

    def forward(self, x: torch.Tensor, s: LayerState) -> tuple[torch.Tensor, LayerState]:
        dx, att_state = self.att(self.ln1(x), s)
        x = x + dx
        dx, ffn_shift = self.ffn(self.ln2(x), s["ffn_shift"])
        return x + dx, {**att_state, "ffn_shift": ffn_shift}


class RecurrentModel(RWKVModel):
    """v4-v6: blocks that pass nothing but the residual stream between layers."""

    def run_blocks(self, x: torch.Tensor, state: State) -> tuple[torch.Tensor, State]:
        new_state = []
        for block, s in zip(self.blocks, state):
            x, s = block(x, s)
            new_state.append(s)
        return x, new_state


class RWKV4(RecurrentModel):
    version = "v4"
    config_class = ConfigV4

    def __init__(self, config: ConfigV4) -> None:
        super().__init__(config)
        C = config.n_embd
        self.blocks = nn.ModuleList(
            Block(C, i, TimeMix(config), ChannelMix(C, config.ffn_dim), config.norm_eps) for i in range(config.n_layer)
        )

    def state_spec(self) -> list[StateTensor]:
        C = self.config.n_embd
        spec = []
        for i in range(self.config.n_layer):
            spec += [
                StateTensor(i, "att_shift", (C,)),
                StateTensor(i, "wkv_num", (C,)),
                StateTensor(i, "wkv_den", (C,)),
                StateTensor(i, "wkv_max", (C,), fill=-1e30),
                StateTensor(i, "ffn_shift", (C,)),
            ]
        return spec
