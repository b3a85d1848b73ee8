"""The benchmark's mechanics on the demo model with a few steps: report structure, the bound's
arithmetic, caching, errors. Nothing here asserts anything about speed."""

from __future__ import annotations

import json

import numpy as np
import pytest

from rwkv_edge.errors import OptionError
from rwkv_edge.artifact import sha256_file
from rwkv_edge.model import DEMO_CHECKPOINT
from rwkv_edge.model.synthetic import make_checkpoint
from rwkv_edge.compile.tvm import PREFILL_CHUNK
from pathlib import Path

from rwkv_edge.bench import (BACKENDS, BackendRun, BenchOptions, BenchReport, bound_ms, run_bench, save_report,
                             weight_bytes_per_token)
from rwkv_edge.bench import bound, options, rows
from rwkv_edge.bench import run as bench
from rwkv_edge.bench.options import BandwidthSpec
from rwkv_edge.bench.rows import bench_row

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
        mp.setattr(rows, "tvm_unavailable", lambda target: "not in this test")
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


@pytest.mark.parametrize("available_mib, cache_mib, buffer_mib", [
    (64 << 10, 300, 1024),  # a virtual machine's huge cache report: 1 GiB at most
    (2048, 300, 512),  # a quarter of the available memory
    (64 << 10, 16, 256),  # at least 256 MiB
    (64 << 10, 64, 512),  # 8 x the last-level cache
    (512, 32, 128),  # a small board: the available memory wins over the 256 MiB floor
    (None, 300, 1024),  # no MemAvailable line (or no /proc/meminfo): the 1 GiB cap alone
])
def test_bandwidth_buffer_is_bounded_by_available_memory(available_mib, cache_mib, buffer_mib, tmp_path, monkeypatch):
    meminfo = tmp_path / "meminfo"
    lines = ["MemTotal:       131072000 kB", "MemFree:          1024000 kB"]
    if available_mib is not None:
        lines.append(f"MemAvailable:   {available_mib << 10:>9} kB")
    meminfo.write_text("\n".join(lines) + "\n")
    monkeypatch.setattr(bound, "MEMINFO", meminfo)
    monkeypatch.setattr(bound, "last_level_cache_bytes", lambda: cache_mib << 20)
    assert bound.available_memory_bytes() == (None if available_mib is None else available_mib << 20)
    assert bound.bandwidth_buffer_bytes() == buffer_mib << 20


def test_bandwidth_threads_each_stream_their_own_part(monkeypatch):
    from rwkv_edge.bench import workers

    parts = []
    stream = workers._stream

    def record(part):
        parts.append(part)
        stream(part)

    monkeypatch.setattr(workers, "_stream", record)
    samples = workers.bandwidth(BandwidthSpec(8 << 20, 3, 2))
    assert len(samples) == 3 and all(s > 0 for s in samples)
    assert len(parts) == 2 * 4  # an untimed read, then 3, of two parts each
    first, second = parts[:2]
    assert first.nbytes == second.nbytes == 4 << 20 and first.flags.c_contiguous
    assert first[-1] + 1 == second[0]  # the buffer's two halves, in order


def test_report_rows_and_ratios(report):
    assert [r.backend for r in report.runs] == ["torch", "onnxruntime", "tvm"]
    torch_run, ort_run, tvm_run = report.runs
    assert tvm_run.status == "unavailable" and tvm_run.reason == "not in this test"
    for run in (torch_run, ort_run):
        assert run.ok and run.threads == 1 and run.decode_steps == 6 and run.prefill_tokens == 5
        d = run.decode_ms
        assert 0 < d["min"] <= d["p10"] <= d["median"] <= d["p90"] <= d["max"]
        assert len(run.prefill_s) == 2 and run.prefill_tok_s > 0
        assert run.peak_rss_mib >= run.steady_rss_mib >= run.base_rss_mib > 0
        assert run.vs_bound == pytest.approx(d["median"] / report.bound_ms)
        assert run.vs_onnxruntime == pytest.approx(d["median"] / ort_run.decode_ms["median"])
    assert ort_run.vs_onnxruntime == 1.0 and ort_run.details["prefill_chunk"] == 0
    assert torch_run.source == str(DEMO_CHECKPOINT) and torch_run.details["intra_op_threads"] == 1


