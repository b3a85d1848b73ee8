"""int8-compute TVM bundles (compile/tvm/intdot.py): int8/int4 weights times activations rounded to int8 per
group, summed by the dot instructions (x86 AVX-512 VNNI vpdpbusd on the host, ARM sdot under qemu)."""

from __future__ import annotations

import re
import shutil
import subprocess

import numpy as np
import pytest

from rwkv_edge.artifact import read_manifest
from rwkv_edge.artifact.files import LIBRARY
from rwkv_edge.compile.tvm import TvmOptions, compile_tvm
from rwkv_edge.errors import OptionError
from rwkv_edge.model import LANGUAGE_ARCHITECTURES
from rwkv_edge.runtime.tvm_backend import TvmBackend
from rwkv_edge.targets import get_target
from rwkv_edge.verify import verify_artifact
from rwkv_edge.verify.report import OutputErrors
from rwkv_edge.verify.tolerances import FP32

HOST_VNNI = get_target("x86_64-host").dot_product() == "vnni"
needs_vnni = pytest.mark.skipif(not HOST_VNNI, reason="this CPU has no AVX-512 VNNI (avx512vnni): no int8 compute on the host")


def quiet(_: str) -> None:
    pass


@needs_vnni
@pytest.mark.parametrize("weights", ["int8", "int4"])
@pytest.mark.parametrize("version", list(LANGUAGE_ARCHITECTURES))
def test_int8_compute_bundles_match_the_activation_rounding_model(version, weights, tvm_bundle):
    """Default on a VNNI host: every quantized projection rounds its input and sums integer products;
    held to the int8-compute limits against the PyTorch model that rounds the same way."""
    bundle = tvm_bundle(version, weights=weights, prefill=8)
    manifest = read_manifest(bundle)
    assert manifest.compute == "int8" and manifest.weights == weights
    kernels = manifest.target.kernels
    assert kernels[f"int{weights[-1]} gemv (vnni)"] > 0 and kernels["int8 dot kernels"] > 0, kernels
    report = verify_artifact(bundle, steps=32, greedy_tokens=0, log=quiet)
    assert report.passed, report.summary()
    assert report.tolerance.name == f"{weights} weights, int8 compute"  # a tiny model's spread widens nothing
    with np.load(bundle / "reference.npz") as reference:  # the rounding spread, recorded for verify
        assert {"spread_logits", "spread_state", "spread_top1"} <= set(reference.files)


@needs_vnni
def test_verify_against_the_checkpoint_rounds_the_activations_too(tvm_bundle):
    """``--against-checkpoint`` builds the live reference as the manifest says: with compute int8 the model
    rounds its projections' inputs; without that rounding the same bundle is far off (the test can fail)."""
    from rwkv_edge.artifact.reference import load_reference
    from rwkv_edge.artifact.builder import build_reference, tokenizer_name
    from rwkv_edge.model import load_checkpoint

    bundle = tvm_bundle("v7", weights="int4", prefill=8)
    report = verify_artifact(bundle, steps=16, greedy_tokens=8, against_checkpoint=True, log=quiet)
    assert report.passed, report.summary()
    model, _ = load_checkpoint(read_manifest(bundle).source["checkpoint"])
    model.quantize_weights(4, 32)  # fp32 activations
    plain = build_reference(model, tokenizer_name(model))
    manifest = read_manifest(bundle)
    recorded = load_reference(bundle / "reference.npz", model.state_spec(), manifest.config["vocab_size"])
    e = OutputErrors()
    e.add(0, plain.logits.full, recorded.logits.full)
    assert e.scaled[0] > 100 * FP32.logits_scaled, e.scaled[0]


