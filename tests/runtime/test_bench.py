"""The benchmark's mechanics on the demo model with a few steps: report structure, the bound's
arithmetic, caching, errors. Nothing here asserts anything about speed."""

from __future__ import annotations

import json

import pytest

from rwkv_edge.errors import OptionError
from rwkv_edge.manifest import sha256_file
from rwkv_edge.model import DEMO_CHECKPOINT
from rwkv_edge.model.synthetic import make_checkpoint
from rwkv_edge.runtime import bench
from rwkv_edge.runtime.bench import BenchOptions, BenchReport, bound_ms, run_bench, save_report, weight_bytes_per_token

QUICK = BenchOptions(backends=("torch", "onnxruntime", "tvm"), steps=6, warmup=2, prefill=5, prefill_repeats=2,
                     threads=1, bandwidth_mib=32, bandwidth_repeats=2, onnx_prefill_chunk=0)


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    return tmp_path_factory.mktemp("bench-work")


@pytest.fixture(scope="module")
def report(work):
    """One quick run on the demo model; TVM reported unavailable whether or not this build has it."""
    lines = []
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(bench, "tvm_unavailable", lambda target: "not in this test")
        result = run_bench(None, QUICK, work=work, log=lines.append)
    result.log = lines
    return result


def test_weight_bytes_match_a_hand_count():
    C, V, L = 64, 256, 3  # head size 32; LoRA ranks: decay 32, iclr 32, value 16, gate 64
    per_layer = (6 * C  # x_r x_w x_k x_v x_a x_g
                 + 2 * C + 2 * C * 32 + 2 * C * 32  # w0 a0, w1 w2, a1 a2
                 + 2 * C * 64  # g1 g2
                 + 2 * C + C  # k_k k_a, r_k (H x N)
                 + 4 * C * C + 2 * C  # receptance key value output, ln_x
                 + C + 4 * C * C + 4 * C * C  # ffn x_k, key, value
                 + 4 * C)  # ln1, ln2
    value_residual = C + 2 * C * 16  # v0 v1 v2, unused in layer 0
    values = L * per_layer + (L - 1) * value_residual + 2 * C + 2 * C + V * C + C  # ln0, ln_out, head, one emb row
    tensors = make_checkpoint("v7", n_layer=L, n_embd=C, vocab_size=V, head_size=32)
    assert weight_bytes_per_token(tensors) == 4 * values
    assert weight_bytes_per_token(tensors, bytes_per_value=2) == 2 * values


def test_bound_arithmetic():
    assert bound_ms(4_000_000, 20.0) == pytest.approx(0.2)  # 4 MB at 20 GB/s
    assert bound_ms(544_000_000, 13.6) == pytest.approx(40.0)


def test_report_rows_and_ratios(report):
    assert [r.backend for r in report.runs] == ["torch", "onnxruntime", "tvm"]
    torch_run, ort_run, tvm_run = report.runs
    assert tvm_run.status == "unavailable" and tvm_run.reason == "not in this test"
    for run in (torch_run, ort_run):
        assert run.ok and run.threads == 1 and run.decode_steps == 6 and run.prefill_tokens == 5
        d = run.decode_ms
        assert 0 < d["min"] <= d["p10"] <= d["median"] <= d["p90"] <= d["max"]
        assert len(run.prefill_s) == 2 and run.prefill_tok_s > 0
        assert run.peak_rss_mib >= run.base_rss_mib > 0
        assert run.vs_bound == pytest.approx(d["median"] / report.bound_ms)
        assert run.vs_onnxruntime == pytest.approx(d["median"] / ort_run.decode_ms["median"])
    assert ort_run.vs_onnxruntime == 1.0 and ort_run.details["prefill_chunk"] == 0
    assert torch_run.source == str(DEMO_CHECKPOINT) and torch_run.details["intra_op_threads"] == 1