def test_bound_comes_from_the_checkpoint_and_the_measured_bandwidth(report):
    from rwkv_edge.model.sources import open_checkpoint

    weights = weight_bytes_per_token(open_checkpoint(DEMO_CHECKPOINT).tensors)
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
    assert any(line.startswith("onnxruntime: export onnx (prefill chunk 0) -> ") for line in report.log)
    assert any(line.startswith("torch: median ") for line in report.log)
    artifact = report.preparation["onnxruntime"]["artifact"]
    sha = report.model["sha256"]
    ort = rows.OrtRow()
    assert ort.cached(Path(artifact), sha, QUICK)
    assert not ort.cached(Path(artifact), sha, BenchOptions(onnx_prefill_chunk=16))
    assert not ort.cached(Path(artifact), "0" * 64, QUICK)
    (Path(artifact) / "model.onnx").write_bytes(b"tampered")
    assert not ort.cached(Path(artifact), sha, QUICK)


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
    (["bench", "--json-out", "/nonexistent/dir/bench.json"], "cannot write /nonexistent/dir/bench.json"),
    (["bench", "/nonexistent/model.pth"], "no such checkpoint file"),
])
def test_cli_errors_are_one_line(argv, message, cli):
    code, out, err = cli(*argv)
    assert code == 1 and err.count("\n") == 1 and message in err and "Traceback" not in err


def test_cli_rejects_zero_steps(cli):
    code, _, err = cli("bench", "--steps", "0")
    assert code == 2 and "usage:" in err


# -- GPU options: their mechanics without a GPU ----------------------------------------------------
def _no_cuda_gpu() -> bool:
    import torch

    from rwkv_edge.platforms import cuda_device_arch

    return not torch.cuda.is_available() and cuda_device_arch() is None


needs_no_gpu = pytest.mark.skipif(not _no_cuda_gpu(), reason="a CUDA GPU is present: the error is for machines without one")


@needs_no_gpu
def test_device_cuda_without_a_gpu_is_one_clear_error(tmp_path, cli):
    with pytest.raises(OptionError, match="--device cuda: no CUDA GPU is visible here"):
        run_bench(None, BenchOptions(device="cuda"), work=tmp_path, log=lambda line: None)
    assert list(tmp_path.iterdir()) == []  # refused before anything was exported or compiled
    code, out, err = cli("bench", "--device", "cuda", "--work", str(tmp_path))
    assert code == 1 and out == "" and err.count("\n") == 1 and "no CUDA GPU is visible here" in err


@needs_no_gpu
def test_bench_script_refuses_cuda_before_writing_a_checkpoint(tmp_path):
    import subprocess
    import sys

    script = Path(__file__).parents[2] / "scripts" / "bench.py"
    proc = subprocess.run([sys.executable, str(script), "--device", "cuda", "--models", "1.5b", "--weights", "fp32,fp16",
                           "--work", str(tmp_path), "--json-dir", str(tmp_path)], capture_output=True, text=True)
    assert proc.returncode == 1 and "no CUDA GPU is visible here" in proc.stderr and "Traceback" not in proc.stderr
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("kwargs,message", [
    ({"device": "tpu"}, "unknown device 'tpu'; choose from cpu, cuda"),
    ({"weights": "int3"}, "weights must be one of fp32, fp16, int8, int4, got 'int3'"),
    ({"weights": "int8", "device": "cuda"}, "int8 weights are benched on the CPU"),
    ({"weights": "fp16"}, r"fp16 weights run on a GPU only: add --device cuda"),
    ({"tvm_target": "cuda-sm90"}, "cuda-sm90 is a GPU target"),
    ({"tvm_target": "x86_64-host", "device": "cuda"}, "x86_64-host is a CPU target; on device cuda the TVM row runs a "
                                                      "CUDA target"),
    ({"tvm_target": "apple-m-metal", "device": "cuda"}, "apple-m-metal is a metal target"),
])
def test_gpu_options_are_checked(kwargs, message):
    with pytest.raises(OptionError, match=message):
        BenchOptions(**kwargs)