@needs_vnni
def test_a_checkpoint_compiled_for_int8_compute_records_one_reference_and_passes(make_ckpt, tmp_path):
    """From a checkpoint the export records the int8-compute rollout (with its spread) from the model it holds:
    no fp32 rollout to throw away, no second load of the checkpoint; the bundle passes verify on it."""
    lines: list[str] = []
    compile_tvm(make_ckpt("v7"), tmp_path, TvmOptions(weights="int4", prefill_chunk=4), log=lines.append)
    rollouts = [line.strip() for line in lines if "rollout" in line and line.strip().endswith("...")]
    assert rollouts == ["reference rollout and rounding spread (int8 compute: activations rounded per group) ..."]
    assert sum("load checkpoint ..." in line for line in lines) == 1
    with np.load(tmp_path / "reference.npz") as reference:
        assert "spread_logits" in reference.files
    report = verify_artifact(tmp_path, steps=64, greedy_tokens=32, log=quiet)
    assert report.passed, report.summary()


@needs_vnni
@pytest.mark.parametrize("weights", ["int8", "int4"])
def test_prefill_rounds_each_row_as_the_steps_do(weights, tvm_bundle, prefill_vs_steps):
    """The prefill GEMMs round every row on its own: 8 tokens in one call equal 8 steps."""
    backend = TvmBackend(tvm_bundle("v7", weights=weights, prefill=8))
    for name, gap in prefill_vs_steps(backend, [3, 141, 59, 26, 5, 35, 89, 79]).items():
        assert gap <= FP32.logits_scaled, f"prefill {name}: max|Δ|/std {gap:.2e}"


@pytest.mark.skipif(shutil.which("objdump") is None, reason="objdump (binutils) is not installed")
@needs_vnni
@pytest.mark.parametrize("weights", ["int8", "int4"])
def test_host_dot_kernels_are_vpdpbusd(weights, tvm_bundle):
    """Every int8-compute GEMV and GEMM kernel sums with vpdpbusd (int4: nibbles masked / shifted in zmm)."""
    text = _disassemble("objdump", tvm_bundle("v7", weights=weights, prefill=8) / LIBRARY)
    kernels = _kernels(text, "intdot")
    assert kernels, "no intdot kernel in the library"
    for name, body in kernels.items():
        assert re.search(r"\bvpdpbusd\s+%zmm", body), f"{name} has no vpdpbusd"
        assert not re.search(r"\bvcvtdq2ps\b.*\n.*\bvfmadd", body), f"{name} still converts every weight"


def test_aarch64_dot_kernels_are_sdot_and_match_under_qemu(tvm_bundle):
    """raspberry-pi-5 (Cortex-A76, +dotprod): int4 and int8 kernels sum with sdot; the parity rollout runs
    on an emulated Cortex-A76 over RPC (its timings mean nothing)."""
    from rwkv_edge.runtime.rpc_client import Remote
    from rwkv_edge.runtime.rpc_server import emulation_unavailable_reason, rpc_server

    if shutil.which("aarch64-linux-gnu-objdump") is None or emulation_unavailable_reason():
        pytest.skip(emulation_unavailable_reason() or "aarch64-linux-gnu-objdump missing (binutils-aarch64-linux-gnu)")
    for weights in ("int4", "int8"):
        directory = tvm_bundle("v7", "raspberry-pi-5", weights, prefill=8)
        assert read_manifest(directory).compute == "int8"
        kernels = _kernels(_disassemble("aarch64-linux-gnu-objdump", directory / LIBRARY), "intdot")
        assert kernels, "no intdot kernel in the library"
        for name, body in kernels.items():
            assert re.search(r"\bsdot\s+v\d+\.4s, v\d+\.16b, v\d+\.16b", body), f"{name} has no sdot"
        with rpc_server(emulate="cortex-a76") as (host, port):
            report = verify_artifact(directory, steps=16, greedy_tokens=0, remote=Remote(f"{host}:{port}"), log=quiet)
        assert report.passed, report.summary()
        assert report.tolerance.name == f"{weights} weights, int8 compute"


