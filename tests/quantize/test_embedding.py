"""The quantized embedding: each looked-up row is exactly the dequantized row; bundles store it at the format's bytes."""

from __future__ import annotations

import json
import struct

import numpy as np
import pytest
import torch

from rwkv_edge.model import load_model
from rwkv_edge.model.base import QuantizedEmbedding
from rwkv_edge.quantize import quantize


@pytest.mark.parametrize("bits", [8, 4])
def test_rows_are_exactly_the_dequantized_rows(version_ckpt, bits):
    model = load_model(version_ckpt("v7"))
    table = model.emb.weight.detach().numpy().copy()
    model.quantize_weights(bits, 32)
    assert isinstance(model.emb, QuantizedEmbedding) and model.emb.values.dtype == torch.uint8
    assert model.emb.values.shape == (table.shape[0], table.shape[1] * bits // 8)
    tokens = torch.tensor([[0, 3, table.shape[0] - 1], [7, 7, 1]])
    np.testing.assert_array_equal(model.emb(tokens).numpy(), quantize(table, bits, 32).dequantize()[tokens.numpy()])


def test_core_ml_keeps_its_embedding(version_ckpt):
    model = load_model(version_ckpt("v7"))
    model.quantize_weights(4, 32, embedding=False)
    assert isinstance(model.emb, torch.nn.Embedding)


@pytest.mark.parametrize("weights", ["int8", "int4"])
def test_a_quantized_bundle_holds_no_float_embedding(tvm_bundle, version_ckpt, weights):
    """The embedding (V, C) is stored as its integers (V, C * bits / 8) and scales, never as V x C floats."""
    rows, width = load_model(version_ckpt("v7")).emb.weight.shape
    bundle = tvm_bundle("v7", weights=weights)
    data = (bundle / "params.safetensors").read_bytes()
    header = json.loads(data[8:8 + struct.unpack("<Q", data[:8])[0]])
    shapes = {(entry["dtype"], tuple(entry["shape"])) for name, entry in header.items() if name.startswith("w")}
    assert ("U8", (rows, width * (8 if weights == "int8" else 4) // 8)) in shapes  # q + 2^(bits-1), unsigned
    assert not any(kind == "F32" and int(np.prod(shape)) >= rows * width for kind, shape in shapes)


def test_quantizing_in_place_writes_the_same_numbers_into_the_checkpoints_copy(make_ckpt):
    """``in_place``: every projection's dequantized numbers land in the memory the model mapped from the
    checkpoint's private copy (no second copy of the model), equal to quantizing into new memory; the
    checkpoint file itself is untouched (the copy is the process's own)."""
    import hashlib

    from rwkv_edge.model import model_from_state_dict
    from rwkv_edge.model.sources import open_checkpoint

    path = make_ckpt("v7")
    before = hashlib.sha256(path.read_bytes()).hexdigest()
    expected = model_from_state_dict(open_checkpoint(path).tensors)
    expected.quantize_weights(4, 32)
    opened = open_checkpoint(path)
    model = model_from_state_dict(opened.tensors)
    where = {name: p.data_ptr() for name, p in model.named_parameters()}
    model.quantize_weights(4, 32, in_place=True)
    for name, p in model.named_parameters():
        assert p.data_ptr() == where[name], f"{name} moved to new memory"
    for (name, got), want in zip(model.state_dict().items(), expected.state_dict().values()):
        assert torch.equal(got, want), name
    assert torch.equal(opened.tensors["head.weight"], model.head.weight)  # the same memory
    assert hashlib.sha256(path.read_bytes()).hexdigest() == before
    assert open_checkpoint(path).sha256 == before