def test_gpu_options_that_hold():
    options = BenchOptions(device="cuda", weights="fp16", tvm_target="cuda-sm80")
    # onnxruntime: fp32; native: the C runtime runs CPU bundles only (its row says it is unavailable on a GPU)
    assert [bench_row(b).weights_of(options) for b in BACKENDS] == ["fp16", "fp32", "fp16", "fp32"]
    assert BenchOptions().tvm_target is None and BenchOptions().device == "cpu"
    assert BenchOptions().backends == ("torch", "onnxruntime", "tvm")  # the native row runs when named


def test_quantized_rows_on_the_cpu():
    """int8/int4: onnxruntime, TVM and the native runtime (TVM's bundle) hold them (their bound counts a byte
    or half a byte a weight of the linear layers); torch stays fp32."""
    from rwkv_edge.bench.bound import row_weight_bytes

    options = BenchOptions(weights="int4")
    assert [bench_row(b).weights_of(options) for b in BACKENDS] == ["fp32", "int4", "int4", "int4"]
    assert rows.tvm_bundle_name("x86_64-host", "int4") == "tvm-x86_64-host-int4"
    tensors = make_checkpoint("v7")
    full, int8, int4 = (row_weight_bytes(tensors, w, rows.TvmRow.every_weight) for w in ("fp32", "int8", "int4"))
    assert int4 < int8 < full / 2


@pytest.mark.parametrize("arch,target", [("sm_90", "cuda-sm90"), ("sm_90a", "cuda-sm90"), ("sm_89", "cuda-sm89"),
                                         ("sm_86", "cuda-sm80"), ("sm_80", "cuda-sm80"), ("sm_120", "cuda-sm90"),
                                         ("sm_75", "cuda-sm80")])  # older than every target: its row says why
def test_default_cuda_target_is_the_newest_the_gpu_runs(arch, target, monkeypatch):
    monkeypatch.setattr(bench, "host_triple", lambda: "x86_64-linux-gnu")
    assert bench.default_cuda_target(arch) == target


def test_default_cuda_target_on_a_jetson(monkeypatch):
    monkeypatch.setattr(bench, "host_triple", lambda: "aarch64-linux-gnu")
    assert bench.default_cuda_target("sm_87") == "jetson-orin"


def test_bundle_cache_keys_hold_target_and_weights():
    assert rows.tvm_bundle_name("x86_64-host", "fp32") == "tvm-x86_64-host"  # CPU caches keep their place
    names = {rows.tvm_bundle_name(t, w) for t in ("cuda-sm80", "cuda-sm90") for w in ("fp32", "fp16")}
    assert names == {"tvm-cuda-sm80-fp32", "tvm-cuda-sm80-fp16", "tvm-cuda-sm90-fp32", "tvm-cuda-sm90-fp16"}


def _fake_bundle(export: Path, out: Path, target: dict, rehash) -> Path:
    """A copy of an ONNX export whose manifest says it is a TVM bundle with ``target``."""
    import shutil

    shutil.copytree(export, out)
    weights = target.pop("weights", "fp32")
    rehash(out, lambda data: data.update(kind="tvm", weights=weights, compute="fp32",
                                         target={"triple": "x86_64-linux-gnu", "tvm": {}, "linked": True, **target},
                                         graphs={**data["graphs"], "interface": {"function": "interface"}}))
    return out