def test_bad_compute_requests_are_one_line_before_any_work(onnx_export, tmp_path):
    """int8 compute on a target without the instruction, or of fp32 weights: one OptionError, nothing written."""
    cases = [(TvmOptions("aarch64-linux", weights="int8", compute="int8"), "aarch64-linux has no int8 dot-product "
                                                                          "instruction .*--compute fp32"),
             (TvmOptions("raspberry-pi-4", compute="int8"), "raspberry-pi-4 has no int8 dot-product instruction"),
             (TvmOptions("raspberry-pi-5", weights="fp32", compute="int8"), "int8 compute takes int8 or int4 weights, "
                                                                          "not fp32"),
             (TvmOptions("cuda-sm80", weights="fp16", compute="int8"), "cuda-sm80 bundles compute in fp32 .*drop "
                                                                         "--compute int8")]
    for options, message in cases:
        with pytest.raises(OptionError, match=message) as raised:
            compile_tvm(onnx_export("v7"), tmp_path / "out", options, log=quiet)
        assert "\n" not in str(raised.value)
        assert not (tmp_path / "out").exists()
    with pytest.raises(OptionError, match="int8 compute takes int8 or int4 weights, not fp32"):
        compile_tvm(onnx_export("v7"), tmp_path / "out", TvmOptions("x86_64-host", compute="int8"), log=quiet)  # from the export
    with pytest.raises(OptionError, match="unknown compute 'int4'"):
        TvmOptions(compute="int4")


def test_the_cli_takes_compute_and_the_targets_list_says_it(make_ckpt, tmp_path, cli):
    code, out, err = cli("targets")
    assert code in (0, None)
    pi5 = out.split("raspberry-pi-5\n", 1)[1].split("\n\n")[0]
    assert re.search(r"compute\s+int8/int4 weights: int8 \(activations rounded per group, sdot; default\)", pi5), pi5
    assert re.search(r"compute\s+fp32 \(no int8 dot instruction", out.split("raspberry-pi-4\n", 1)[1]), out
    code, out, err = cli("compile", str(make_ckpt("v7")), "--target", "aarch64-linux", "--weights", "int8",
                         "--compute", "int8", "-o", str(tmp_path / "b"))
    assert code == 1 and err.strip().count("\n") == 0 and "no int8 dot-product instruction" in err, err


@pytest.mark.parametrize("bits", [8, 4])
@pytest.mark.parametrize("isa", ["vnni", "sdot"])
def test_dot_packing_holds_the_exact_integers_in_groups_of_four_k(bits, isa):
    """pack_intdot: 4 consecutive k of a column in 4 adjacent bytes; int4 low nibbles one 4-k block, high the
    next; the zero point each ISA needs; zero scales on the padding columns (N = 70, tile 32)."""
    from rwkv_edge.compile.tvm.intdot import DOT_ISAS, pack_intdot
    from rwkv_edge.quantize import quantize

    found = quantize(np.random.default_rng(bits).normal(size=(70, 64)).astype(np.float32), bits, 32)
    values, scales = pack_intdot(found, 32, isa)
    v = values.astype(np.int16)  # (3, K/4 or K/8, 32, 4)
    if bits == 4:
        assert values.dtype == np.uint8 and values.shape == (3, 8, 32, 4)
        v = np.stack([v & 0xF, v >> 4], axis=2).reshape(3, 16, 32, 4) - 8  # (tiles, K/4, tile, 4)
    else:
        assert values.dtype == np.dtype(DOT_ISAS[isa].weight_dtype) and values.shape == (3, 16, 32, 4)
        v = v - DOT_ISAS[isa].int8_zero
    q = v.transpose(0, 2, 1, 3).reshape(96, 64)  # (N padded, K)
    np.testing.assert_array_equal(q[:70], found.values)
    assert not scales.transpose(0, 2, 1).reshape(96, -1)[70:].any()


def test_activation_rounding_model_rounds_per_group():
    """round_activations: per group of K, amax maps to +-127 levels, ties to even, an all-zero group stays zero."""
    import torch

    from rwkv_edge.model.base import round_activations

    x = torch.tensor([[127.0, 0.5, 1.5, -2.5] + [0.0] * 4 + [0.0] * 8])  # (1, 16): groups of 8
    y = round_activations(x, 8)
    assert y[0, :4].tolist() == [127.0, 0.0, 2.0, -2.0] and not y[0, 8:].any()


