"""Seeded random checkpoints in the official BlinkDL key layout, for tests and experiments.

Values are drawn from ranges trained models show (decays spread over fast and slow channels, mixes
in [0, 1], unit-scale norms, non-zero LoRAs) so that logits are far from flat and every parameter
influences the output.
"""

from __future__ import annotations

from pathlib import Path

import torch

from ..architectures import LANGUAGE, of_family
from ..errors import UnknownArchitectureError
from .checkpoint import StateDict

VERSIONS = tuple(of_family(LANGUAGE))


def make_checkpoint(
    version: str,
    n_layer: int = 2,
    n_embd: int = 128,
    vocab_size: int = 256,
    head_size: int = 64,
    seed: int = 0,
    time_state: bool = False,
    dtype: torch.dtype = torch.float32,
) -> StateDict:
    """A random checkpoint of ``version`` (v4, v5, v6 or v7); ``time_state`` adds v5/v6 initial states."""
    if version not in VERSIONS:
        raise UnknownArchitectureError(f"unknown version {version!r}; expected one of {', '.join(VERSIONS)}")
    g = torch.Generator().manual_seed(seed)
    r = _Draw(g)
    C, H, N = n_embd, n_embd // head_size, head_size
    t: StateDict = {"emb.weight": r.normal(vocab_size, C, std=1.0)}
    for i in range(n_layer):
        b = f"blocks.{i}."
        if i == 0:
            t[b + "ln0.weight"], t[b + "ln0.bias"] = r.norm(C)
        t[b + "ln1.weight"], t[b + "ln1.bias"] = r.norm(C)
        t[b + "ln2.weight"], t[b + "ln2.bias"] = r.norm(C)
        layer = {"v4": _v4_layer, "v5": _v5_layer, "v6": _v6_layer, "v7": _v7_layer}[version]
        t.update({b + k: v for k, v in layer(r, C, H, N).items()})
        if time_state and version in ("v5", "v6"):
            t[b + "att.time_state"] = r.normal(H, N, N, std=0.5)
    t["ln_out.weight"], t["ln_out.bias"] = r.norm(C)
    t["head.weight"] = r.normal(vocab_size, C, std=2.0 / C**0.5)
    return {k: v.to(dtype).contiguous() for k, v in t.items()}


# The official Vision-RWKV sizes (224 px, patch 16, 1000 classes), for random-weight checkpoints of their shape
VISION_SHAPES = {
    "vrwkv-t": dict(embed_dims=192, depth=12, patch_size=16, grid=14, num_classes=1000),
    "vrwkv-s": dict(embed_dims=384, depth=12, patch_size=16, grid=14, num_classes=1000, layer_scale=True),
    "vrwkv-b": dict(embed_dims=768, depth=12, patch_size=16, grid=14, num_classes=1000, layer_scale=True),
}


