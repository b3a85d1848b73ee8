"""The Hugging Face layouts of RWKV models: for each, how to tell it, the table that renames its tensors to
the official (BlinkDL) names, what its ``config.json`` must agree with, and the constants it computes with.

A table row is ``(source pattern, ((official name, transform), ...))``: ``{i}`` in a pattern is a layer
index, and one source tensor may give several official ones (flash-linear-attention's RWKV-6 keeps the
five token-shift biases in one ``x_bias``). Where each table comes from, and which quirks of its source
the constants reproduce, is in docs/inputs.md.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import torch

from .checkpoint import StateDict, dims, n_layers

Transform = Callable[[torch.Tensor], torch.Tensor]
Row = tuple[str, tuple[tuple[str, Transform], ...]]
Compiled = tuple[tuple[re.Pattern, tuple[tuple[str, Transform], ...]], ...]


def same(t: torch.Tensor) -> torch.Tensor:
    return t


def vector(t: torch.Tensor) -> torch.Tensor:
    """(C,) -> (1, 1, C), the shape official checkpoints store mixing vectors in."""
    return t.reshape(1, 1, -1)


def transposed(t: torch.Tensor) -> torch.Tensor:
    """A ``nn.Linear`` weight (out, in) -> the official ``x @ W`` matrix (in, out)."""
    return t.t().contiguous()


def row(n: int) -> Transform:
    """Row ``n`` of a (5, C) stack, as a (1, 1, C) vector."""
    return lambda t: vector(t[n])


# flash-linear-attention's RWKV-6 orders its five token-shift LoRAs r, w, k, v, g; the official order is w, k, v, r, g
_FLA_TO_OFFICIAL = [1, 2, 3, 0, 4]


def fla_mix_down(t: torch.Tensor) -> torch.Tensor:
    """``x_proj.0.linear.weight`` (5 D, C), groups r,w,k,v,g -> ``time_maa_w1`` (C, 5 D), groups w,k,v,r,g."""
    return t.reshape(5, -1, t.shape[-1])[_FLA_TO_OFFICIAL].reshape(t.shape).t().contiguous()


def fla_mix_up(t: torch.Tensor) -> torch.Tensor:
    """``x_proj.2.weight`` (C, 5 D), groups r,w,k,v,g -> ``time_maa_w2`` (5, D, C), groups w,k,v,r,g."""
    return t.reshape(t.shape[0], 5, -1).permute(1, 2, 0)[_FLA_TO_OFFICIAL].contiguous()


def _renamed(*pairs: tuple[str, str]) -> tuple[Row, ...]:
    return tuple((source, ((official, same),)) for source, official in pairs)


# -- the tables -------------------------------------------------------------------------------------
# transformers' RwkvForCausalLM and the "-HF" repositories' Rwkv5/Rwkv6ForCausalLM (same converter lineage):
# the official names under rwkv., with embeddings, pre_ln, attention, feed_forward, and spelled-out time_mix_*
_TRANSFORMERS_FAMILY: tuple[Row, ...] = _renamed(
    ("rwkv.embeddings.weight", "emb.weight"),
    ("rwkv.blocks.{i}.pre_ln.(weight|bias)", "blocks.{i}.ln0.{1}"),
    ("rwkv.blocks.{i}.(ln1|ln2).(weight|bias)", "blocks.{i}.{1}.{2}"),
    ("rwkv.blocks.{i}.attention.time_mix_key", "blocks.{i}.att.time_mix_k"),
    ("rwkv.blocks.{i}.attention.time_mix_value", "blocks.{i}.att.time_mix_v"),
    ("rwkv.blocks.{i}.attention.time_mix_receptance", "blocks.{i}.att.time_mix_r"),
    ("rwkv.blocks.{i}.attention.time_mix_gate", "blocks.{i}.att.time_mix_g"),
    ("rwkv.blocks.{i}.attention.(time_\\w+)", "blocks.{i}.att.{1}"),
    ("rwkv.blocks.{i}.attention.(key|value|receptance|gate|output).weight", "blocks.{i}.att.{1}.weight"),
    ("rwkv.blocks.{i}.attention.ln_x.(weight|bias)", "blocks.{i}.att.ln_x.{1}"),
    ("rwkv.blocks.{i}.feed_forward.time_mix_key", "blocks.{i}.ffn.time_mix_k"),
    ("rwkv.blocks.{i}.feed_forward.time_mix_receptance", "blocks.{i}.ffn.time_mix_r"),
    ("rwkv.blocks.{i}.feed_forward.(time_maa_k|time_maa_r)", "blocks.{i}.ffn.{1}"),
    ("rwkv.blocks.{i}.feed_forward.(key|receptance|value).weight", "blocks.{i}.ffn.{1}.weight"),
    ("rwkv.ln_out.(weight|bias)", "ln_out.{1}"),
    ("head.weight", "head.weight"),
)

# what flash-linear-attention's RWKV-6 and RWKV-7 (and rwkv7-hf, the same names) share
_FLA_COMMON: tuple[Row, ...] = _renamed(
    ("model.embeddings.weight", "emb.weight"),
    ("model.layers.{i}.pre_norm.(weight|bias)", "blocks.{i}.ln0.{1}"),
    ("model.layers.{i}.attn_norm.(weight|bias)", "blocks.{i}.ln1.{1}"),
    ("model.layers.{i}.ffn_norm.(weight|bias)", "blocks.{i}.ln2.{1}"),
    ("model.layers.{i}.attn.o_proj.weight", "blocks.{i}.att.output.weight"),
    ("model.layers.{i}.attn.g_norm.(weight|bias)", "blocks.{i}.att.ln_x.{1}"),
    ("model.norm.(weight|bias)", "ln_out.{1}"),
    ("lm_head.weight", "head.weight"),
)

# flash-linear-attention 0.6.0 fla/layers/rwkv6.py (RWKV6Attention) and fla/models/rwkv6 (RWKV6FeedForward)
_FLA_RWKV6: tuple[Row, ...] = _FLA_COMMON + (
    ("model.layers.{i}.attn.x_proj.0.mu", (("blocks.{i}.att.time_maa_x", vector),)),
    ("model.layers.{i}.attn.x_proj.0.linear.weight", (("blocks.{i}.att.time_maa_w1", fla_mix_down),)),
    ("model.layers.{i}.attn.x_proj.2.weight", (("blocks.{i}.att.time_maa_w2", fla_mix_up),)),
    ("model.layers.{i}.attn.x_bias", tuple((f"blocks.{{i}}.att.time_maa_{x}", row(n)) for n, x in enumerate("rwkvg"))),
    ("model.layers.{i}.attn.(r|k|v|g)_proj.linear.weight", (("blocks.{i}.att.{proj}.weight", same),)),
    ("model.layers.{i}.attn.w_proj.linear.lora.0.weight", (("blocks.{i}.att.time_decay_w1", transposed),)),
    ("model.layers.{i}.attn.w_proj.linear.lora.2.weight", (("blocks.{i}.att.time_decay_w2", transposed),)),
    ("model.layers.{i}.attn.w_proj.linear.lora.2.bias", (("blocks.{i}.att.time_decay", vector),)),
    ("model.layers.{i}.attn.bonus", (("blocks.{i}.att.time_faaaa", same),)),
    ("model.layers.{i}.ffn.(key|receptance).mu", (("blocks.{i}.ffn.time_maa_{1:.1}", vector),)),
    ("model.layers.{i}.ffn.(key|receptance).linear.weight", (("blocks.{i}.ffn.{1}.weight", same),)),
    ("model.layers.{i}.ffn.value.weight", (("blocks.{i}.ffn.value.weight", same),)),
)

# rwkv7-hf 0.9.0 converter.translate_name, inverted; flash-linear-attention 0.6.0 fla/layers/rwkv7.py has the same names
_RWKV7: tuple[Row, ...] = _FLA_COMMON + (
    ("model.layers.{i}.attn.(x_r|x_w|x_k|x_v|x_a|x_g|k_k|k_a)", (("blocks.{i}.att.{1}", vector),)),
    ("model.layers.{i}.attn.r_k", (("blocks.{i}.att.r_k", same),)),
    ("model.layers.{i}.attn.(r|k|v)_proj.weight", (("blocks.{i}.att.{proj}.weight", same),)),
    ("model.layers.{i}.attn.(w|a|v|g)_lora.lora.0.weight", (("blocks.{i}.att.{1}1", transposed),)),
    ("model.layers.{i}.attn.(w|a|v|g)_lora.lora.2.weight", (("blocks.{i}.att.{1}2", transposed),)),
    ("model.layers.{i}.attn.(w|a|v)_lora.lora.2.bias", (("blocks.{i}.att.{1}0", vector),)),
    ("model.layers.{i}.ffn.x_k", (("blocks.{i}.ffn.x_k", vector),)),
    ("model.layers.{i}.ffn.(key|value).weight", (("blocks.{i}.ffn.{1}.weight", same),)),
)

_PROJECTIONS = {"r": "receptance", "k": "key", "v": "value", "g": "gate"}  # {proj} in a target


# -- config.json against the tensors, and the constants ----------------------------------------------
def _ffn(t: StateDict) -> int:
    return dims(t, "blocks.0.ffn.key.weight", 2)[0]


def _heads(t: StateDict) -> tuple[int, int]:
    return dims(t, "blocks.0.att.time_faaaa", 2)


_SIZES: dict[str, Callable[[StateDict], Any]] = {  # config field -> its value read from the official tensors
    "vocab_size": lambda t: dims(t, "emb.weight", 2)[0],
    "hidden_size": lambda t: dims(t, "emb.weight", 2)[1],
    "num_hidden_layers": n_layers,
    "intermediate_size": _ffn,
    "attention_hidden_size": lambda t: dims(t, "blocks.0.att.key.weight", 2)[0],
}
_MATRIX_HEADS = {"head_size": lambda t: _heads(t)[1]}
_FLA_RWKV6_SIZES = {
    "num_heads": lambda t: _heads(t)[0],
    "proj_low_rank_dim": lambda t: dims(t, "blocks.0.att.time_maa_w1", 2)[1] // 5,
    "gate_low_rank_dim": lambda t: dims(t, "blocks.0.att.time_decay_w1", 2)[1],
}
_RWKV7_SIZES = {
    "num_heads": lambda t: dims(t, "blocks.0.att.r_k", 2)[0],
    "head_dim": lambda t: dims(t, "blocks.0.att.r_k", 2)[1],
    "decay_low_rank_dim": lambda t: dims(t, "blocks.0.att.w1", 2)[1],
    "a_low_rank_dim": lambda t: dims(t, "blocks.0.att.a1", 2)[1],
    "gate_low_rank_dim": lambda t: dims(t, "blocks.0.att.g1", 2)[1],
    "v_low_rank_dim": lambda t: dims(t, "blocks.1.att.v1", 2)[1] if "blocks.1.att.v1" in t else None,
    "value_dim": lambda t: [dims(t, f"blocks.{i}.att.value.weight", 2)[0] for i in range(n_layers(t))],
}


def _get(config: Mapping[str, Any], key: str, default: Any) -> Any:
    value = config.get(key)
    return default if value is None else value


def _transformers_eps(config: Mapping[str, Any]) -> dict[str, float]:
    """transformers' RWKV (and the -HF copies): ``layer_norm_epsilon`` in every LayerNorm but ``ln_out``,
    which keeps torch's 1e-5; one eps for all is what rwkv-edge has, so they must agree."""
    return {"norm_eps": float(_get(config, "layer_norm_epsilon", 1e-5))}


