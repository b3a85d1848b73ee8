"""The llama.cpp peer of the bench (bench/peer.py): reading real llama-bench output, the checks on its
inputs, and, where a llama.cpp build and GGUF files are named by RWKV_EDGE_LLAMA_CPP (its build/bin)
and RWKV_EDGE_GGUF (a folder with model-f32.gguf ...), a real run beside the bench's own rows."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from rwkv_edge.bench import BackendRun, BenchOptions, BenchReport, run_bench
from rwkv_edge.bench import peer
from rwkv_edge.errors import OptionError, ToolError

DATA = Path(__file__).parent / "data"
# stdout of `llama-bench -m model-q8_0.gguf -p 64 -n 32 -t 2 -r 3 -ngl 0 -o json` (llama.cpp 0c1e570, vendored in
# llama-cpp-python 0.3.36), on the 0.1B-shape random RWKV-7 of scripts/bench.py (12 x 768, vocab 65536) converted and
# quantized as docs/llamacpp.md says; captured on the 2-core build machine under a load average
# of ~11, so its times say nothing about speed
CAPTURED = DATA / "llama-bench-rwkv7-0.1b-q8_0.json"


@pytest.fixture
def bin_dir(tmp_path) -> Path:
    """A folder holding an executable called llama-bench (never run here: only its presence is checked)."""
    binary = tmp_path / "bin" / "llama-bench"
    binary.parent.mkdir()
    binary.write_text("#!/bin/sh\nexit 1\n")
    binary.chmod(0o755)
    return binary.parent


def test_real_output_gives_decode_and_prefill_per_repetition():
    tests = peer.parse(CAPTURED.read_text())
    decode = next(t for t in tests if t["n_prompt"] == 0)
    prompt = next(t for t in tests if t["n_gen"] == 0)
    assert decode["n_gen"] == 32 and prompt["n_prompt"] == 64 and decode["n_threads"] == 2
    assert peer.decode_ms(tests) == pytest.approx([ns / 32 / 1e6 for ns in decode["samples_ns"]])
    assert peer.prefill_tok_s(tests) == pytest.approx(prompt["samples_ts"], rel=1e-4)  # llama-bench's own tokens/s
    assert len(peer.decode_ms(tests)) == 3 and decode["model_type"] == "rwkv7 190M Q8_0"


def test_decode_only_output_has_no_prefill():
    tests = [t for t in peer.parse(CAPTURED.read_text()) if t["n_prompt"] == 0]
    assert peer.prefill_tok_s(tests) == [] and len(peer.decode_ms(tests)) == 3


@pytest.mark.parametrize("text,message", [
    ("| model | size |\n| --- | --- |", "printed no JSON"),
    ("[]", "not a list of tests"),
    ('{"n_prompt": 0}', "printed dict, not a list of tests"),
    ('[{"n_prompt": 0, "n_gen": 8}]', "a test has no 'samples_ns'"),
    ('[{"n_prompt": 0, "n_gen": 8, "samples_ns": []}]', "samples_ns must be positive integers"),
    ('[{"n_prompt": 0, "n_gen": 8, "samples_ns": [-5]}]', "samples_ns must be positive integers"),
    ('[{"n_prompt": "0", "n_gen": 8, "samples_ns": [5]}]', "n_prompt and n_gen must be integers"),
])
def test_bad_output_is_one_clear_error(text, message):
    with pytest.raises(ToolError, match=message):
        peer.parse(text)


def test_a_missing_or_doubled_decode_test_is_an_error():
    tests = peer.parse(CAPTURED.read_text())
    with pytest.raises(ToolError, match=r"expected one decode \(-p 0 -n N\) test, found 0"):
        peer.decode_ms([t for t in tests if t["n_gen"] == 0])
    decode = next(t for t in tests if t["n_prompt"] == 0)
    with pytest.raises(ToolError, match="found 2"):
        peer.decode_ms([decode, decode])


def test_ratios_are_ours_over_the_peer_for_rows_of_the_same_weights():
    tests = peer.parse(CAPTURED.read_text())
    run = peer.PeerRun("int8", "Q8_0", "model-q8_0.gguf", decode_ms={"before": peer.decode_ms(tests), "after": [40.0]},
                       prefill_tok_s={"before": peer.prefill_tok_s(tests), "after": []},
                       peak_rss_mib={"before": 300.0, "after": 320.0})
    tvm = BackendRun("tvm", "ok", decode_ms={"median": 20.0}, prefill_tok_s=100.0, peak_rss_mib=160.0, weights="int8")
    fp32 = BackendRun("onnxruntime", "ok", decode_ms={"median": 30.0}, prefill_tok_s=90.0, peak_rss_mib=900.0)
    peer.compare([run], [tvm, fp32])
    decode = sorted(peer.decode_ms(tests) + [40.0])  # both rounds' repetitions: the median of four
    assert run.median_decode_ms() == pytest.approx((decode[1] + decode[2]) / 2)
    assert run.vs == {"tvm": pytest.approx({"decode": 20.0 / run.median_decode_ms(),
                                            "prefill": 100.0 / run.median_prefill_tok_s(), "rss": 0.5})}
    table = "\n".join(peer.table([run]))
    assert "tvm / Q8_0: decode" in table and "onnxruntime" not in table


def test_a_gguf_of_another_shape_is_refused():
    peer._check_parameters(188_454_912, 188_404_992)  # the 0.1B shape: the converter's placeholders
    with pytest.raises(ToolError, match="the GGUF model has 188,454,912 parameters and the bench's model 1,005,440"):
        peer._check_parameters(188_454_912, 1_005_440)


def test_missing_binary_is_one_clear_error(tmp_path):
    with pytest.raises(ToolError, match=f"--llama-cpp {tmp_path}: no executable llama-bench there"):
        peer.llama_cpp(tmp_path, tmp_path)


def test_gguf_folder_and_files_are_checked(bin_dir, tmp_path):
    with pytest.raises(OptionError, match="none of model-f32.gguf, model-q8_0.gguf, model-q4_0.gguf there"):
        peer.llama_cpp(bin_dir, tmp_path)
    (tmp_path / "model-q8_0.gguf").write_bytes(b"GGUF\x03\x00\x00\x00")
    (tmp_path / "model-q4_0.gguf").write_bytes(b"GGUF\x03\x00\x00\x00")
    found = peer.llama_cpp(bin_dir, tmp_path)
    assert list(found.models) == ["int8", "int4"] and found.binary == bin_dir / "llama-bench"
    (tmp_path / "model-f32.gguf").write_bytes(b"PK\x03\x04")
    with pytest.raises(OptionError, match="model-f32.gguf is not a GGUF file"):
        peer.llama_cpp(bin_dir, tmp_path)
    with pytest.raises(OptionError, match="no such file|No such file"):
        peer.llama_cpp(bin_dir, {"Q4_0": tmp_path / "absent.gguf"})
    assert peer.llama_cpp(bin_dir, {"Q4_0": tmp_path / "model-q4_0.gguf"}).models == {"int4": str(tmp_path / "model-q4_0.gguf")}


@pytest.mark.parametrize("text,expected", [("int8=a.gguf", ("int8", "a.gguf")), ("Q4_0=b.gguf", ("int4", "b.gguf")),
                                           ("f32=c.gguf", ("fp32", "c.gguf")), ("models", "models")])
def test_gguf_arguments(text, expected):
    assert peer.gguf_arg(text) == expected


def test_unknown_peer_format_lists_the_known_ones():
    with pytest.raises(OptionError, match=r"no peer format 'Q4_K'; choose from fp32 \(F32\), int8 \(Q8_0\), int4 \(Q4_0\)"):
        peer.gguf_arg("Q4_K=model.gguf")


@pytest.mark.parametrize("argv,message", [
    (["bench", "--gguf", "models"], "--llama-cpp BIN_DIR and --gguf go together"),
    (["bench", "--llama-cpp", "/nonexistent/bin", "--gguf", "models"], "no executable llama-bench there"),
])
def test_cli_peer_errors_are_one_line(argv, message, cli):
    code, out, err = cli(*argv)
    assert code == 1 and err.count("\n") == 1 and message in err and "Traceback" not in err


def test_a_failing_llama_bench_is_a_failed_peer_row(bin_dir, tmp_path):
    (tmp_path / "model-f32.gguf").write_bytes(b"GGUF\x03\x00\x00\x00")
    runs = peer.measure(peer.llama_cpp(bin_dir, tmp_path), {}, "before", 1, 4, 0, log=lambda line: None)
    assert runs["fp32"].status == "failed" and "llama-bench exited with 1" in runs["fp32"].reason
    assert "failed: llama-bench exited with 1" in "\n".join(peer.table(list(runs.values())))


def test_process_peak_rss_is_the_childs_own():
    code, out, _, rss = peer.run_process(["python3", "-c", "b = bytearray(300 << 20); print(len(b))"])
    assert code == 0 and out.strip() == str(300 << 20) and 300 <= rss < 400  # the child alone, not this process
    _, _, _, small = peer.run_process(["true"])
    assert small < 50


# -- a real llama.cpp, where one is named ---------------------------------------------------------------
LLAMA_CPP, GGUF = os.environ.get("RWKV_EDGE_LLAMA_CPP"), os.environ.get("RWKV_EDGE_GGUF")
needs_llama_cpp = pytest.mark.skipif(
    not (LLAMA_CPP and GGUF and (Path(LLAMA_CPP) / "llama-bench").is_file()),
    reason="no llama.cpp here: set RWKV_EDGE_LLAMA_CPP to its build/bin and RWKV_EDGE_GGUF to a folder of GGUF files "
           "(docs/llamacpp.md)")


@needs_llama_cpp
def test_real_peer_beside_the_bench(tmp_path):
    """The bench of the demo model with the peer's GGUF files: the peer runs before and after our rows, with the
    same threads; GGUF files of another model (the 0.1B shape, say) are refused by their parameter count."""
    found = peer.llama_cpp(LLAMA_CPP, GGUF, repetitions=1)
    options = BenchOptions(backends=("torch",), steps=4, warmup=1, prefill=8, prefill_repeats=1, threads=1,
                           bandwidth_mib=32, bandwidth_repeats=1)
    report = run_bench(None, options, work=tmp_path, log=lambda line: None, peer=found)
    assert [r.weights for r in report.peer] == list(found.models)
    for run in report.peer:
        if run.ok:  # GGUF files of the demo model
            assert list(run.decode_ms) == ["before", "after"] and all(len(v) == 1 for v in run.decode_ms.values())
            assert run.details["n_threads"] == 1 and run.max_rss_mib() > 10
        else:
            assert "parameters and the bench's model 1,005,440" in run.reason
    assert "peer      llama.cpp llama-bench" in report.table()
    assert BenchReport.from_json(json.loads(json.dumps(report.to_json()))) == report


@needs_llama_cpp
def test_real_llama_bench_rows_and_ratios():
    found = peer.llama_cpp(LLAMA_CPP, GGUF, repetitions=2)
    weights = next(iter(found.models))
    runs = peer.measure(found, {}, "before", 1, 4, 8, log=lambda line: None)
    run = runs[weights]
    assert run.ok, run.reason
    assert len(run.decode_ms["before"]) == 2 and len(run.prefill_tok_s["before"]) == 2
    assert run.median_decode_ms() > 0 and run.median_prefill_tok_s() > 0 and run.max_rss_mib() > 10
