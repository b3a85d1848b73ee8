"""Every manifest field a backend reads is held to the graph before anything runs: an artifact tampered
with and rehashed (nobody pinned it) ends in one ``rwkv-edge: error:`` line, never a traceback from
onnxruntime, the Relax VM or numpy. The cases are the adversarial review's (issue 23, class 7)."""

from __future__ import annotations

import json
import re
import shutil
import struct
import subprocess
from pathlib import Path

import numpy as np
import pytest

from rwkv_edge.artifact import MANIFEST
from rwkv_edge.platforms import host_arch
from rwkv_edge.runtime.native_runner import build_runner, runner_unavailable

PREFILL = 4  # the language artifacts' prefill chunk
no_runner = runner_unavailable(host_arch())


def manifest(edit):
    def run(directory: Path) -> None:
        data = json.loads((directory / MANIFEST).read_text())
        edit(data)
        (directory / MANIFEST).write_text(json.dumps(data))
    return run


def params_header(edit):
    """Rewrite params.safetensors' header (its data untouched)."""
    def run(directory: Path) -> None:
        path = directory / "params.safetensors"
        data = path.read_bytes()
        length = struct.unpack("<Q", data[:8])[0]
        header = json.loads(data[8:8 + length])
        edit(header)
        raw = json.dumps(header, separators=(",", ":")).encode()
        raw += b" " * (-(8 + len(raw)) % 64)
        path.write_bytes(struct.pack("<Q", len(raw)) + raw + data[8 + length:])
    return run


def first_matrix(header: dict) -> str:
    return next(k for k in sorted(header, key=lambda k: int(k[1:]) if k[1:].isdigit() else -1)
                if k.startswith("w") and len(header[k]["shape"]) == 2 and len(set(header[k]["shape"])) == 2)


def transpose_first_matrix(header: dict) -> None:
    header[first_matrix(header)]["shape"].reverse()


def as_int8(header: dict) -> None:
    """The same bytes read as int8: four times the elements, another dtype than the library's."""
    entry = header[first_matrix(header)]
    entry.update(dtype="I8", shape=[entry["shape"][0], entry["shape"][1] * 4])


def reference_images(size: int):
    """Reference images of ``size`` px beside config.image_size = size: consistent with each other,
    not with the graph."""
    def run(directory: Path) -> None:
        manifest(lambda d: d["config"].update(image_size=size))(directory)
        with np.load(directory / "reference.npz") as saved:
            arrays = {name: saved[name] for name in saved.files}
        arrays["images"] = np.zeros((len(arrays["images"]), 3, size, size), np.float32)
        np.savez(directory / "reference.npz", **arrays)
    return run


def reference_output(width: int):
    def run(directory: Path) -> None:
        with np.load(directory / "reference.npz") as saved:
            arrays = {name: saved[name] for name in saved.files}
        arrays["logits"] = arrays["logits"][:, :width]
        np.savez(directory / "reference.npz", **arrays)
    return run


def reference_claiming_terabytes(directory: Path) -> None:
    """reference.npz rewritten: its whole logits rows' header claims (100000, 3, 4096, 4096), 18.3 TiB of float32."""
    import io
    import zipfile

    with np.load(directory / "reference.npz") as saved:
        arrays = {name: saved[name] for name in saved.files}
    with zipfile.ZipFile(directory / "reference.npz", "w") as archive:
        for name, value in arrays.items():
            header = np.lib.format.header_data_from_array_1_0(value)
            if name == "logits_full":
                header["shape"] = (100000, 3, 4096, 4096)
            out = io.BytesIO()
            np.lib.format.write_array_header_1_0(out, header)
            archive.writestr(f"{name}.npy", out.getvalue() + value.tobytes())


def other_library(version: str, prefill: int):
    def run(directory: Path, tvm_bundle) -> None:
        shutil.copy(tvm_bundle(version, prefill=prefill) / "model.so", directory / "model.so")
    return run


