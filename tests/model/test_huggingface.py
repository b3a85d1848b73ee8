"""Hugging Face model folders (model/huggingface.py, model/hf_layouts.py).

What each check is independent of:
- transformers RWKV-4: folders written by transformers itself (save_pretrained), logits against its own forward;
- rwkv7-hf: folders written by its own converter from an official checkpoint, logits against its own
  RWKV7ForCausalLM; the tensors must come back bit-exact;
- flash-linear-attention RWKV-6/RWKV-7 and the -HF RWKV-5/6 code cannot run here (Triton; remote code): the
  key names and shapes are a golden list copied from their source (cited below), and fla RWKV-6, whose
  tensors are regrouped and transposed, is run by a forward written here after fla's RWKV6Attention (its
  einsum and its r,w,k,v,g order), not after our table.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from rwkv_edge.errors import CheckpointError, ShapeError, UnknownArchitectureError
from rwkv_edge.model import load_model, model_from_checkpoint, model_from_state_dict
from rwkv_edge.model.synthetic import make_checkpoint, save_checkpoint
from rwkv_edge.model.sources import open_checkpoint

TOKENS = [1, 5, 7, 3, 9, 11, 2]
C, VOCAB = 64, 100


def spread(ours: torch.Tensor, ref: torch.Tensor) -> float:
    """max |ours - ref| over the std of ref."""
    return float((ours - ref).abs().max() / ref.std())


# -- transformers RWKV-4 --------------------------------------------------------------------------------
def _transformers_model(rescale_every: int):
    from transformers import RwkvConfig, RwkvForCausalLM

    torch.manual_seed(0)
    config = RwkvConfig(vocab_size=VOCAB, hidden_size=C, num_hidden_layers=2, intermediate_size=4 * C,
                        context_length=64, rescale_every=rescale_every)
    model = RwkvForCausalLM(config).eval()
    with torch.no_grad():  # trained-like values: unit norms, decays spread over fast and slow channels
        for name, p in model.named_parameters():
            p.copy_(torch.randn_like(p) * (0.1 if "ln" in name else 0.3) + (1.0 if "ln" in name and name.endswith("weight") else 0.0))
    return model


def _save_bin(model, folder: Path, shards: int) -> Path:
    """pytorch_model.bin (or its shards and index): transformers 5 writes safetensors only, so the torch zip files
    are written the way transformers 4 did (torch.save of the state dict, ``pytorch_model-0000k-of-0000n.bin``)."""
    folder.mkdir()
    model.config.save_pretrained(folder)
    state = {k: v.contiguous() for k, v in model.state_dict().items()}
    if shards == 1:
        torch.save(state, folder / "pytorch_model.bin")
        return folder
    names, weight_map = sorted(state), {}
    for k in range(shards):
        shard = f"pytorch_model-{k + 1:05d}-of-{shards:05d}.bin"
        part = names[k::shards]
        torch.save({n: state[n] for n in part}, folder / shard)
        weight_map.update({n: shard for n in part})
    (folder / "pytorch_model.bin.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    return folder


@pytest.fixture(scope="module")
def rwkv4_folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("hf-rwkv4")
    model = _transformers_model(rescale_every=0)
    model.save_pretrained(root / "safetensors")
    model.save_pretrained(root / "sharded", max_shard_size="60KB")
    _save_bin(model, root / "bin", 1)
    _save_bin(model, root / "bin-sharded", 3)
    return model, root


@pytest.mark.parametrize("form", ["safetensors", "sharded", "bin", "bin-sharded"])
def test_transformers_rwkv4_matches_its_own_forward(form, rwkv4_folders):
    model, root = rwkv4_folders
    if form == "sharded":
        assert len(list((root / form).glob("model-*-of-*.safetensors"))) > 1
    checkpoint = open_checkpoint(root / form)
    assert checkpoint.layout.startswith("Hugging Face transformers RWKV-4") and checkpoint.constants == {"norm_eps": 1e-5}
    with torch.no_grad():
        ref = model(torch.tensor([TOKENS])).logits[0]
    ours, _ = model_from_checkpoint(checkpoint)(TOKENS)
    assert spread(ours, ref) < 1e-5  # fp32 rounding (0.0 measured)


def test_a_cache_snapshot_of_links_reads_as_the_folder(rwkv4_folders, tmp_path):
    """A Hugging Face cache snapshot links every file to ../../blobs/: the folder's own entries, read through."""
    _, root = rwkv4_folders
    blobs, snapshot = tmp_path / "blobs", tmp_path / "snapshots" / "abc123"
    blobs.mkdir(), snapshot.mkdir(parents=True)
    for file in (root / "sharded").iterdir():
        shutil.copy(file, blobs / file.name)
        os.symlink(Path("../../blobs") / file.name, snapshot / file.name)
    linked, real = open_checkpoint(snapshot), open_checkpoint(root / "sharded")
    assert linked.sha256 == real.sha256 and linked.tensors.keys() == real.tensors.keys()
    assert all(torch.equal(linked.tensors[k], real.tensors[k]) for k in real.tensors)


