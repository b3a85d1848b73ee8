"""GGUF input: llama.cpp's rwkv6 / rwkv7 files read into the official tensors, quantized matrices kept exactly.

The files here come from tests/model/gguf_files.py, our own reading of llama.cpp's converter;
test_gguf_llamacpp.py checks the loader against a file the real converter and quantizer wrote.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from rwkv_edge.errors import CheckpointError, ShapeError, UnknownArchitectureError
from rwkv_edge.model import model_from_checkpoint, model_from_state_dict
from rwkv_edge.model.gguf import stored_blocks
from rwkv_edge.model.sources import open_checkpoint, stored_format
from rwkv_edge.model.synthetic import make_checkpoint
from rwkv_edge.quantize import quantize

from .gguf_files import write_gguf

ARCHS = {"v6": "rwkv6", "v7": "rwkv7"}
TOKENS = torch.tensor([3, 200, 17, 99, 0, 255, 42, 7])
UNUSED = {"blocks.0.att.v0", "blocks.0.att.v1", "blocks.0.att.v2"}  # rwkv7 layer 0: llama.cpp's placeholders


@pytest.fixture(scope="module")
def official():
    return {v: make_checkpoint(v, n_layer=2, n_embd=64, head_size=32, vocab_size=256, seed=3) for v in ARCHS}


def write(official, tmp_path, version, kind="F32", **kw):
    path = tmp_path / f"{version}-{kind}-{'-'.join(map(str, kw.values()))}.gguf".replace(" ", "")
    write_gguf(official[version], path, ARCHS[version], kind, rescale_every=1 if version == "v6" else 0, **kw)
    return path


def logits(model):
    with torch.inference_mode():
        return model(TOKENS)[0]


@pytest.mark.parametrize("version", ARCHS)
def test_f32_files_give_back_the_official_tensors_and_logits(version, official, tmp_path):
    """v6 with rescale_every 1: layer 1's output matrices were halved by the converter and are doubled back."""
    opened = open_checkpoint(write(official, tmp_path, version))
    source = official[version]
    assert set(opened.tensors) == set(source) - UNUSED
    for name, t in opened.tensors.items():
        assert t.dtype == torch.float32 and t.shape == source[name].shape and torch.equal(t, source[name]), name
    assert opened.layout == f"GGUF {ARCHS[version]} (F32)" and opened.constants == {"norm_eps": 1e-5, "ln_x_eps": 64e-5}
    assert opened.stored.format is None and stored_format(write(official, tmp_path, version)) is None
    assert torch.equal(logits(model_from_checkpoint(opened)), logits(model_from_state_dict(source)))


@pytest.mark.parametrize("version, kind", [("v6", "Q8_0"), ("v6", "Q4_0"), ("v7", "Q8_0"), ("v7", "Q4_0"), ("v7", "Q4_K")])
def test_quantized_files_give_the_dequantized_values_and_int_formats_hold_them_exactly(version, kind, official, tmp_path):
    """Every tensor equals the same file's values dequantized by gguf.quants (written F32); Q8_0 / Q4_0
    matrices come back from quantize.py as their own integers and scales (int8 / int4, groups of 32)."""
    path = write(official, tmp_path, version, kind)
    opened = open_checkpoint(path)
    plain = open_checkpoint(write(official, tmp_path, version, kind, dequantized=True))
    assert opened.tensors.keys() == plain.tensors.keys()
    for name, t in opened.tensors.items():
        assert torch.equal(t, plain.tensors[name]), name
    assert torch.equal(logits(model_from_checkpoint(opened)), logits(model_from_checkpoint(plain)))
    stored = opened.stored
    if kind == "Q4_K":
        assert stored.format is None and "Q4_K" in opened.layout
        return
    bits, fmt = (8, "int8") if kind == "Q8_0" else (4, "int4")
    assert (stored.format, stored.group) == (fmt, 32) == stored_format(path)
    assert stored.exact == set(stored.types) and set(stored.types) >= {"emb.weight", "head.weight"}
    assert stored.report(fmt, 32).startswith(f"{len(stored.types)} of {len(stored.types)} matrices")
    from gguf import GGUFReader

    by_name = {t.name: t for t in GGUFReader(path).tensors}
    for gguf_name, name in (("output.weight", "head.weight"), ("blk.1.time_mix_output.weight", "blocks.1.att.output.weight"),
                            ("blk.1.channel_mix_value.weight", "blocks.1.ffn.value.weight")):
        q, d = stored_blocks(by_name[gguf_name].data, kind)
        found = quantize(opened.tensors[name].numpy(), bits, 32)
        rescale = 2.0 if version == "v6" and gguf_name.startswith("blk.1.") else 1.0  # rwkv6: undone exactly on d
        np.testing.assert_array_equal(found.values, q)
        np.testing.assert_array_equal(found.scales, (d.astype(np.float32) * rescale).astype(np.float16))