def _hf_matrix_constants(config: Mapping[str, Any]) -> dict[str, float]:
    """The -HF RWKV-5/6 code: GroupNorm eps 1e-5 on the WKV output divided by ``head_size_divisor`` (v5), or
    eps ``1e-5 * head_size_divisor**2`` (v6): the same normalisation, ``ln_x_eps = 1e-5 * divisor**2``."""
    return {**_transformers_eps(config), "ln_x_eps": 1e-5 * float(_get(config, "head_size_divisor", 8)) ** 2}


def _fla_rwkv6_constants(config: Mapping[str, Any]) -> dict[str, float]:
    """fla's RWKV6Attention: its GroupNorm takes ``norm_eps`` itself (not the official 64e-5)."""
    eps = float(_get(config, "norm_eps", 1e-5))
    return {"norm_eps": eps, "ln_x_eps": eps}


def _rwkv7_constants(config: Mapping[str, Any]) -> dict[str, float]:
    """rwkv7-hf and fla: GroupNorm eps ``head_dim * norm_eps`` (the official 64e-5 at head size 64 only)."""
    eps = float(_get(config, "norm_eps", 1e-5))
    return {"norm_eps": eps, "ln_x_eps": float(_get(config, "head_dim", 64)) * eps}


# config fields whose other values rwkv-edge does not compute: field -> (the supported value, its default)
_TRANSFORMERS_FIXED = {"layer_norm_epsilon": (1e-5, 1e-5)}  # must equal ln_out's fixed 1e-5
_FLA_FIXED = {"norm_first": (True, True), "norm_bias": (True, True), "attn": (None, None),
              "hidden_act": ("sqrelu", "sqrelu")}