def test_transformers_rescale_is_not_copied(tmp_path):
    """transformers halves the residual every ``rescale_every`` layers in eval, fp32 too: then each LayerNorm's
    eps acts on a halved stream. rwkv-edge computes the exact model; the difference, measured with a rescale at
    every layer (the most it can be): 1.5e-5 max|d|/std here (6.3e-6 for 12 layers at the default 6); the bound
    is that with some room (random values), far below what a wrong rescale moves (O(1))."""
    model = _transformers_model(rescale_every=1)
    model.save_pretrained(tmp_path / "m")
    with torch.no_grad():
        rescaled = model(torch.tensor([TOKENS])).logits[0]
    ours, _ = load_model(tmp_path / "m")(TOKENS)
    exact = spread(ours, rescaled)
    assert 0 < exact < 1e-4


def test_the_file_the_index_or_the_config_opens_the_whole_folder(rwkv4_folders):
    _, root = rwkv4_folders
    whole = open_checkpoint(root / "sharded")
    for path in [root / "sharded" / "config.json", root / "sharded" / "model.safetensors.index.json",
                 next((root / "sharded").glob("model-00002-*.safetensors")), root / "safetensors" / "model.safetensors",
                 root / "bin-sharded" / "pytorch_model.bin.index.json"]:
        opened = open_checkpoint(path)
        assert opened.tensors.keys() == whole.tensors.keys()
        assert all(torch.equal(opened.tensors[k], whole.tensors[k]) for k in whole.tensors)


def test_folder_digest_is_stable_and_follows_every_file(rwkv4_folders, tmp_path):
    _, root = rwkv4_folders
    folder = Path(shutil.copytree(root / "sharded", tmp_path / "copy"))
    first = open_checkpoint(folder).sha256
    assert open_checkpoint(folder).sha256 == first == open_checkpoint(root / "sharded").sha256
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, "bos_token_id": 7}))
    second = open_checkpoint(folder).sha256
    shard = next(folder.glob("model-00003-*.safetensors"))
    from safetensors.torch import load_file, save_file

    tensors = load_file(shard)
    save_file({k: v + 1 for k, v in tensors.items()}, shard)
    assert len({first, second, open_checkpoint(folder).sha256}) == 3


def test_blinkdl_files_read_as_before(make_ckpt):
    path = make_ckpt("v6")
    checkpoint = open_checkpoint(path)
    assert checkpoint.sha256 == hashlib.sha256(path.read_bytes()).hexdigest() and checkpoint.layout == "BlinkDL"
    saved = torch.load(path, weights_only=True)
    assert checkpoint.tensors.keys() == saved.keys() and all(torch.equal(checkpoint.tensors[k], saved[k]) for k in saved)
    assert checkpoint.constants == {}


# -- rwkv7-hf ---------------------------------------------------------------------------------------
def _rwkv7_hf_folder(tmp: Path, head_size: int) -> tuple[dict, Path]:
    from rwkv7_hf import converter

    tensors = make_checkpoint("v7", n_layer=2, n_embd=C, vocab_size=VOCAB, head_size=head_size, seed=1)
    save_checkpoint(tensors, tmp / f"v7-{head_size}.pth")
    converter.convert(argparse.Namespace(
        input=str(tmp / f"v7-{head_size}.pth"), output=str(tmp / f"hf-{head_size}"), vocab_file=None, precision="fp32",
        attn_mode="chunk", adapter_layout="reference", runtime_package_version="0.9.0", fuse_norm=False,
        max_shard_size="1000GB", low_memory=False))
    return tensors, tmp / f"hf-{head_size}"