def make_vision_checkpoint(
    embed_dims: int = 32,
    depth: int = 2,
    patch_size: int = 4,
    grid: int = 4,
    num_classes: int = 10,
    key_norm: bool = False,
    layer_scale: bool = False,
    hidden_rate: int = 4,
    seed: int = 0,
    dtype: torch.dtype = torch.float32,
) -> StateDict:
    """A random Vision-RWKV checkpoint in the official mmcls key layout (``backbone.*``, ``head.fc.*``),
    trained at ``grid`` x ``grid`` patches; ``num_classes=0`` leaves the head out (a backbone)."""
    r = _Draw(torch.Generator().manual_seed(seed))
    C, hidden = embed_dims, hidden_rate * embed_dims
    t: StateDict = {
        "patch_embed.projection.weight": r.linear(C, 3 * patch_size**2).reshape(C, 3, patch_size, patch_size),
        "patch_embed.projection.bias": r.normal(C, std=0.1),
        "pos_embed": r.normal(1, grid * grid, C, std=0.5),
    }
    for i in range(depth):
        b = f"layers.{i}."
        norms = ["ln0", "ln1", "ln2"] if i == 0 else ["ln1", "ln2"]
        norms += ["att.key_norm", "ffn.key_norm"] if key_norm else []
        for n in norms:
            t[b + n + ".weight"], t[b + n + ".bias"] = r.norm(hidden if n == "ffn.key_norm" else C)
        t.update({
            b + "att.spatial_decay": r.uniform(C, lo=-5.0, hi=3.0) + r.normal(C, std=1.0),  # w = decay / T
            b + "att.spatial_first": r.normal(C, std=1.0, mean=-1.2),
            **{b + f"att.spatial_mix_{x}": r.mix(C) for x in "kvr"},
            **{b + f"att.{x}.weight": r.linear(C, C) for x in ("key", "value", "receptance")},
            b + "att.output.weight": r.linear(C, C, gain=0.5),
            b + "ffn.spatial_mix_k": r.mix(C),
            b + "ffn.spatial_mix_r": r.mix(C),
            b + "ffn.key.weight": r.linear(hidden, C),
            b + "ffn.receptance.weight": r.linear(C, C),
            b + "ffn.value.weight": r.linear(C, hidden, gain=0.5),
        })
        if layer_scale:
            t[b + "gamma1"], t[b + "gamma2"] = r.uniform(C, lo=0.5, hi=1.5), r.uniform(C, lo=0.5, hi=1.5)
    t["ln1.weight"], t["ln1.bias"] = r.norm(C)
    t = {"backbone." + k: v for k, v in t.items()}
    if num_classes:
        t["head.fc.weight"], t["head.fc.bias"] = r.linear(num_classes, C, gain=2.0), r.normal(num_classes, std=0.1)
    return {k: v.to(dtype).contiguous() for k, v in t.items()}

def save_checkpoint(tensors: StateDict, path: str | Path) -> Path:
    """Write ``.pth`` (torch.save) or ``.safetensors``, chosen by the suffix."""
    path = Path(path)
    if path.suffix == ".safetensors":
        from safetensors.torch import save_file

        save_file(tensors, path)
    else:
        torch.save(tensors, path)
    return path