def test_a_cached_bundle_must_match_target_and_weights(report, tmp_path, rehash):
    sha = report.model["sha256"]
    export = Path(report.preparation["onnxruntime"]["artifact"])
    gpu = _fake_bundle(export, tmp_path / "gpu", {"name": "cuda-sm90", "device": "cuda", "arch": "sm_90", "weights": "fp16"}, rehash)
    asked, tvm = BenchOptions(device="cuda", tvm_target="cuda-sm90", weights="fp16"), rows.TvmRow()
    assert tvm.cached(gpu, sha, asked)
    assert not tvm.cached(gpu, sha, BenchOptions(device="cuda", tvm_target="cuda-sm90", weights="fp32"))
    assert not tvm.cached(gpu, sha, BenchOptions(device="cuda", tvm_target="cuda-sm80", weights="fp16"))
    cpu = _fake_bundle(export, tmp_path / "cpu", {"name": "x86_64-host", "device": "cpu"}, rehash)  # no weights: fp32
    assert tvm.cached(cpu, sha, BenchOptions(tvm_target="x86_64-host", onnx_prefill_chunk=0))
    assert not tvm.cached(cpu, sha, BenchOptions(tvm_target="x86_64-host"))  # asks for a prefill function
    assert not tvm.cached(cpu, sha, asked)
    rehash(cpu, lambda data: data["graphs"].pop("interface"))  # an older rwkv-edge's bundle: its library lacks it
    assert not tvm.cached(cpu, sha, BenchOptions(tvm_target="x86_64-host", onnx_prefill_chunk=0))


def test_gpu_compiles_pass_target_and_weights(report, tmp_path, monkeypatch):
    calls = []
    monkeypatch.setattr(rows, "tvm_unavailable", lambda target: None)
    for row in (rows.OrtRow, rows.TvmRow):
        monkeypatch.setattr(row, "build", lambda row, source, out, options, log: calls.append(
            [row.name, str(source), options.tvm_target, row.weights_of(options), row.prefill_chunk(options)]))
    monkeypatch.setattr(rows.shutil, "which", lambda name: f"/usr/bin/{name}")
    checkpoint, sha, onnx = DEMO_CHECKPOINT, report.model["sha256"], Path("export")

    def prep(options):
        return rows.Preparation(checkpoint, sha, options, tmp_path, lambda line: None)

    for weights in ("fp32", "fp16"):
        out = rows.TvmRow().prepare(prep(BenchOptions(device="cuda", tvm_target="cuda-sm90", weights=weights)), onnx)
        assert out.name == f"tvm-cuda-sm90-{weights}"
        assert calls[-1] == ["tvm", "export", "cuda-sm90", weights, 0]
    out = rows.TvmRow().prepare(prep(BenchOptions(tvm_target="x86_64-host")))
    assert out.name == "tvm-x86_64-host" and calls[-1] == ["tvm", str(checkpoint), "x86_64-host", "fp32", PREFILL_CHUNK]
    out = rows.DecodeExport().prepare(prep(BenchOptions(device="cuda")))
    assert out.name == "onnx-fp32-prefill0" and calls[-1][0] == "onnx" and calls[-1][-1] == 0


def test_gpu_compiles_without_nvcc_are_unavailable(report, tmp_path, monkeypatch):
    monkeypatch.setattr(rows, "tvm_unavailable", lambda target: None)
    monkeypatch.setattr(rows.shutil, "which", lambda name: None)
    options = BenchOptions(device="cuda", tvm_target="cuda-sm90")
    with pytest.raises(rows.Unavailable, match="nvcc not found"):
        rows.TvmRow().prepare(rows.Preparation(DEMO_CHECKPOINT, report.model["sha256"], options, tmp_path,
                                               lambda line: None))


def test_a_given_gpu_bundle_sets_device_weights_and_target(report, tmp_path, rehash):
    export = Path(report.preparation["onnxruntime"]["artifact"])
    bundle = _fake_bundle(export, tmp_path / "gpu", {"name": "cuda-sm89", "device": "cuda", "arch": "sm_89", "weights": "fp16"}, rehash)
    with pytest.raises(OptionError, match="a TVM bundle for cuda-sm89 \\(cuda\\); .*: add --device cuda"):
        bench._resolve_source(bundle, BenchOptions())
    with pytest.raises(OptionError, match="a bundle with fp16 weights; pass --weights fp16"):
        bench._resolve_source(bundle, BenchOptions(device="cuda"))
    with pytest.raises(OptionError, match="a bundle for cuda-sm89, not cuda-sm90"):
        bench._resolve_source(bundle, BenchOptions(device="cuda", weights="fp16", tvm_target="cuda-sm90"))
    checkpoint, given, options = bench._resolve_source(bundle, BenchOptions(device="cuda", weights="fp16"))
    assert checkpoint == DEMO_CHECKPOINT and given == {"tvm": bundle} and options.tvm_target == "cuda-sm89"


