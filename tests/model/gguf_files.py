"""GGUF files in llama.cpp's RWKV layout, written with the ``gguf`` package from official (BlinkDL) tensors.

This writer is our own reading of llama.cpp's converter (convert_hf_to_gguf.py, Rwkv6Model / Rwkv7Model:
renames, squeezed vectors, fused token-shift mixes, transposed LoRAs, layer 0's placeholder v0/v1/v2,
the rwkv6 rescale) and of llama-quantize (every matrix whose rows hold whole 32-value blocks quantized
by ``gguf.quants.quantize``, vectors F32). A reading that shares a mistake with the loader would pass
here; tests/model/test_gguf_llamacpp.py checks the loader against files the real converter wrote.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

V6_MIXES, V7_MIXES = "wkvrg", "rwkvag"  # the fused token-shift mixes' order in each converter


def gguf_tensors(tensors: dict[str, torch.Tensor], arch: str, rescale_every: int = 0) -> dict[str, np.ndarray]:
    """The converter's tensors (numpy shapes, fp32) of an official checkpoint."""
    t = {k: v.float().numpy() for k, v in tensors.items()}
    out = {"token_embd.weight": t["emb.weight"], "token_embd_norm.weight": t["blocks.0.ln0.weight"],
           "token_embd_norm.bias": t["blocks.0.ln0.bias"], "output_norm.weight": t["ln_out.weight"],
           "output_norm.bias": t["ln_out.bias"], "output.weight": t["head.weight"]}
    n_layer = 1 + max(int(k.split(".")[1]) for k in t if k.startswith("blocks."))
    for i in range(n_layer):
        b, g = f"blocks.{i}.", f"blk.{i}."
        layer = {"attn_norm.weight": t[b + "ln1.weight"], "attn_norm.bias": t[b + "ln1.bias"],
                 "attn_norm_2.weight": t[b + "ln2.weight"], "attn_norm_2.bias": t[b + "ln2.bias"],
                 "time_mix_ln.weight": t[b + "att.ln_x.weight"], "time_mix_ln.bias": t[b + "att.ln_x.bias"]}
        for p in ("key", "value", "receptance", "gate", "output"):
            if b + f"att.{p}.weight" in t:
                layer[f"time_mix_{p}.weight"] = t[b + f"att.{p}.weight"]
        for p in ("key", "value", "receptance"):
            if b + f"ffn.{p}.weight" in t:
                layer[f"channel_mix_{p}.weight"] = t[b + f"ffn.{p}.weight"]
        if arch == "rwkv6":
            layer.update({
                "time_mix_lerp_x.weight": t[b + "att.time_maa_x"].reshape(-1),
                "time_mix_lerp_fused.weight": np.stack([t[b + f"att.time_maa_{x}"].reshape(1, 1, -1) for x in V6_MIXES]),
                "time_mix_w1.weight": t[b + "att.time_maa_w1"].T, "time_mix_w2.weight": t[b + "att.time_maa_w2"].transpose(0, 2, 1),
                "time_mix_decay.weight": t[b + "att.time_decay"].reshape(-1),
                "time_mix_decay_w1.weight": t[b + "att.time_decay_w1"].T,
                "time_mix_decay_w2.weight": t[b + "att.time_decay_w2"].T,
                "time_mix_first.weight": t[b + "att.time_faaaa"],
                "channel_mix_lerp_k.weight": t[b + "ffn.time_maa_k"].reshape(-1),
                "channel_mix_lerp_r.weight": t[b + "ffn.time_maa_r"].reshape(-1),
            })
            if rescale_every:
                for name in ("time_mix_output.weight", "channel_mix_value.weight"):
                    layer[name] = layer[name] / np.float32(2 ** (i // rescale_every))
        else:
            layer["time_mix_lerp_fused.weight"] = np.stack([t[b + f"att.x_{x}"].reshape(1, 1, -1) for x in V7_MIXES])
            for v in ("w0", "a0", "k_k", "k_a"):
                layer[f"time_mix_{v}.weight"] = t[b + f"att.{v}"].reshape(-1)
            for m in "wag" + ("v" if i else ""):
                layer[f"time_mix_{m}1.weight"], layer[f"time_mix_{m}2.weight"] = t[b + f"att.{m}1"].T, t[b + f"att.{m}2"].T
            if i:
                layer["time_mix_v0.weight"] = t[b + "att.v0"].reshape(-1)
            else:  # the converter's placeholders: copies of a0/a1/a2
                layer["time_mix_v0.weight"] = layer["time_mix_a0.weight"]
                layer["time_mix_v1.weight"], layer["time_mix_v2.weight"] = layer["time_mix_a1.weight"], layer["time_mix_a2.weight"]
            layer["time_mix_r_k.weight"] = t[b + "att.r_k"].reshape(-1)
            layer["channel_mix_lerp_k.weight"] = t[b + "ffn.x_k"].reshape(-1)
        out.update({g + k: np.ascontiguousarray(v, np.float32) for k, v in layer.items()})
    return out


RANDOM_TYPES = ("Q4_K", "Q5_K", "Q8_1")  # types gguf.quants cannot quantize: seeded random blocks


def random_blocks(shape: tuple[int, ...], qtype) -> np.ndarray:
    """Seeded random blocks whose first 4 bytes (Q4_K/Q5_K: the scales d, dmin; Q8_1: d, s) are small fp16s."""
    import gguf

    block, size = gguf.GGML_QUANT_SIZES[qtype]
    rng = np.random.default_rng(sum(shape))
    blocks = rng.integers(0, 256, (int(np.prod(shape)) // block, size), dtype=np.uint8)
    blocks[:, :4] = np.array([0.002, 0.001], np.float16).view(np.uint8)
    return blocks.reshape(*shape[:-1], shape[-1] // block * size)


def quantized_names(tensors: dict[str, np.ndarray], block: int = 32) -> list[str]:
    """What llama-quantize --pure quantizes: the matrices whose rows hold whole blocks (of 32; K types 256)."""
    return [k for k, v in tensors.items() if v.ndim >= 2 and v.shape[-1] % block == 0]


def write_gguf(tensors: dict[str, torch.Tensor], path: Path, arch: str, matrix_type: str = "F32",
               rescale_every: int = 0, types: dict[str, str] | None = None, norm_eps: float = 1e-5,
               block_count: int | None = None, architecture: str | None = None,
               dequantized: bool = False) -> dict[str, np.ndarray]:
    """Write the GGUF file of an official checkpoint, its matrices stored as ``matrix_type`` (``types``:
    per GGUF name; ``dequantized``: their dequantized values as F32 instead); returns the GGUF tensors
    (numpy, before quantization). ``block_count``, ``architecture``: metadata that says otherwise."""
    import gguf

    g = gguf_tensors(tensors, arch, rescale_every)
    C = g["token_embd.weight"].shape[1]
    n_layer = 1 + max(int(k.split(".")[1]) for k in g if k.startswith("blk."))
    w = gguf.GGUFWriter(str(path), architecture or arch)
    w.add_context_length(1048576)
    w.add_embedding_length(C)
    w.add_block_count(n_layer if block_count is None else block_count)
    w.add_layer_norm_eps(norm_eps)
    w.add_feed_forward_length(g["blk.0.channel_mix_key.weight"].shape[0])
    w.add_head_count(0)
    if arch == "rwkv6":
        w.add_wkv_head_size(g["blk.0.time_mix_first.weight"].shape[1])
        w.add_rescale_every_n_layers(rescale_every)
        w.add_time_mix_extra_dim(g["blk.0.time_mix_w2.weight"].shape[2])
        w.add_time_decay_extra_dim(g["blk.0.time_mix_decay_w1.weight"].shape[0])
    else:
        w.add_wkv_head_size(tensors["blocks.0.att.r_k"].shape[1])
        w.add_decay_lora_rank(g["blk.0.time_mix_w1.weight"].shape[0])
        w.add_iclr_lora_rank(g["blk.0.time_mix_a1.weight"].shape[0])
        w.add_value_residual_mix_lora_rank(g["blk.1.time_mix_v1.weight"].shape[0])
        w.add_gate_lora_rank(g["blk.0.time_mix_g1.weight"].shape[0])
    w.add_tokenizer_model("rwkv")
    block = gguf.GGML_QUANT_SIZES[gguf.GGMLQuantizationType[matrix_type]][0]
    quantized = set(quantized_names(g, block)) if matrix_type != "F32" else set()
    for name, array in g.items():
        kind = (types or {}).get(name, matrix_type if name in quantized else "F32")
        qtype = gguf.GGMLQuantizationType[kind]
        data = random_blocks(array.shape, qtype) if kind in RANDOM_TYPES else gguf.quants.quantize(array, qtype)
        if dequantized and kind != "F32":
            data, qtype, kind = gguf.quants.dequantize(data, qtype), gguf.GGMLQuantizationType.F32, "F32"
        w.add_tensor(name, data, raw_dtype=qtype if kind not in ("F32", "F16") else None)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return g
