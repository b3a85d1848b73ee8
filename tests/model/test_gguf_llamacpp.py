"""The GGUF loader against llama.cpp itself: tests/data/rwkv7-tiny-q4_0.gguf was written by llama.cpp's own
converter and llama-quantize --pure from a seeded checkpoint, and llama.cpp's logits of it recorded
(scripts/gguf_golden.py, which CI cannot run: it needs llama.cpp). The checkpoint is regenerated here from
its seed."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from rwkv_edge.model import model_from_checkpoint
from rwkv_edge.model.gguf import stored_blocks
from rwkv_edge.model.sources import open_checkpoint
from rwkv_edge.model.synthetic import make_checkpoint
from rwkv_edge.tokenizer import tokenizer_for_vocab
from rwkv_edge.quantize import quantize

DATA = Path(__file__).resolve().parents[1] / "data"
GGUF = DATA / "rwkv7-tiny-q4_0.gguf"
TOKENS = [0, 510, 4600, 33, 11, 10250, 3319, 21887, 261, 59, 45, 1000, 65535, 2, 40, 30000]  # gguf_golden.py's
POSITIONS, STRIDE = 4, 16


@pytest.fixture(scope="module")
def opened():
    return open_checkpoint(GGUF)


@pytest.fixture(scope="module")
def source():
    return make_checkpoint("v7", n_layer=2, n_embd=64, head_size=64, vocab_size=65536, seed=7)


def test_llama_cpp_q4_0_file_gives_the_checkpoint_and_int4_holds_it_exactly(opened, source):
    """F32 tensors equal the checkpoint's; every matrix is within half a step of it (Q4_0 rounding); the
    int4 integers and scales of every matrix the project quantizes are the file's own blocks."""
    from gguf import GGUFReader, quants

    assert set(opened.tensors) == set(source) - {"blocks.0.att.v0", "blocks.0.att.v1", "blocks.0.att.v2"}
    assert opened.layout == "GGUF rwkv7 (Q4_0)" and opened.stored.format == "int4" and opened.stored.group == 32
    assert opened.stored.exact == set(opened.stored.types) and len(opened.stored.types) == 2 + 2 * 6
    by_name = {t.name: t for t in GGUFReader(GGUF).tensors}
    for name, t in opened.tensors.items():
        s = source[name].reshape(t.shape)
        if torch.equal(t, s):
            continue
        step = (t - s).abs().max() / (s.abs().max() + 1e-12)
        assert step < 1 / 8, name  # a Q4_0 matrix: 16 levels per block
    for gguf_name, name in (("token_embd.weight", "emb.weight"), ("output.weight", "head.weight"),
                            ("blk.1.time_mix_key.weight", "blocks.1.att.key.weight"),
                            ("blk.0.channel_mix_value.weight", "blocks.0.ffn.value.weight")):
        t = by_name[gguf_name]
        assert t.tensor_type.name == "Q4_0"
        q, d = stored_blocks(t.data, "Q4_0")
        found = quantize(opened.tensors[name].numpy(), 4, 32)
        np.testing.assert_array_equal(found.values, q)
        np.testing.assert_array_equal(found.scales, d)
        np.testing.assert_array_equal(opened.tensors[name].numpy(), quants.dequantize(t.data, t.tensor_type))


def test_the_world_vocabulary_picks_the_world_tokenizer(opened):
    from gguf import GGUFReader

    assert GGUFReader(GGUF).get_field("tokenizer.ggml.model").contents() == "rwkv"
    assert tokenizer_for_vocab(opened.tensors["emb.weight"].shape[0]) == "world"


def test_logits_match_llama_cpp(opened):
    """llama.cpp multiplies Q4_0 weights with activations rounded to Q8_0 (ggml's q4_0 x q8_0 dot
    products), the model here in fp32: 3.2e-2 max|d|/std measured over these rows, where a wrong name,
    transpose or order is of order 1 (the F32 file agrees to 2e-6: scripts/gguf_golden.py)."""
    theirs = np.load(DATA / "rwkv7-tiny-q4_0.llama-logits.npy")  # (POSITIONS, 65536 / STRIDE)
    with torch.inference_mode():
        ours = model_from_checkpoint(opened)(torch.tensor(TOKENS[:POSITIONS]))[0].numpy()[:, ::STRIDE]
    assert np.abs(ours - theirs).max() / theirs.std() < 0.08