def test_fp16_weight_bytes_count_gemv_weights_at_two_bytes():
    C, V, L = 64, 256, 3  # the model of test_weight_bytes_match_a_hand_count
    gemv = (2 * C * 32 + 2 * C * 32 + 2 * C * 64  # w1 w2, a1 a2, g1 g2
            + 4 * C * C + 4 * C * C + 4 * C * C)  # receptance key value output, ffn key, ffn value
    other = 6 * C + 2 * C + 2 * C + C + 2 * C + C + 4 * C  # x_*, w0 a0, k_k k_a, r_k, ln_x, ffn x_k, ln1 ln2
    values_gemv = L * gemv + (L - 1) * 2 * C * 16 + V * C  # + v1 v2 past layer 0, the head
    values_other = L * other + (L - 1) * C + 2 * C + 2 * C + C  # + v0 past layer 0, ln0, ln_out, one emb row
    tensors = make_checkpoint("v7", n_layer=L, n_embd=C, vocab_size=V, head_size=32)
    assert weight_bytes_per_token(tensors, gemv_bytes_per_value=2) == 2 * values_gemv + 4 * values_other
    assert bound.row_weight_bytes(tensors, "fp16", rows.TvmRow.every_weight) == 2 * values_gemv + 4 * values_other
    assert bound.row_weight_bytes(tensors, "fp16", rows.TorchRow.every_weight) == 2 * (values_gemv + values_other)
    assert bound.row_weight_bytes(tensors, "fp32", rows.TvmRow.every_weight) == weight_bytes_per_token(tensors)
    names = bound.gemv_weight_names(tensors)
    assert "head.weight" in names and "blocks.1.att.v1" in names and "blocks.0.att.v1" not in names  # unused there
    assert not {"emb.weight", "blocks.0.att.r_k", "blocks.0.ln1.weight"} & names


@pytest.mark.parametrize("bits", [8, 4])
def test_quantized_weight_bytes_count_the_linear_layers_at_bits_plus_scales(bits):
    C, V, L = 64, 256, 3  # the model of test_weight_bytes_match_a_hand_count
    linear = L * (4 * C * C + 4 * C * C + 4 * C * C) + V * C  # receptance key value output, ffn key/value, head
    tensors = make_checkpoint("v7", n_layer=L, n_embd=C, vocab_size=V, head_size=32)
    quantized = linear * bits // 8 + linear // 32 * 2  # fp16 scales per 32; LoRA matrices stay fp32
    row = C * bits // 8 + C // 32 * 4  # the token's embedding row: its integers and fp32-stored scales
    assert (bound.quantized_weight_bytes_per_token(tensors, bits, 32)
            == weight_bytes_per_token(tensors) - 4 * linear - 4 * C + quantized + row)


@pytest.mark.parametrize("version", ["v4", "v5", "v6", "v7"])
def test_gemv_weights_are_every_matrix_but_the_embedding_and_per_head_ones(version):
    tensors = make_checkpoint(version, n_layer=2, n_embd=128, vocab_size=256, head_size=64)
    per_head = {"att.time_decay", "att.time_faaaa", "att.r_k"}  # (H, N): elementwise, no matmul
    matrices = {k for k, t in tensors.items() if t.dim() == 2 and k != "emb.weight"
                and not any(k.endswith(p) for p in per_head) and k not in ("blocks.0.att.v1", "blocks.0.att.v2")}
    assert bound.gemv_weight_names(tensors) == matrices