class _Draw:
    """Random tensors from one generator."""

    def __init__(self, g: torch.Generator) -> None:
        self.g = g

    def uniform(self, *shape: int, lo: float, hi: float) -> torch.Tensor:
        return lo + (hi - lo) * torch.rand(shape, generator=self.g)

    def normal(self, *shape: int, std: float, mean: float = 0.0) -> torch.Tensor:
        return mean + std * torch.randn(shape, generator=self.g)

    def norm(self, c: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.normal(c, std=0.1, mean=1.0), self.normal(c, std=0.05)

    def linear(self, n_out: int, n_in: int, gain: float = 1.0) -> torch.Tensor:
        return self.normal(n_out, n_in, std=gain / n_in**0.5)

    def mix(self, c: int) -> torch.Tensor:
        return self.uniform(1, 1, c, lo=0.0, hi=1.0)


def _ffn_v4(r: _Draw, C: int, mix_names: tuple[str, str], ffn_dim: int) -> StateDict:
    return {
        f"ffn.{mix_names[0]}": r.mix(C),
        f"ffn.{mix_names[1]}": r.mix(C),
        "ffn.key.weight": r.linear(ffn_dim, C),
        "ffn.receptance.weight": r.linear(C, C),
        "ffn.value.weight": r.linear(C, ffn_dim, gain=0.5),
    }


def _v4_layer(r: _Draw, C: int, H: int, N: int) -> StateDict:
    return {
        "att.time_decay": r.uniform(C, lo=-5.0, hi=1.0),  # decay per token: exp(-exp(time_decay))
        "att.time_first": r.normal(C, std=0.5, mean=-1.2),
        "att.time_mix_k": r.mix(C),
        "att.time_mix_v": r.mix(C),
        "att.time_mix_r": r.mix(C),
        "att.key.weight": r.linear(C, C),
        "att.value.weight": r.linear(C, C),
        "att.receptance.weight": r.linear(C, C),
        "att.output.weight": r.linear(C, C, gain=0.5),
        **_ffn_v4(r, C, ("time_mix_k", "time_mix_r"), 4 * C),
    }


def _v5_layer(r: _Draw, C: int, H: int, N: int) -> StateDict:
    return {
        "att.time_mix_k": r.mix(C),
        "att.time_mix_v": r.mix(C),
        "att.time_mix_r": r.mix(C),
        "att.time_mix_g": r.mix(C),
        "att.time_decay": r.uniform(H, N, lo=-6.0, hi=0.0),
        "att.time_faaaa": r.uniform(H, N, lo=-0.5, hi=0.5),
        "att.receptance.weight": r.linear(C, C),
        "att.key.weight": r.linear(C, C),
        "att.value.weight": r.linear(C, C),
        "att.gate.weight": r.linear(C, C),
        "att.output.weight": r.linear(C, C, gain=0.5),
        "att.ln_x.weight": r.uniform(C, lo=0.5, hi=1.5),
        "att.ln_x.bias": r.normal(C, std=0.05),
        **_ffn_v4(r, C, ("time_mix_k", "time_mix_r"), 4 * C),
    }


def _v6_layer(r: _Draw, C: int, H: int, N: int, mix_lora: int = 32, decay_lora: int = 64) -> StateDict:
    return {
        **{f"att.time_maa_{x}": r.mix(C) for x in ("x", "w", "k", "v", "r", "g")},
        "att.time_maa_w1": r.uniform(C, 5 * mix_lora, lo=-0.1, hi=0.1),
        "att.time_maa_w2": r.normal(5, mix_lora, C, std=0.1),
        "att.time_decay": r.uniform(1, 1, C, lo=-6.0, hi=0.0),
        "att.time_decay_w1": r.uniform(C, decay_lora, lo=-0.1, hi=0.1),
        "att.time_decay_w2": r.normal(decay_lora, C, std=0.1),
        "att.time_faaaa": r.uniform(H, N, lo=-0.5, hi=0.5),
        "att.receptance.weight": r.linear(C, C),
        "att.key.weight": r.linear(C, C),
        "att.value.weight": r.linear(C, C),
        "att.gate.weight": r.linear(C, C),
        "att.output.weight": r.linear(C, C, gain=0.5),
        "att.ln_x.weight": r.uniform(C, lo=0.5, hi=1.5),
        "att.ln_x.bias": r.normal(C, std=0.05),
        **_ffn_v4(r, C, ("time_maa_k", "time_maa_r"), int(C * 3.5) // 32 * 32),
    }


def _v7_layer(r: _Draw, C: int, H: int, N: int, decay_lora: int = 32, iclr_lora: int = 32,
              value_lora: int = 16, gate_lora: int = 64) -> StateDict:
    t = {f"att.x_{x}": r.mix(C) for x in ("r", "w", "k", "v", "a", "g")}
    t.update({
        "att.w0": r.uniform(1, 1, C, lo=-6.0, hi=2.0),  # decay exp(-0.607 sigmoid(w0 + lora)) in (0.59, 1)
        "att.w1": r.normal(C, decay_lora, std=0.1),
        "att.w2": r.normal(decay_lora, C, std=0.1),
        "att.a0": r.uniform(1, 1, C, lo=-1.0, hi=1.0),
        "att.a1": r.normal(C, iclr_lora, std=0.1),
        "att.a2": r.normal(iclr_lora, C, std=0.1),
        "att.v0": r.uniform(1, 1, C, lo=-0.5, hi=1.5),
        "att.v1": r.normal(C, value_lora, std=0.1),
        "att.v2": r.normal(value_lora, C, std=0.1),
        "att.g1": r.normal(C, gate_lora, std=0.1),
        "att.g2": r.normal(gate_lora, C, std=0.1),
        "att.k_k": r.normal(1, 1, C, std=0.1, mean=0.85),
        "att.k_a": r.normal(1, 1, C, std=0.1, mean=1.0),
        "att.r_k": r.normal(H, N, std=0.3),
        "att.receptance.weight": r.linear(C, C),
        "att.key.weight": r.linear(C, C),
        "att.value.weight": r.linear(C, C),
        "att.output.weight": r.linear(C, C, gain=0.5),
        "att.ln_x.weight": r.uniform(C, lo=0.5, hi=1.5),
        "att.ln_x.bias": r.normal(C, std=0.05),
        "ffn.x_k": r.mix(C),
        "ffn.key.weight": r.linear(4 * C, C),
        "ffn.value.weight": r.linear(C, 4 * C, gain=0.5),
    })
    return t