@pytest.mark.parametrize("head_size", [32, 64])
def test_rwkv7_hf_folder_gives_back_the_official_tensors_and_its_forward(head_size, tmp_path):
    from rwkv7_hf.modeling_rwkv7 import RWKV7ForCausalLM

    official, folder = _rwkv7_hf_folder(tmp_path, head_size)
    checkpoint = open_checkpoint(folder)
    used = {k: v for k, v in official.items() if k not in ("blocks.0.att.v0", "blocks.0.att.v1", "blocks.0.att.v2")}
    assert checkpoint.tensors.keys() == used.keys()
    assert all(torch.equal(checkpoint.tensors[k], used[k]) for k in used)  # names, shapes and bits
    # rwkv7-hf's GroupNorm eps is head_dim * norm_eps: 32e-5 at head size 32 (the official 64e-5 at 64)
    assert checkpoint.constants == {"norm_eps": 1e-5, "ln_x_eps": pytest.approx(head_size * 1e-5)}
    source = RWKV7ForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    with torch.no_grad():
        ref = source(torch.tensor([TOKENS])).logits[0]
    ours, _ = model_from_checkpoint(checkpoint)(TOKENS)
    assert spread(ours, ref) < 1e-5  # 1.0e-6 measured at both head sizes
    blinkdl, _ = model_from_state_dict(official)(TOKENS)  # the official eps, 64e-5
    assert (spread(blinkdl, ref) > 1e-3) == (head_size == 32)  # 6.9e-3 at head size 32; 1.0e-6 at 64


# -- golden key lists from the source (per layer: name -> shape in C, H, N, F and the LoRA ranks) ---------
# flash-linear-attention 0.6.0 (PyPI wheel fla-core 0.6.0): fla/layers/rwkv7.py RWKV7Attention.__init__,
# fla/models/rwkv7/modeling_rwkv7.py RWKV7FeedForward and RWKV7Block
FLA_RWKV7_LAYER = {
    **{f"attn.x_{x}": lambda d: (1, 1, d["C"]) for x in "rwkvag"},
    "attn.k_k": lambda d: (d["C"],), "attn.k_a": lambda d: (d["C"],), "attn.r_k": lambda d: (d["H"], d["N"]),
    **{f"attn.{x}_proj.weight": lambda d: (d["C"], d["C"]) for x in "rkvo"},
    **{f"attn.{x}_lora.lora.0.weight": (lambda x: lambda d: (d[x], d["C"]))(x) for x in "wavg"},
    **{f"attn.{x}_lora.lora.2.weight": (lambda x: lambda d: (d["C"], d[x]))(x) for x in "wavg"},
    **{f"attn.{x}_lora.lora.2.bias": lambda d: (d["C"],) for x in "wav"},
    "attn.g_norm.weight": lambda d: (d["C"],), "attn.g_norm.bias": lambda d: (d["C"],),
    "ffn.x_k": lambda d: (d["C"],), "ffn.key.weight": lambda d: (d["F"], d["C"]), "ffn.value.weight": lambda d: (d["C"], d["F"]),
    **{f"{n}.{p}": lambda d: (d["C"],) for n in ("attn_norm", "ffn_norm") for p in ("weight", "bias")},
}
# flash-linear-attention 0.6.0: fla/layers/rwkv6.py RWKV6Attention (LerpLinear, DDLerpLinear, LoRA),
# fla/models/rwkv6/modeling_rwkv6.py RWKV6FeedForward and RWKV6Block
FLA_RWKV6_LAYER = {
    "attn.x_proj.0.mu": lambda d: (d["C"],), "attn.x_proj.0.linear.weight": lambda d: (5 * d["M"], d["C"]),
    "attn.x_proj.2.weight": lambda d: (d["C"], 5 * d["M"]), "attn.x_bias": lambda d: (5, d["C"]),
    **{f"attn.{x}_proj.linear.weight": lambda d: (d["C"], d["C"]) for x in "rkvg"},
    "attn.w_proj.linear.lora.0.weight": lambda d: (d["w"], d["C"]), "attn.w_proj.linear.lora.2.weight": lambda d: (d["C"], d["w"]),
    "attn.w_proj.linear.lora.2.bias": lambda d: (d["C"],), "attn.bonus": lambda d: (d["H"], d["N"]),
    "attn.g_norm.weight": lambda d: (d["C"],), "attn.g_norm.bias": lambda d: (d["C"],), "attn.o_proj.weight": lambda d: (d["C"], d["C"]),
    "ffn.key.mu": lambda d: (d["C"],), "ffn.key.linear.weight": lambda d: (d["F"], d["C"]),
    "ffn.receptance.mu": lambda d: (d["C"],), "ffn.receptance.linear.weight": lambda d: (d["C"], d["C"]),
    "ffn.value.weight": lambda d: (d["C"], d["F"]),
    **{f"{n}.{p}": lambda d: (d["C"],) for n in ("attn_norm", "ffn_norm") for p in ("weight", "bias")},
}
FLA_TOP = {"model.embeddings.weight": lambda d: (d["V"], d["C"]), "model.norm.weight": lambda d: (d["C"],),
           "model.norm.bias": lambda d: (d["C"],), "lm_head.weight": lambda d: (d["V"], d["C"]),
           "model.layers.0.pre_norm.weight": lambda d: (d["C"],), "model.layers.0.pre_norm.bias": lambda d: (d["C"],)}
