"""RWKV-7 "Goose" (x070): generalised delta-rule WKV state with a vector-valued decay."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .base import RWKVModel, group_norm_heads, to_heads, token_shift
from .checkpoint import StateDict, dims, heads, n_layers
from .state import LayerState, State, StateTensor, matrix_state_spec


@dataclass(frozen=True)
class ConfigV7:
    vocab_size: int
    n_embd: int
    n_layer: int
    head_size: int
    n_head: int
    ffn_dim: int
    decay_lora: int
    iclr_lora: int  # in-context learning rate "a"
    value_lora: int  # value residual to layer 0, absent in layer 0
    gate_lora: int
    norm_eps: float = 1e-5  # every LayerNorm's (a source's config may set another)
    ln_x_eps: float = 64e-5  # the per-head GroupNorm's

    @classmethod
    def from_state_dict(cls, t: StateDict, source: str = "checkpoint") -> "ConfigV7":
        n_layer = n_layers(t, source)
        vocab_size, n_embd = dims(t, "emb.weight", 2, source)  # (V, C)
        n_head, head_size = heads(t, "blocks.0.att.r_k", n_embd, source)  # (H, N)

        def lora(key: str) -> int:  # (C, D)
            return dims(t, key, 2, source)[1]

        return cls(
            vocab_size=vocab_size, n_embd=n_embd, n_layer=n_layer, head_size=head_size, n_head=n_head,
            ffn_dim=dims(t, "blocks.0.ffn.key.weight", 2, source)[0],
            decay_lora=lora("blocks.0.att.w1"),
            iclr_lora=lora("blocks.0.att.a1"),
            value_lora=lora("blocks.1.att.v1") if n_layer > 1 else 0,
            gate_lora=lora("blocks.0.att.g1"),
        )


def _vec(c: int) -> nn.Parameter:
    return nn.Parameter(torch.empty(c))  # stored (1, 1, C) in checkpoints


def _mat(rows: int, cols: int) -> nn.Parameter:
    return nn.Parameter(torch.empty(rows, cols))


class TimeMix(nn.Module):
    def __init__(self, cfg: ConfigV7, layer_id: int) -> None:
        super().__init__()
        C, H, N = cfg.n_embd, cfg.n_head, cfg.head_size
        self.layer_id, self.H, self.N = layer_id, H, N
        for name in ("x_r", "x_w", "x_k", "x_v", "x_a", "x_g", "w0", "a0", "k_k", "k_a"):
            setattr(self, name, _vec(C))
        self.w1, self.w2 = _mat(C, cfg.decay_lora), _mat(cfg.decay_lora, C)
        self.a1, self.a2 = _mat(C, cfg.iclr_lora), _mat(cfg.iclr_lora, C)
        if layer_id > 0:
            self.v0 = _vec(C)
            self.v1, self.v2 = _mat(C, cfg.value_lora), _mat(cfg.value_lora, C)
        self.g1, self.g2 = _mat(C, cfg.gate_lora), _mat(cfg.gate_lora, C)
        self.r_k = _mat(H, N)
        self.receptance = nn.Linear(C, C, bias=False)
        self.key = nn.Linear(C, C, bias=False)
        self.value = nn.Linear(C, C, bias=False)
        self.output = nn.Linear(C, C, bias=False)
        self.ln_x = nn.GroupNorm(H, C, eps=cfg.ln_x_eps)

    def forward(self, x: torch.Tensor, s: LayerState, v_first: torch.Tensor | None):
        """x (..., T, C) -> out (..., T, C), new shift and wkv, v_first of layer 0."""
        H, N = self.H, self.N
        xx = token_shift(x, s["att_shift"]) - x
        xr, xw, xk = x + xx * self.x_r, x + xx * self.x_w, x + xx * self.x_k
        xv, xa, xg = x + xx * self.x_v, x + xx * self.x_a, x + xx * self.x_g

        r = self.receptance(xr)
        w = torch.tanh(xw @ self.w1) @ self.w2
        k = self.key(xk)
        v = self.value(xv)
        a = torch.sigmoid(self.a0 + (xa @ self.a1) @ self.a2)  # in-context learning rate
        g = torch.sigmoid(xg @ self.g1) @ self.g2

        kk = F.normalize((k * self.k_k).unflatten(-1, (H, N)), dim=-1, p=2.0)  # (..., T, H, N)
        k = k * (1 + (a - 1) * self.k_a)
        if self.layer_id == 0:
            v_first = v
        else:
            v = v + (v_first - v) * torch.sigmoid(self.v0 + (xv @ self.v1) @ self.v2)
        decay = torch.exp(-0.606531 * torch.sigmoid((self.w0 + w).float()))  # in (exp(-e^-0.5), 1)

        def heads(t: torch.Tensor) -> torch.Tensor:
            return to_heads(t, H, N)

        y, wkv = wkv7(heads(r), heads(decay), heads(k), heads(v), kk.float(), heads(a), s["wkv"])
        y = group_norm_heads(y.flatten(-2), self.ln_x).to(x.dtype)
        bonus = (heads(r * k) * self.r_k).sum(-1, keepdim=True) * heads(v)  # (..., T, H, N)
        y = y + bonus.flatten(-2).to(x.dtype)
        return self.output(y * g), x[..., -1, :].float(), wkv, v_first


def wkv7(r, decay, k, v, kk, a, wkv):
    """The delta-rule recurrence over T, state [head, key, value], token by token; the factors that do not
    need the state are shaped for all T at once (a T-token prefill graph then traces half the ops per token).

    r, decay, k, v, kk, a: (..., T, H, N); wkv: (..., H, N, N) -> y (..., T, H, N), wkv.
    """
    factors = _factors(r, decay, k, v, kk, a)  # each (..., T, H, N, 1) or (..., T, H, 1, N)
    ys = []
    for t in range(r.shape[-3]):
        y, wkv = _update(wkv, *(f[..., t, :, :, :] for f in factors))
        ys.append(y)
    return torch.stack(ys, dim=-4).squeeze(-2), wkv


def wkv7_step(wkv, r_t, w_t, k_t, v_t, kk_t, a_t):
    """One token: (..., H, N) each -> y (..., H, N), wkv."""
    y, wkv = _update(wkv, *_factors(r_t, w_t, k_t, v_t, kk_t, a_t))
    return y.squeeze(-2), wkv


def _factors(r, decay, k, v, kk, a):
    """(..., H, N) each -> the update's factors: ``kk * a``, ``decay`` and ``k`` as columns (..., H, N, 1),
    ``kk``, ``v`` and ``r`` as rows (..., H, 1, N)."""
    columns = (kk * a).unsqueeze(-1), decay.unsqueeze(-1), k.unsqueeze(-1)  # (..., H, N, 1)
    rows = kk.unsqueeze(-2), v.unsqueeze(-2), r.unsqueeze(-2)  # (..., H, 1, N)
    return columns[0], rows[0], columns[1], columns[2], rows[1], rows[2]


def _update(wkv, kka_col, kk_row, w_col, k_col, v_row, r_row):
    """S' = diag(w) S - (kk * a) (kk^T S) + k v^T ;  y = r^T S' (a row, (..., H, 1, N))."""
    removal = kka_col * (kk_row @ wkv)  # (..., H, N, N)
    wkv = w_col * wkv - removal + k_col * v_row
    return r_row @ wkv, wkv


class ChannelMix(nn.Module):
    def __init__(self, cfg: ConfigV7) -> None:
        super().__init__()
        self.x_k = _vec(cfg.n_embd)
        self.key = nn.Linear(cfg.n_embd, cfg.ffn_dim, bias=False)
        self.value = nn.Linear(cfg.ffn_dim, cfg.n_embd, bias=False)

    def forward(self, x: torch.Tensor, shift: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        k = x + (token_shift(x, shift) - x) * self.x_k
        k = torch.relu(self.key(k)) ** 2  # (..., T, F)
        return self.value(k), x[..., -1, :].float()


class Block(nn.Module):
    def __init__(self, cfg: ConfigV7, layer_id: int) -> None:
        super().__init__()
        if layer_id == 0:
            self.ln0 = nn.LayerNorm(cfg.n_embd, eps=cfg.norm_eps)
        self.ln1 = nn.LayerNorm(cfg.n_embd, eps=cfg.norm_eps)
        self.ln2 = nn.LayerNorm(cfg.n_embd, eps=cfg.norm_eps)
        self.att = TimeMix(cfg, layer_id)
        self.ffn = ChannelMix(cfg)

    def forward(self, x: torch.Tensor, s: LayerState, v_first: torch.Tensor | None):
        dx, att_shift, wkv, v_first = self.att(self.ln1(x), s, v_first)
        x = x + dx
        dx, ffn_shift = self.ffn(self.ln2(x), s["ffn_shift"])
        return x + dx, {"att_shift": att_shift, "wkv": wkv, "ffn_shift": ffn_shift}, v_first


class RWKV7(RWKVModel):
    version = "v7"
    config_class = ConfigV7
    # layer 0 computes v_first itself: its value-residual weights are never used
    unused_keys = ("blocks.0.att.v0", "blocks.0.att.v1", "blocks.0.att.v2")

    def __init__(self, config: ConfigV7) -> None:
        super().__init__(config)
        self.blocks = nn.ModuleList(Block(config, i) for i in range(config.n_layer))

    def state_spec(self) -> list[StateTensor]:
        c = self.config
        return matrix_state_spec(c.n_layer, c.n_embd, c.n_head, c.head_size)

    def run_blocks(self, x: torch.Tensor, state: State) -> tuple[torch.Tensor, State]:
        new_state, v_first = [], None
        for block, s in zip(self.blocks, state):
            x, s, v_first = block(x, s, v_first)
            new_state.append(s)
        return x, new_state
