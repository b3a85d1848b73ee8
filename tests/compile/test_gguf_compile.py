"""`rwkv-edge compile model-q4_0.gguf` without --weights: an int4 bundle in groups of 32 built from the
file's own integers and scales (docs/gguf.md), which verify passes."""

from __future__ import annotations

from rwkv_edge.artifact import read_manifest
from rwkv_edge.compile import compile_for
from rwkv_edge.model.sources import open_checkpoint
from rwkv_edge.model.synthetic import make_checkpoint
from rwkv_edge.verify import verify_artifact

from ..model.gguf_files import write_gguf


def test_a_q4_0_file_compiles_to_int4_holding_its_blocks_and_verifies(tmp_path):
    source = tmp_path / "tiny-q4_0.gguf"
    write_gguf(make_checkpoint("v7", n_layer=2, n_embd=64, head_size=32, vocab_size=256, seed=5), source, "rwkv7", "Q4_0")
    lines: list[str] = []
    manifest = compile_for(source, tmp_path / "out", "x86_64-host", log=lines.append)
    assert manifest.weights == "int4" and manifest.group_size == 32
    assert any("weights: int4 in groups of 32, as tiny-q4_0.gguf stores its matrices" in line for line in lines), lines
    assert any("14 of 14 matrices (14 Q4_0) kept exactly as int4 in groups of 32" in line for line in lines), lines
    # the integers the bundle packs are quantize.py's of the opened matrices, which are the file's blocks
    # (tests/model/test_gguf.py); the bundle's own tile layout (compile/tvm/intdot.py) is not decoded here
    opened = open_checkpoint(source)
    report = verify_artifact(tmp_path / "out", steps=16, greedy_tokens=0, log=lambda _: None)
    assert report.passed, report.summary()
    assert read_manifest(tmp_path / "out").source["sha256"] == opened.sha256


def test_llama_cpp_q4_0_blocks_are_the_exports_integers(tmp_path):
    """The file llama-quantize wrote (tests/data, see tests/model/test_gguf_llamacpp.py), exported with no
    --weights: every MatMulNBits of the ONNX export holds, read back from its packed bytes, exactly the integers
    and scales of one of the file's Q4_0 matrices, parsed from the file's raw blocks."""
    import numpy as np
    import onnx
    from gguf import GGUFReader
    from onnx import numpy_helper

    from rwkv_edge.export import OnnxOptions, export_onnx
    from rwkv_edge.export.nbits import unpack
    from rwkv_edge.model.gguf import stored_blocks

    from ..model.test_gguf_llamacpp import GGUF

    manifest = export_onnx(GGUF, tmp_path / "onnx", OnnxOptions(prefill_chunk=0), log=lambda _: None)
    assert manifest.weights == "int4" and manifest.group_size == 32
    blocks = {t.name: stored_blocks(t.data, "Q4_0") for t in GGUFReader(GGUF).tensors if t.tensor_type.name == "Q4_0"}
    graph = onnx.load(tmp_path / "onnx" / "model.onnx").graph
    values = {i.name: numpy_helper.to_array(i) for i in graph.initializer}
    matched = set()
    for node in (n for n in graph.node if n.op_type == "MatMulNBits"):
        a = {x.name: x.i for x in node.attribute}
        q = unpack(values[node.input[1]], values[node.input[2]], a["K"], a["N"], a["bits"], a["block_size"])
        name = next(n for n, (v, d) in blocks.items() if v.shape == q.values.shape and np.array_equal(d, q.scales))
        np.testing.assert_array_equal(q.values, blocks[name][0])
        matched.add(name)
    assert matched == set(blocks) - {"token_embd.weight"}  # the 12 projections and the head; the embedding is a gather