_FLA_RWKV6_FIXED = {**_FLA_FIXED, "expand_k": (1, 0.5), "expand_v": (1, 1)}


# -- renaming ---------------------------------------------------------------------------------------


def compiled(table: tuple[Row, ...]) -> Compiled:
    """The table's patterns as regular expressions: "." is a dot, {i} a layer index, (a|b) and (\\w+) groups."""
    return tuple((re.compile(source.replace(".", r"\.").replace("{i}", r"(?P<i>0|[1-9][0-9]*)")), targets)
                 for source, targets in table)


def official_name(template: str, match: re.Match) -> str:
    """A target template filled from a source match: {i} the layer, {1}, {2} the other groups ({1:.1} the first
    letter of the first), {proj} the projection a one-letter first group names."""
    index = match.re.groupindex.get("i")
    groups = [match.group(k) for k in range(1, match.re.groups + 1) if k != index]
    return template.format("", *groups, i=match.groupdict().get("i"), proj=_PROJECTIONS.get(groups[0] if groups else "", ""))


def rename(layout: "Layout", tensors: StateDict) -> tuple[StateDict, list[str]]:
    """The official tensors of ``tensors`` (in ``layout``), and the source names no row of its table matches."""
    out: StateDict = {}
    unmatched: list[str] = []
    for name, t in tensors.items():
        for pattern, targets in layout.table:
            match = pattern.fullmatch(name)
            if match:
                out.update((official_name(template, match), transform(t)) for template, transform in targets)
                break
        else:
            unmatched.append(name)
    return out, unmatched