CASES = {  # name -> (artifact, tampering, what the one line says)
    "onnx chunk 1e12": ("onnx", manifest(lambda d: d["graphs"]["prefill"].update(chunk=10**12)),
                        "graphs.prefill.chunk 1000000000000 is not 1 to 4096 tokens"),
    "tvm chunk 1e12": ("tvm", manifest(lambda d: d["graphs"]["prefill"].update(chunk=10**12)),
                       "graphs.prefill.chunk 1000000000000 is not 1 to 4096 tokens"),
    "tvm chunk -5": ("tvm", manifest(lambda d: d["graphs"]["prefill"].update(chunk=-5)), "graphs.prefill.chunk -5 is not"),
    "onnx chunk 3": ("onnx", manifest(lambda d: d["graphs"]["prefill"].update(chunk=3)),
                     r"prefill's input 0 is int64 \(1, 4\), the manifest implies int64 \(1, 3\) \(graphs.prefill.chunk\)"),
    "tvm chunk 3": ("tvm", manifest(lambda d: d["graphs"]["prefill"].update(chunk=3)),
                    r"model.so: prefill's input 0 is int64 \(1, 4\), the manifest implies int64 \(1, 3\) \(graphs.prefill.chunk\)"),
    "tvm all_logits": ("tvm", manifest(lambda d: d["graphs"]["prefill"].update(all_logits=True)),
                       r"prefill's output 0 is float32 \(1, 256\), the manifest implies float32 \(1, 4, 256\)"),
    "tvm num_params": ("tvm", manifest(lambda d: [g.update(num_params=g["num_params"] - 1) for g in d["graphs"].values()
                                                  if g["params"]]), "the library belongs to another bundle"),
    "tvm library without prefill": ("tvm", other_library("v7", 0), "has no function 'prefill'"),
    "tvm library of v5": ("tvm", other_library("v5", PREFILL), "belongs to another (model|bundle)"),
    "params negative dims": ("tvm", params_header(lambda h: h["w0"].update(shape=[-2, -2])),
                             "w0: (a malformed entry|a negative dimension)"),  # Python | the C++ runner
    "params 2^32 x 2^32": ("tvm", params_header(lambda h: h["w0"].update(shape=[2**32, 2**32])),
                           r"w0 \(F32 \[4294967296, 4294967296\]\) has bytes .* not its size|w0: .*more bytes than the file holds"),
    "params dtype": ("tvm", params_header(as_int8), "is int8 .* the library takes float32 .*: the weights of another bundle"),
    "params transposed": ("tvm", params_header(transpose_first_matrix), "the library takes .*: the weights of another bundle"),
    "onnx image size": ("vision-onnx", reference_images(32),
                        r"image's input 0 is float32 \(1, 3, 16, 16\), the manifest implies float32 \(1, 3, 32, 32\)"),
    "tvm image size": ("vision-tvm", reference_images(32),
                       r"main's input 0 is float32 \(1, 3, 16, 16\), the manifest implies float32 \(1, 3, 32, 32\)"),
    "tvm classes": ("vision-tvm", manifest(lambda d: d["config"].update(num_classes=5, class_names=d["config"]["class_names"][:5])),
                    r"reference.npz: its arrays do not have the shapes .* \(images \(8, 3, 16, 16\), logits \(8, 10\)\)"),
    "onnx reference claiming 18 TiB": ("onnx", reference_claiming_terabytes,
                                       r"reference.npz\[logits_full.npy\]: its header says float32 \(100000, 3, 4096, 4096\)"),
    "onnx reference of zero-width logits": ("vision-onnx", reference_output(0), r"logits \(8, 0\)"),
}


@pytest.fixture
def artifact(onnx_export, tvm_bundle, vision_export, vision_bundle, tmp_path):
    def copy(kind: str) -> Path:
        source = {"onnx": lambda: onnx_export("v7", PREFILL), "tvm": lambda: tvm_bundle("v7", prefill=PREFILL),
                  "vision-onnx": lambda: vision_export("plain"), "vision-tvm": lambda: vision_bundle("plain")}[kind]()
        return Path(shutil.copytree(source, tmp_path / kind))
    return copy


@pytest.mark.parametrize("case", CASES)
def test_a_tampered_field_is_one_line_before_anything_runs(case, artifact, tvm_bundle, rehash, cli):
    kind, tamper, message = CASES[case]
    directory = artifact(kind)
    if case.startswith("tvm library"):
        tamper(directory, tvm_bundle)
    else:
        tamper(directory)
    rehash(directory)
    code, out, err = cli("verify", str(directory), "--steps", "4", "--greedy-tokens", "0")
    assert code == 1 and err.count("\n") == 1 and err.startswith("rwkv-edge: error: "), err
    assert "Traceback" not in out + err and "rollout of" not in out  # refused before the first step
    assert re.search(message, err), err
    assert not (directory / "parity.json").exists()


@pytest.mark.skipif(no_runner is not None, reason=f"no host runner: {no_runner}")
@pytest.mark.parametrize("case", [case for case, (kind, _, _) in CASES.items() if kind == "tvm"])
def test_the_cpp_runner_refuses_the_same_tampering_in_the_same_words(case, artifact, tvm_bundle, rehash):
    """The C++ runner's reader (runtime/cpp/bundle_reader.cc) holds the bundle to the same library facts."""
    _, tamper, message = CASES[case]
    directory = artifact("tvm")
    if case.startswith("tvm library"):
        tamper(directory, tvm_bundle)
    else:
        tamper(directory)
    rehash(directory)
    done = subprocess.run([str(build_runner(log=lambda _: None)), str(directory), "--tokens", "1,2", "--out",
                           str(directory.parent / "out")], capture_output=True, text=True)
    assert done.returncode == 2 and done.stderr.count("\n") == 1, done.stderr
    assert done.stderr.startswith("rwkv-edge-runner: error: ") and re.search(message, done.stderr), done.stderr
    assert not (directory.parent / "out").exists()