def test_fp16_bytes_match_what_a_gpu_bundle_stores(tvm_bundle, version_ckpt):
    import shutil

    if shutil.which("nvcc") is None:
        pytest.skip("nvcc is not installed here: no CUDA bundle to compare with")
    from safetensors.numpy import load_file

    from rwkv_edge.artifact import read_manifest
    from rwkv_edge.model.sources import open_checkpoint

    bundle = tvm_bundle("v7", "cuda-sm90", "fp16")
    tensors = open_checkpoint(read_manifest(bundle).source["checkpoint"]).tensors
    params = load_file(str(bundle / "params.safetensors"))
    stored = sum(v.nbytes for v in params.values() if v.dtype == "float16")
    assert stored == 2 * sum(tensors[name].numel() for name in bound.gemv_weight_names(tensors))


def test_torch_state_stays_on_its_device_between_steps():
    """TorchBackend's device path, on "cpu:0" (no GPU here): same logits as the numpy path, and the
    state it returns goes back in without a copy."""
    from rwkv_edge.model import load_model
    from rwkv_edge.runtime.torch_backend import TorchBackend, TorchDeviceTensor

    host, device = TorchBackend(load_model(DEMO_CHECKPOINT)), TorchBackend(load_model(DEMO_CHECKPOINT), device="cpu:0")
    state_h, state_d = host.init_state(), device.init_state()
    for token in (1, 2, 3):
        logits_h, state_h = host.step(token, state_h)
        logits_d, next_d = device.step(token, state_d)
        assert isinstance(logits_d, np.ndarray) and np.array_equal(logits_h, logits_d)
        value = next(iter(next_d.values()))
        assert isinstance(value, TorchDeviceTensor) and value.dtype == np.float32
        assert device._on_device(value) is value.tensor
        state_d = next_d
    for name, array in state_h.items():
        assert state_d[name].shape == array.shape and np.array_equal(np.asarray(state_d[name]), array)


@pytest.fixture
def gpu_report(monkeypatch, tmp_path):
    """run_bench's GPU path with the GPU faked: no worker runs; every row's median is given."""
    medians = {"torch": 8.0, "tvm": 0.5}
    monkeypatch.setattr(bench, "cuda_arch", lambda: "sm_90")
    monkeypatch.setattr(rows, "ort_cuda_unavailable", lambda: "no CUDA provider in this test")
    monkeypatch.setattr(rows, "tvm_unavailable", lambda target: None)
    monkeypatch.setattr(rows.ArtifactRow, "prepare", lambda row, prep, source=None: tmp_path / row.name)
    monkeypatch.setattr(bench, "measure_gpu_bandwidth", lambda buffer, repeats, log: {
        "read_gb_s": [3000.0] * repeats, "copy_gb_s": [2800.0] * repeats,
        "gpu": {"name": "Fake H100", "arch": "sm_90", "memory_mib": 81559.0, "multiprocessors": 132,
                "l2_mib": 0.5, "torch_cuda": "13.0"}})

    def measure(backend, source, options, threads, log):
        d = {k: medians[backend] for k in ("median", "p10", "p90", "mean", "min", "max")}
        return BackendRun(backend, "ok", source=str(source), threads=threads, decode_ms=d, decode_steps=options.steps)

    monkeypatch.setattr(bench, "_measure", measure)
    options = BenchOptions(device="cuda", weights="fp16", bandwidth_repeats=2)
    return run_bench(None, options, work=tmp_path, log=lambda line: None)