@dataclass(frozen=True)
class Layout:
    label: str  # Checkpoint.layout: what `info` and messages call it
    model_type: str  # config.json's model_type
    marker: str  # a key name only this layout (of those with its model_type) has
    version: str  # the architecture it holds (architectures.py)
    table: Compiled  # compiled(the rows)
    sizes: Mapping[str, Callable[[StateDict], Any]]  # config fields checked against the tensors
    fixed: Mapping[str, tuple[Any, Any]]
    constants: Callable[[Mapping[str, Any]], dict[str, float]]


LAYOUTS: tuple[Layout, ...] = (
    Layout("Hugging Face transformers RWKV-4 folder (RwkvForCausalLM)", "rwkv", "rwkv.blocks.0.attention.time_first",
           "v4", compiled(_TRANSFORMERS_FAMILY), _SIZES, _TRANSFORMERS_FIXED, _transformers_eps),
    Layout("Hugging Face RWKV-5 -HF folder (Rwkv5ForCausalLM)", "rwkv5", "rwkv.blocks.0.attention.time_faaaa",
           "v5", compiled(_TRANSFORMERS_FAMILY), {**_SIZES, **_MATRIX_HEADS}, _TRANSFORMERS_FIXED, _hf_matrix_constants),
    Layout("Hugging Face RWKV-6 -HF folder (Rwkv6ForCausalLM)", "rwkv6", "rwkv.blocks.0.attention.time_maa_x",
           "v6", compiled(_TRANSFORMERS_FAMILY), {**_SIZES, **_MATRIX_HEADS}, _TRANSFORMERS_FIXED, _hf_matrix_constants),
    Layout("Hugging Face flash-linear-attention RWKV-6 folder (RWKV6ForCausalLM)", "rwkv6",
           "model.layers.0.attn.x_proj.0.mu", "v6", compiled(_FLA_RWKV6), {**_SIZES, **_FLA_RWKV6_SIZES}, _FLA_RWKV6_FIXED,
           _fla_rwkv6_constants),
    Layout("Hugging Face RWKV-7 folder (rwkv7-hf / flash-linear-attention RWKV7ForCausalLM)", "rwkv7",
           "model.layers.0.attn.x_r", "v7", compiled(_RWKV7), {**_SIZES, **_RWKV7_SIZES}, _FLA_FIXED, _rwkv7_constants),
)

SUPPORTED = "supported Hugging Face layouts: " + "; ".join(f"{x.label} [model_type {x.model_type}]" for x in LAYOUTS)
MARKERS = tuple(x.marker for x in LAYOUTS)