def _disassemble(objdump: str, library) -> str:
    return subprocess.run([objdump, "-d", "--no-show-raw-insn", str(library)], check=True, capture_output=True,
                          text=True).stdout


def _kernels(disassembly: str, needle: str) -> dict[str, str]:
    """Kernel name -> text of the functions whose name contains ``needle`` (wrapper and parallel body together)."""
    kernels: dict[str, list[str]] = {}
    current = None
    for line in disassembly.splitlines():
        if line.endswith(">:"):
            name = line.split("<", 1)[1][:-2]
            current = name.removeprefix("__tvm_ffi_").removesuffix("_compute_") if needle in name else None
        elif current and line.strip():
            kernels.setdefault(current, []).append(line)
    return {name: "\n".join(lines) for name, lines in kernels.items()}


@pytest.mark.skipif(shutil.which("objdump") is None, reason="objdump (binutils) is not installed")
@pytest.mark.parametrize("bits", [8, 4])
@pytest.mark.parametrize("isa,mcpu,register", [("vnni", "cascadelake", "zmm"), ("avxvnni", "alderlake", "ymm")])
def test_the_dot_kernel_alone_on_each_x86_isa(isa, mcpu, register, bits, tmp_path):
    """The int8-compute kernel over 2 rows, built for a CPU with that ISA: the instruction in its loop, and,
    where this machine can run it, y = (xq * dx) @ W exactly as the dequantized product (fp32 rounding)."""
    import tvm
    from tvm import te
    from tvm.target import Target, codegen

    from rwkv_edge.compile.tvm.intdot import intdot, pack_intdot, schedule_intdot
    from rwkv_edge.compile.tvm.tuning import ScheduleParams
    from rwkv_edge.quantize import quantize

    rng = np.random.default_rng(bits)
    k, n, rows, tile = 256, 96, 2, 16
    found = quantize(rng.standard_normal((n, k)).astype(np.float32), bits, 32)
    values, scales = pack_intdot(found, tile, isa)
    xq = te.placeholder((rows, k), "int8"), te.placeholder((rows, k // 32), "float32"), te.placeholder((rows, k // 32), "int32")
    weights = te.placeholder(values.shape, values.dtype), te.placeholder(scales.shape, "float16")
    y = intdot(*xq, *weights, n, bits, isa)
    sch = schedule_intdot(te.create_prim_func([*xq, *weights, y]), ScheduleParams(tile=tile, vector=8, dot=isa))
    assert sch is not None
    built = tvm.compile(sch.mod, Target({"kind": "llvm", "mcpu": mcpu}))
    built.export_library(str(tmp_path / "k.so"))
    assert re.search(rf"vpdpbusd\s+%{register}", _disassemble("objdump", tmp_path / "k.so"))
    host = Target({"kind": "llvm", "mcpu": get_target("x86_64-host").tvm_target()["mcpu"]})
    if not codegen.llvm_cpu_has_features({"vnni": "avx512vnni", "avxvnni": "avxvnni"}[isa], host):
        pytest.skip(f"this CPU cannot run {isa}: built and disassembled only")
    x = rng.integers(-127, 128, (rows, k)).astype(np.int8)
    dx = rng.random((rows, k // 32)).astype(np.float32)
    xsum = x.reshape(rows, -1, 32).astype(np.int32).sum(-1).astype(np.int32)
    out = tvm.runtime.tensor(np.zeros((rows, n), np.float32))
    built["main"](*[tvm.runtime.tensor(a) for a in (x, dx, xsum, values, scales)], out)
    expected = (x * np.repeat(dx, 32, -1)) @ found.dequantize().T
    assert np.abs(out.numpy() - expected).max() <= 1e-5 * expected.std()


@pytest.mark.skipif(shutil.which("objdump") is None, reason="objdump (binutils) is not installed")
@pytest.mark.parametrize("bits", [8, 4])
def test_the_prefill_dot_kernel_blocks_rows_in_registers_and_equals_the_gemv(bits, tmp_path):
    """The int8-compute GEMM (T = 12 rows, tile 64, vnni) keeps blocks of rows in registers: each zmm of
    weights it loads serves a vpdpbusd per row of the block (row by row: int8 one, int4 two; the other
    loads, the epilogue's, count against it); and each of its rows equals the one-row GEMV's result
    bit for bit, so that prefill computes what the steps compute."""
    import tvm
    from tvm.target import Target, codegen

    from rwkv_edge.compile.tvm.intdot import pack_intdot
    from rwkv_edge.quantize import quantize

    rng = np.random.default_rng(bits)
    k, n, rows = 256, 192, 12
    found = quantize(rng.standard_normal((n, k)).astype(np.float32), bits, 32)
    values, scales = pack_intdot(found, 64, "vnni")
    _dot_kernel(rows, values, scales, bits, Target({"kind": "llvm", "mcpu": "cascadelake"})).export_library(
        str(tmp_path / "k.so"))
    text = _disassemble("objdump", tmp_path / "k.so")
    dots = len(re.findall(r"\bvpdpbusd\s+%zmm", text))
    loads = len(re.findall(r"\bvmov\w+\s+-?(?:0x[0-9a-f]+)?\([^)]*\),%zmm", text))  # zmm loads from memory
    by_row = 1 if bits == 8 else 2  # row by row: a vpdpbusd per zmm of int8 weights, two per unpacked int4 zmm
    assert dots >= 1.25 * by_row * loads, f"{dots} vpdpbusd for {loads} zmm loads"
    host = Target({"kind": "llvm", "mcpu": get_target("x86_64-host").tvm_target()["mcpu"]})
    if not codegen.llvm_cpu_has_features("avx512vnni", host):
        pytest.skip("this CPU has no AVX-512 VNNI: built and disassembled only")
    x = rng.integers(-127, 128, (rows, k)).astype(np.int8)
    dx = rng.random((rows, k // 32)).astype(np.float32)
    xsum = x.reshape(rows, -1, 32).astype(np.int32).sum(-1).astype(np.int32)
    weights = [tvm.runtime.tensor(a) for a in (values, scales)]
    gemm, gemv = _dot_kernel(rows, values, scales, bits, host), _dot_kernel(1, values, scales, bits, host)
    out = tvm.runtime.tensor(np.zeros((rows, n), np.float32))
    gemm["main"](*[tvm.runtime.tensor(a) for a in (x, dx, xsum)], *weights, out)
    for t in range(rows):
        row = tvm.runtime.tensor(np.zeros((1, n), np.float32))
        gemv["main"](*[tvm.runtime.tensor(a[t:t + 1]) for a in (x, dx, xsum)], *weights, row)
        np.testing.assert_array_equal(out.numpy()[t], row.numpy()[0])


def _dot_kernel(rows: int, values: np.ndarray, scales: np.ndarray, bits: int, target):
    """The int8-compute product of ``rows`` rows by packed (tile 64, vnni) weights, scheduled and built."""
    import tvm
    from tvm import te

    from rwkv_edge.compile.tvm.intdot import intdot, schedule_intdot
    from rwkv_edge.compile.tvm.tuning import ScheduleParams

    k, n = values.shape[1] * (4 if bits == 8 else 8), values.shape[0] * values.shape[2]
    xq = te.placeholder((rows, k), "int8"), te.placeholder((rows, k // 32), "float32"), te.placeholder((rows, k // 32), "int32")
    weights = te.placeholder(values.shape, values.dtype), te.placeholder(scales.shape, "float16")
    sch = schedule_intdot(te.create_prim_func([*xq, *weights, intdot(*xq, *weights, n, bits, "vnni")]),
                          ScheduleParams(tile=64, vector=8, dot="vnni"))
    return tvm.compile(sch.mod, target)