def test_gpu_rows_each_have_their_own_bound(gpu_report):
    from rwkv_edge.model.sources import open_checkpoint

    tensors = open_checkpoint(DEMO_CHECKPOINT).tensors
    torch_run, ort_run, tvm_run = gpu_report.runs
    assert gpu_report.options["tvm_target"] == "cuda-sm90" and gpu_report.options["device"] == "cuda"
    assert ort_run.status == "unavailable" and ort_run.reason == "no CUDA provider in this test"
    assert (torch_run.weights, tvm_run.weights) == ("fp16", "fp16")
    assert torch_run.weight_bytes_per_token == weight_bytes_per_token(tensors, 2)
    assert tvm_run.weight_bytes_per_token == weight_bytes_per_token(tensors, gemv_bytes_per_value=2)
    assert gpu_report.bandwidth["gb_s"] == 3000.0 and gpu_report.bandwidth["copy_gb_s"] == 2800.0
    assert len(gpu_report.bandwidth["samples_gb_s"]) == 4  # before and after the rows
    for run in (torch_run, tvm_run):
        assert run.bound_ms == pytest.approx(bound_ms(run.weight_bytes_per_token, 3000.0))
        assert run.vs_bound == pytest.approx(run.decode_ms["median"] / run.bound_ms)
    assert gpu_report.bound_ms == pytest.approx(bound_ms(weight_bytes_per_token(tensors), 3000.0))  # fp32 figure
    assert tvm_run.vs_torch == pytest.approx(0.5 / 8.0) and torch_run.vs_torch == 1.0
    assert gpu_report.machine["gpu"]["name"] == "Fake H100" and not gpu_report.weights["fits_in_cache"]


def test_gpu_table_and_json(gpu_report, tmp_path):
    table = gpu_report.table()
    assert "\ngpu       Fake H100 (sm_90" in table and "device-to-device copy 2800.0 GB/s" in table
    assert "x torch" in table and "x ORT" not in table and "tvm fp16:" in table and "GPU synchronisation" in table
    assert "\ntvm             fp16 " in table and "\nonnxruntime  unavailable: no CUDA provider in this test" in table
    data = json.loads(save_report(gpu_report, tmp_path / "bench.json").read_text())
    assert BenchReport.from_json(data) == gpu_report


def test_bench_cli_choices_match_the_library(cli):
    from rwkv_edge.cli.main import build_parser

    sub = build_parser()._subparsers._group_actions[0].choices
    choices = {a.dest: tuple(a.choices) for a in sub["bench"]._actions if a.choices}
    assert choices == {"device": options.DEVICES, "weights": options.WEIGHTS}
    parser = build_parser()
    assert parser.parse_args(["bench"]).prefill_chunk == BenchOptions().onnx_prefill_chunk
    assert parser.parse_args(["bench", "--prefill-chunk", "32"]).prefill_chunk == 32
    code, _, err = cli("bench", "--weights", "fp16")
    assert code == 1 and err.count("\n") == 1 and "add --device cuda" in err
    code, _, err = cli("bench", "--target", "cuda-sm90")
    assert code == 1 and err.count("\n") == 1 and "cuda-sm90 is a GPU target" in err


def test_the_parameter_count_is_the_one_info_prints(report, cli):
    code, out, _ = cli("info", "--json")
    assert code == 0 and json.loads(out)["parameters"] == report.model["parameters"]


def test_the_native_row_runs_the_given_bundle_in_a_program_of_its_own(demo_bundle, work):
    """The C runtime's row measures rwkv-edge-runner on the bundle given (beside TVM's Python on the same
    one): its own calls, its own peak RSS, the bundle's prefill chunk."""
    from dataclasses import replace

    from rwkv_edge.runtime.native_runner import host_arch, runner_unavailable

    if why := runner_unavailable(host_arch()):
        pytest.skip(f"no native runtime here: {why}")
    result = run_bench(demo_bundle, replace(QUICK, backends=("tvm", "native"), prefill=40), work=work,
                       log=lambda _: None)
    tvm_run, native_run = result.runs
    for run in (tvm_run, native_run):
        assert run.ok and run.source == str(demo_bundle) and run.decode_steps == 6 and run.prefill_tokens == 40
        assert 0 < run.decode_ms["min"] <= run.decode_ms["median"] and len(run.prefill_s) == 2
        assert run.details["prefill_chunk"] == 32
    assert native_run.peak_rss_mib > 0 and native_run.base_rss_mib == 0 and "rwkv-edge-runner" in native_run.details["program"]
    only = run_bench(demo_bundle, replace(QUICK, backends=("native",)), work=work, log=lambda _: None)
    assert [(r.backend, r.source) for r in only.runs] == [("native", str(demo_bundle))]  # the bundle given, not a rebuild