# The -HF repositories' code: github.com/BBuf/RWKV-World-HF-Tokenizer at 699270b (2024-05-11), rwkv5_model/ and
# rwkv6_model/ modeling_rwkv{5,6}.py (Rwkv{5,6}SelfAttention, Rwkv{5,6}FeedForward, Rwkv{5,6}Block, Rwkv{5,6}Model);
# scripts/convert_rwkv{5,6}_checkpoint_to_hf.py name each tensor after the official one (right column)
HF_V5_LAYER = {
    "attention.time_decay": "att.time_decay", "attention.time_faaaa": "att.time_faaaa",
    **{f"attention.time_mix_{x}": f"att.time_mix_{x[0]}" for x in ("key", "value", "receptance", "gate")},
    **{f"attention.{x}.weight": f"att.{x}.weight" for x in ("key", "value", "receptance", "gate", "output")},
    "attention.ln_x.weight": "att.ln_x.weight", "attention.ln_x.bias": "att.ln_x.bias",
    "feed_forward.time_mix_key": "ffn.time_mix_k", "feed_forward.time_mix_receptance": "ffn.time_mix_r",
    **{f"feed_forward.{x}.weight": f"ffn.{x}.weight" for x in ("key", "receptance", "value")},
    **{f"{n}.{p}": f"{n}.{p}" for n in ("ln1", "ln2") for p in ("weight", "bias")},
}
HF_V6_LAYER = {
    **{f"attention.time_maa_{x}": f"att.time_maa_{x}" for x in ("x", "w", "k", "v", "r", "g", "w1", "w2")},
    **{f"attention.time_{x}": f"att.time_{x}" for x in ("decay", "decay_w1", "decay_w2", "faaaa")},
    **{f"attention.{x}.weight": f"att.{x}.weight" for x in ("key", "value", "receptance", "gate", "output")},
    "attention.ln_x.weight": "att.ln_x.weight", "attention.ln_x.bias": "att.ln_x.bias",
    "feed_forward.time_maa_k": "ffn.time_maa_k", "feed_forward.time_maa_r": "ffn.time_maa_r",
    **{f"feed_forward.{x}.weight": f"ffn.{x}.weight" for x in ("key", "receptance", "value")},
    **{f"{n}.{p}": f"{n}.{p}" for n in ("ln1", "ln2") for p in ("weight", "bias")},
}
HF_TOP = {"rwkv.embeddings.weight": "emb.weight", "rwkv.blocks.0.pre_ln.weight": "blocks.0.ln0.weight",
          "rwkv.blocks.0.pre_ln.bias": "blocks.0.ln0.bias", "rwkv.ln_out.weight": "ln_out.weight",
          "rwkv.ln_out.bias": "ln_out.bias", "head.weight": "head.weight"}


def _golden(layer: dict, top: dict, n_layer: int, sizes: dict, skip_layer0: str = "") -> dict[str, tuple[int, ...]]:
    names = {k: f(sizes) for k, f in top.items()}
    for i in range(n_layer):
        names.update({f"model.layers.{i}.{k}": f(sizes) for k, f in layer.items() if not (i == 0 and skip_layer0 and k.startswith(skip_layer0))})
    return names


def test_fla_rwkv7_names_are_rwkv7_hf_names(tmp_path):
    """fla's RWKV-7 and rwkv7-hf share one layout: the golden fla names and shapes are those of the folder
    rwkv7-hf's converter writes."""
    _, folder = _rwkv7_hf_folder(tmp_path, 32)
    from safetensors.torch import load_file

    written = {k: tuple(v.shape) for k, v in load_file(next(folder.glob("*.safetensors"))).items()}
    sizes = {"C": C, "H": 2, "N": 32, "F": 4 * C, "V": VOCAB, "w": 32, "a": 32, "v": 16, "g": 64}
    assert written == _golden(FLA_RWKV7_LAYER, FLA_TOP, 2, sizes, skip_layer0="attn.v_lora")