def test_bound_comes_from_the_checkpoint_and_the_measured_bandwidth(report):
    from rwkv_edge.model.checkpoint import read_checkpoint

    weights = weight_bytes_per_token(read_checkpoint(DEMO_CHECKPOINT))
    bw = report.bandwidth
    assert report.weights["bytes_per_token"] == weights and report.weights["precision"] == "fp32"
    assert len(bw["samples_gb_s"]) == 4 and bw["buffer_mib"] == 32  # 2 before the backends, 2 after
    assert sorted(bw["samples_gb_s"])[1] <= bw["gb_s"] <= sorted(bw["samples_gb_s"])[2]
    assert report.bound_ms == pytest.approx(weights / (bw["gb_s"] * 1e9) * 1e3)
    assert report.model["sha256"] == sha256_file(DEMO_CHECKPOINT) and report.model["n_layer"] == 4


def test_json_report_is_whole_and_written_atomically(report, tmp_path):
    path = save_report(report, tmp_path / "bench.json")
    assert [p.name for p in tmp_path.iterdir()] == ["bench.json"]
    data = json.loads(path.read_text())
    assert data["schema"] == "rwkv-edge.bench/1"
    assert {"machine", "model", "options", "weights", "bandwidth", "bound_ms", "runs", "preparation", "wall_s"} <= set(data)
    assert data["machine"]["threads"] == 1 and data["machine"]["cpu"] and data["options"]["steps"] == 6
    assert BenchReport.from_json(data) == report and data["busy"] == report.busy


def test_table_names_the_machine_and_every_backend(report):
    table = report.table()
    assert report.machine["cpu"] in table and "1 threads per backend" in table and "ms/token" in table
    assert "\ntorch " in table and "\nonnxruntime " in table and "\ntvm          unavailable: not in this test" in table


def test_progress_lines_and_cached_export(report, work):
    assert any(line.startswith("onnxruntime: export onnx -> ") for line in report.log)
    assert any(line.startswith("torch: median ") for line in report.log)
    artifact = report.preparation["onnxruntime"]["artifact"]
    sha = report.model["sha256"]
    assert bench._cached("onnxruntime", bench.Path(artifact), sha, QUICK)
    assert not bench._cached("onnxruntime", bench.Path(artifact), sha, BenchOptions(onnx_prefill_chunk=16))
    assert not bench._cached("onnxruntime", bench.Path(artifact), "0" * 64, QUICK)
    (bench.Path(artifact) / "model.onnx").write_bytes(b"tampered")
    assert not bench._cached("onnxruntime", bench.Path(artifact), sha, QUICK)


def test_a_backend_that_breaks_is_a_failed_row(tmp_path):
    run = bench._measure("torch", tmp_path / "missing.pth", QUICK, 1, log=lambda line: None)
    assert run.status == "failed" and "no such checkpoint file" in run.reason and "\n" not in run.reason


@pytest.mark.parametrize("backends,message", [
    (("torch", "tensorrt"), "unknown backend 'tensorrt'; choose from torch, onnxruntime, tvm"),
    ((), "no backend to run"),
    (("torch", "torch"), "named twice"),
])
def test_bad_backend_names_raise(backends, message):
    with pytest.raises(OptionError, match=message):
        BenchOptions(backends=backends)



@pytest.mark.parametrize("argv,message", [
    (["bench", "--backends", "torch,tensorrt"], "unknown backend 'tensorrt'; choose from torch, onnxruntime, tvm"),
    (["bench", "--json", "/nonexistent/dir/bench.json"], "cannot write /nonexistent/dir/bench.json"),
    (["bench", "/nonexistent/model.pth"], "no such checkpoint file"),
])
def test_cli_errors_are_one_line(argv, message, cli):
    code, out, err = cli(*argv)
    assert code == 1 and err.count("\n") == 1 and message in err and "Traceback" not in err


def test_cli_rejects_zero_steps(cli):
    code, _, err = cli("bench", "--steps", "0")
    assert code == 2 and "usage:" in err
