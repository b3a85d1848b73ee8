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