# -- flash-linear-attention RWKV-6 -------------------------------------------------------------------
FLA6 = {"C": C, "H": 2, "N": 32, "F": 224, "V": VOCAB, "M": 8, "w": 16}


def _fla_rwkv6_folder(tmp: Path, **config) -> tuple[dict, Path]:
    g = torch.Generator().manual_seed(3)
    tensors = {}
    for name, shape in _golden(FLA_RWKV6_LAYER, FLA_TOP, 2, FLA6).items():
        if name.endswith(("norm.weight",)):
            t = 1 + 0.1 * torch.randn(shape, generator=g)
        elif name.endswith(("mu", "x_bias")):
            t = torch.rand(shape, generator=g)
        elif name.endswith("lora.2.bias"):
            t = -6 + 6 * torch.rand(shape, generator=g)
        else:
            t = torch.randn(shape, generator=g) * (1.0 if "embeddings" in name else 0.3 / shape[-1] ** 0.25)
        tensors[name] = t
    folder = tmp / "fla-rwkv6"
    folder.mkdir()
    from safetensors.torch import save_file

    save_file(tensors, folder / "model.safetensors")
    (folder / "config.json").write_text(json.dumps({
        "model_type": "rwkv6", "architectures": ["RWKV6ForCausalLM"], "hidden_size": C, "num_hidden_layers": 2,
        "num_heads": 2, "expand_k": 1, "expand_v": 1, "proj_low_rank_dim": 8, "gate_low_rank_dim": 16,
        "intermediate_size": 224, "hidden_act": "sqrelu", "norm_first": True, "norm_bias": True, "norm_eps": 1e-5,
        "attn": None, "vocab_size": VOCAB, **config}))
    return tensors, folder