def test_a_mixed_file_says_which_matrices_are_exact(official, tmp_path):
    """llama.cpp's Q4_0 files often keep output.weight at another type: it is re-quantized, and said so."""
    opened = open_checkpoint(write(official, tmp_path, "v7", "Q4_0", types={"output.weight": "Q8_0"}))
    assert opened.stored.format == "int4" and "head.weight" not in opened.stored.exact
    assert opened.stored.report("int4", 32).endswith("kept exactly as int4 in groups of 32; re-quantized: head.weight (Q8_0)")
    assert opened.stored.report("int8", 32).endswith("re-quantized to int8 in groups of 32")
    assert opened.stored.report("fp32", 0).endswith("dequantized to fp32")


def _truncated(path):
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def _version_99(path):
    data = bytearray(path.read_bytes())
    data[4:8] = (99).to_bytes(4, "little")
    path.write_bytes(bytes(data))


def _header_cut(path):
    path.write_bytes(path.read_bytes()[:100])


BAD = {
    "truncated": (dict(), _truncated, CheckpointError, "truncated GGUF file: tensor .* runs past its end"),
    "header cut": (dict(), _header_cut, CheckpointError, "truncated GGUF file"),
    "version": (dict(), _version_99, CheckpointError, "GGUF version 99; versions 2 and 3 are read"),
    "unknown architecture": (dict(architecture="llama"), None, UnknownArchitectureError,
                             "GGUF architecture 'llama' is not an RWKV model; supported: rwkv6 .* and rwkv7"),
    "hybrid": (dict(architecture="arwkv7"), None, UnknownArchitectureError,
               "'arwkv7' is ARWKV-7, RWKV-7 time mixing in a Transformer .*, which rwkv-edge does not define"),
    "unsupported type": (dict(types={"blk.0.time_mix_key.weight": "Q8_1"}), None, CheckpointError,
                         "tensor blk.0.time_mix_key.weight is stored as Q8_1, which the gguf package cannot "
                         "dequantize; readable types: F32, F16, Q4_0"),
    "layer count": (dict(block_count=3), None, ShapeError, "rwkv7.block_count = 3, but the tensors hold layers 0 to 1"),
    "wrong shape": (dict(types={"token_embd.weight": "F32"}), "embd", ShapeError,
                    "token_embd.weight has 64 channels but the metadata says rwkv7.embedding_length = 96"),
}


@pytest.mark.parametrize("case", BAD)
def test_bad_files_get_one_typed_line(case, official, tmp_path):
    kw, damage, error, message = BAD[case]
    if damage == "embd":  # the embedding's width against the metadata's
        import gguf

        original = gguf.GGUFWriter.add_embedding_length
        gguf.GGUFWriter.add_embedding_length = lambda self, n: original(self, n + 32)
        try:
            path = write(official, tmp_path, "v7", **kw)
        finally:
            gguf.GGUFWriter.add_embedding_length = original
    else:
        path = write(official, tmp_path, "v7", **kw)
        if damage:
            damage(path)
    with pytest.raises(error, match=message) as e:
        open_checkpoint(path)
    assert "\n" not in str(e.value)


def test_a_file_cut_inside_its_vocabulary_is_named_truncated(tmp_path):
    """llama.cpp's files carry the World vocabulary (65536 strings) in the header: cut there, it is a truncated
    file, not a strange one."""
    from .test_gguf_llamacpp import GGUF

    cut = tmp_path / "cut.gguf"
    cut.write_bytes(GGUF.read_bytes()[:100_000])
    with pytest.raises(CheckpointError, match="truncated GGUF file: tokenizer.ggml.tokens runs past its end"):
        open_checkpoint(cut)


def test_a_wrong_matrix_shape_names_the_tensor(official, tmp_path):
    bad = dict(official["v7"])
    bad["blocks.1.att.key.weight"] = torch.zeros(64, 96)
    path = tmp_path / "shape.gguf"
    write_gguf(bad, path, "rwkv7")
    with pytest.raises(ShapeError, match=r"blocks.1.att.key.weight has shape \(64, 96\), expected \(64, 64\)"):
        model_from_checkpoint(open_checkpoint(path))