def _fla_rwkv6_forward(t: dict, tokens: list[int], H: int, eps: float) -> torch.Tensor:
    """fla 0.6.0's RWKV6ForCausalLM in fp32, written after RWKV6Attention.forward and RWKV6FeedForward: one
    sequence, token shift from zeros, the recurrence token by token."""
    def ln(x, name):
        return F.layer_norm(x, x.shape[-1:], t[name + ".weight"], t[name + ".bias"], eps)

    def delta(h):  # token_shift: the previous token minus this one
        return F.pad(h[:-1], (0, 0, 1, 0)) - h

    x = t["model.embeddings.weight"][tokens]  # (T, C)
    T = x.shape[0]
    for i in range(2):
        p = f"model.layers.{i}."
        if i == 0:
            x = ln(x, p + "pre_norm")
        h = ln(x, p + "attn_norm")
        d = delta(h)
        low = torch.tanh((h + d * t[p + "attn.x_proj.0.mu"]) @ t[p + "attn.x_proj.0.linear.weight"].T).view(T, 5, -1)
        mixed = torch.einsum("tnr,hnr->tnh", low, t[p + "attn.x_proj.2.weight"].view(C, 5, -1)) + t[p + "attn.x_bias"]
        r, w, k, v, g = mixed.unbind(-2)
        r = (h + d * r) @ t[p + "attn.r_proj.linear.weight"].T
        lora = torch.tanh((h + d * w) @ t[p + "attn.w_proj.linear.lora.0.weight"].T)
        w = lora @ t[p + "attn.w_proj.linear.lora.2.weight"].T + t[p + "attn.w_proj.linear.lora.2.bias"]
        k = (h + d * k) @ t[p + "attn.k_proj.linear.weight"].T
        v = (h + d * v) @ t[p + "attn.v_proj.linear.weight"].T
        g = (h + d * g) @ t[p + "attn.g_proj.linear.weight"].T
        r, w, k, v = (z.view(T, H, -1) for z in (r, w, k, v))
        decay, u, state, out = torch.exp(-torch.exp(w)), t[p + "attn.bonus"], torch.zeros(H, C // H, C // H), []
        for s in range(T):
            kv = k[s].unsqueeze(-1) * v[s].unsqueeze(-2)  # (H, K, V)
            out.append((r[s].unsqueeze(-2) @ (state + u.unsqueeze(-1) * kv)).squeeze(-2))
            state = decay[s].unsqueeze(-1) * state + kv
        o = F.group_norm(torch.stack(out).reshape(T, C), H, t[p + "attn.g_norm.weight"], t[p + "attn.g_norm.bias"], eps)
        x = x + (o * F.silu(g)) @ t[p + "attn.o_proj.weight"].T
        h = ln(x, p + "ffn_norm")
        d = delta(h)
        key = torch.relu((h + d * t[p + "ffn.key.mu"]) @ t[p + "ffn.key.linear.weight"].T) ** 2
        rec = torch.sigmoid((h + d * t[p + "ffn.receptance.mu"]) @ t[p + "ffn.receptance.linear.weight"].T)
        x = x + rec * (key @ t[p + "ffn.value.weight"].T)
    return ln(x, "model.norm") @ t["lm_head.weight"].T


def test_fla_rwkv6_folder_computes_what_fla_computes(tmp_path):
    tensors, folder = _fla_rwkv6_folder(tmp_path)
    checkpoint = open_checkpoint(folder)
    # fla's RWKV-6 GroupNorm takes norm_eps itself, not the official 64e-5
    assert checkpoint.layout.startswith("Hugging Face flash-linear-attention RWKV-6")
    assert checkpoint.constants == {"norm_eps": 1e-5, "ln_x_eps": 1e-5}
    ours, _ = model_from_checkpoint(checkpoint)(TOKENS)
    ref = _fla_rwkv6_forward(tensors, TOKENS, 2, 1e-5)
    assert spread(ours, ref) < 1e-5


# -- the -HF RWKV-5/6 repositories ------------------------------------------------------------------
@pytest.mark.parametrize("version,layer", [("v5", HF_V5_LAYER), ("v6", HF_V6_LAYER)])
def test_hf_rwkv5_rwkv6_folders_give_back_the_official_tensors(version, layer, tmp_path):
    official = make_checkpoint(version, n_layer=2, n_embd=C, vocab_size=VOCAB, head_size=32, seed=2)
    names = dict(HF_TOP)
    for i in range(2):
        names.update({f"rwkv.blocks.{i}.{hf}": f"blocks.{i}.{ours}" for hf, ours in layer.items()})
    assert sorted(names.values()) == sorted(official)  # the golden list covers the official layout
    folder = tmp_path / version
    folder.mkdir()
    torch.save({hf: official[ours] for hf, ours in names.items()}, folder / "pytorch_model.bin")
    (folder / "config.json").write_text(json.dumps({
        "model_type": f"rwkv{version[1]}", "architectures": [f"Rwkv{version[1]}ForCausalLM"], "vocab_size": VOCAB,
        "hidden_size": C, "num_hidden_layers": 2, "attention_hidden_size": C, "head_size": 32, "intermediate_size": None,
        "layer_norm_epsilon": 1e-5, "rescale_every": 6, "head_size_divisor": 4}))
    checkpoint = open_checkpoint(folder)
    assert checkpoint.tensors.keys() == official.keys() and all(torch.equal(checkpoint.tensors[k], official[k]) for k in official)
    # GroupNorm of the WKV output over head_size_divisor with eps 1e-5 (v5), eps 1e-5 * divisor**2 (v6): 16e-5 at 4
    assert checkpoint.constants == {"norm_eps": 1e-5, "ln_x_eps": pytest.approx(16e-5)}
    model = model_from_checkpoint(checkpoint)
    assert model.config.ln_x_eps == pytest.approx(16e-5)
    x = torch.randn(3, C)
    lx = checkpoint.tensors["blocks.0.att.ln_x.weight"], checkpoint.tensors["blocks.0.att.ln_x.bias"]
    assert torch.allclose(F.group_norm(x / 4, 2, *lx, eps=1e-5), F.group_norm(x, 2, *lx, eps=model.config.ln_x_eps), atol=1e-5)


# -- bad folders: one line each, typed ---------------------------------------------------------------
def _bad(case: str, root: Path, tmp: Path) -> Path:
    folder = Path(shutil.copytree(root / ("sharded" if "shard" in case or "index" in case else "safetensors"), tmp / "m"))
    index = folder / "model.safetensors.index.json"
    shard = next(folder.glob("model-00002-*.safetensors"), None)

    def edit_config(**changes):
        (folder / "config.json").write_text(json.dumps({**json.loads((folder / "config.json").read_text()), **changes}))

    def edit_index(change):
        data = json.loads(index.read_text())
        change(data["weight_map"])
        index.write_text(json.dumps(data))

    if case == "no config.json":
        (folder / "config.json").unlink()
    elif case == "config.json not JSON":
        (folder / "config.json").write_text("{'model_type': rwkv")
    elif case == "missing shard":
        shard.unlink()
    elif case == "shard with keys the index does not list":
        first = next(folder.glob("model-00001-*.safetensors")).name  # one of its tensors listed in another shard
        edit_index(lambda m: m.update({next(k for k, v in m.items() if v == first): shard.name}))
    elif case == "tensors missing for the layout":
        from safetensors.torch import load_file, save_file

        tensors = load_file(folder / "model.safetensors")
        del tensors["rwkv.blocks.1.attention.key.weight"]
        save_file(tensors, folder / "model.safetensors")
    elif case == "config does not match the tensors":
        edit_config(vocab_size=VOCAB + 1)
    elif case == "another architecture":
        edit_config(model_type="llama", architectures=["LlamaForCausalLM"])
    elif case == "an RWKV layout not supported":
        edit_config(model_type="rwkv7")
    elif case == "an option not computed":
        edit_config(layer_norm_epsilon=1e-6)
    elif case in ("index names a file outside", "index names an absolute path"):
        outside = "../outside.safetensors" if "outside" in case else str(tmp / "outside.safetensors")
        shutil.copy(shard, tmp / "outside.safetensors")
        edit_index(lambda m: m.update({k: outside for k, v in m.items() if v == shard.name}))
    elif case == "weights file without config.json beside it":
        (folder / "config.json").unlink()
        return folder / "model.safetensors"
    return folder


BAD = [
    ("no config.json", CheckpointError, "is a directory"),
    ("config.json not JSON", CheckpointError, "not valid JSON"),
    ("missing shard", CheckpointError, "which is not in the folder"),
    ("shard with keys the index does not list", CheckpointError, "which the index does not list"),
    ("tensors missing for the layout", ShapeError, "missing blocks.1.att.key.weight"),
    ("config does not match the tensors", ShapeError, f"vocab_size = {VOCAB + 1}, but the tensors have {VOCAB}"),
    ("another architecture", UnknownArchitectureError, "a Hugging Face 'llama' model (LlamaForCausalLM)"),
    ("an RWKV layout not supported", UnknownArchitectureError, "model_type 'rwkv7', but its tensors"),
    ("an option not computed", UnknownArchitectureError, "layer_norm_epsilon = 1e-06"),
    ("index names a file outside", CheckpointError, "not a plain file name"),
    ("index names an absolute path", CheckpointError, "not a plain file name"),
    ("weights file without config.json beside it", CheckpointError, "has no config.json"),
]


@pytest.mark.parametrize("case,error,message", BAD, ids=[b[0] for b in BAD])
def test_bad_folders_are_one_typed_line(case, error, message, rwkv4_folders, tmp_path):
    path = _bad(case, rwkv4_folders[1], tmp_path)
    with pytest.raises(error) as raised:
        load_model(path)
    text = str(raised.value)
    assert message in text and "\n" not in text, text
    if "supported" in case or "architecture" in case:
        assert "supported Hugging Face layouts" in text


def test_fla_option_rwkv_edge_does_not_compute(tmp_path):
    _, folder = _fla_rwkv6_folder(tmp_path, norm_first=False)
    with pytest.raises(UnknownArchitectureError, match="norm_first = False"):
        open_checkpoint(folder)


# -- the commands --------------------------------------------------------------------------------------
def test_info_export_and_verify_a_folder(rwkv4_folders, tmp_path, cli):
    folder = rwkv4_folders[1] / "sharded"
    code, out, err = cli("info", str(folder))
    assert code == 0, err
    assert "format        Hugging Face transformers RWKV-4 folder" in out and "norm_eps      1e-05" in out
    code, out, err = cli("export", "onnx", str(folder), "-o", str(tmp_path / "onnx"))
    assert code == 0, err
    manifest = json.loads((tmp_path / "onnx" / "manifest.json").read_text())
    assert manifest["source"] == {"checkpoint": str(folder.resolve()), "sha256": open_checkpoint(folder).sha256}
    code, out, err = cli("verify", str(tmp_path / "onnx"), "--against-checkpoint")
    assert code == 0 and "PASS" in out, out + err
