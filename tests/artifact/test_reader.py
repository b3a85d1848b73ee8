"""The artifact reader and the backends behind it: a manifest never steers a load outside its
directory, every file is hashed before anything opens it, the token range comes from the graph,
and every broken artifact ends in one ArtifactError (never a traceback, a crash or silent garbage)."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

from rwkv_edge.artifact import MANIFEST, open_artifact
from rwkv_edge.errors import ArtifactError, StateError, TokenError
from rwkv_edge.runtime.ort_backend import OrtBackend
from rwkv_edge.verify import verify_artifact


def quiet(_: str) -> None:
    pass


@pytest.fixture
def onnx_copy(onnx_export, tmp_path):
    """A private copy of the tiny v5 ONNX export (it ships an initial_state.npz)."""
    return Path(shutil.copytree(onnx_export("v5"), tmp_path / "onnx"))


@pytest.fixture
def tvm_copy(tvm_bundle, tmp_path):
    return Path(shutil.copytree(tvm_bundle("v5"), tmp_path / "tvm"))


def edit_manifest(directory: Path, edit) -> None:
    data = json.loads((directory / MANIFEST).read_text())
    edit(data)
    (directory / MANIFEST).write_text(json.dumps(data))


@pytest.mark.parametrize("text,message", [
    (b"\xff\xfe{}", "not UTF-8 text"),
    (b'"a manifest"', "expected a JSON object, got str"),
    (b"[" * 100_000 + b"]" * 100_000, "nested too deeply"),
    (b"{", "unreadable JSON"),
])
def test_unreadable_manifests(onnx_copy, text, message):
    (onnx_copy / MANIFEST).write_bytes(text)
    with pytest.raises(ArtifactError, match=message):
        open_artifact(onnx_copy)


@pytest.mark.parametrize("edit,message", [
    (lambda d: d.update(files=[]), "files has the wrong type"),
    (lambda d: d["files"].update({"../../etc/passwd": {"sha256": "0" * 64, "bytes": 1}}), "not a relative path inside"),
    (lambda d: d["files"].update({"/etc/passwd": {"sha256": "0" * 64, "bytes": 1}}), "not a relative path inside"),
    (lambda d: d["files"]["model.onnx"].update(sha256="xyz"), "not a sha256 hex digest"),
    (lambda d: d.pop("schema"), "written by another version of rwkv-edge"),
    (lambda d: d.update(contract_version="2.0"), "step contract 2.0; this rwkv-edge runs contract 1.2"),
    (lambda d: d.update(kind="wasm"), "unknown artifact kind 'wasm'"),
    (lambda d: d.update(architecture="v9"), "unknown architecture 'v9'"),
    (lambda d: d.update(surprise=1), "unknown field 'surprise'"),
    (lambda d: d["config"].update(vocab_size="many"), "config.vocab_size has the wrong type"),
    (lambda d: d["graphs"]["step"].update(file="/tmp/elsewhere.onnx"), "graphs.step.file .* is not one of the listed"),
    (lambda d: d["graphs"]["step"].update(file="unlisted.onnx"), "is not one of the listed files"),
    (lambda d: d.update(initial_state="../x.npz"), "initial_state '../x.npz' is not one of the listed files"),
    (lambda d: d["state"][0].update(shape=[10**9, 10**9]), "larger than any RWKV model"),
    (lambda d: d["state"][0].update(layer=7), "outside the model's 2 layers"),
    (lambda d: d.update(state=d["state"][:3]), "state does not cover the model's 2 layers"),
    (lambda d: d["state"][0].update(input="state.9.x"), "input/output names must be"),
])
def test_invalid_manifests_name_the_problem(onnx_copy, edit, message):
    edit_manifest(onnx_copy, edit)
    with pytest.raises(ArtifactError, match=message):
        open_artifact(onnx_copy)


def test_a_listed_file_outside_the_directory_is_refused_even_with_the_right_hash(onnx_copy, tmp_path, rehash):
    outside = tmp_path / "outside.bin"
    outside.write_bytes(b"secret")
    (onnx_copy / "link.bin").symlink_to(outside)
    rehash(onnx_copy)  # hashes follow the symlink: the hash is right
    with pytest.raises(ArtifactError, match="link.bin: a symbolic link"):
        open_artifact(onnx_copy)


def test_every_file_is_hashed_before_anything_loads(onnx_copy):
    data = bytearray((onnx_copy / "model.onnx").read_bytes())
    data[-10] ^= 0xFF
    (onnx_copy / "model.onnx").write_bytes(bytes(data))
    with pytest.raises(ArtifactError, match="model.onnx: sha256 differs"):
        OrtBackend(onnx_copy)
    (onnx_copy / "model.onnx").write_bytes(bytes(data[:100]))
    with pytest.raises(ArtifactError, match="100 bytes, the manifest says"):
        OrtBackend(onnx_copy)


def test_a_pinned_manifest_sha256_catches_a_rehashed_tamper(onnx_copy, rehash):
    pinned = open_artifact(onnx_copy).manifest_sha256
    assert open_artifact(onnx_copy, expect_sha256=pinned.upper())
    rehash(onnx_copy, lambda d: d["config"].update(n_head=99))  # consistent again, but not what was built
    open_artifact(onnx_copy)
    with pytest.raises(ArtifactError, match="not the artifact you pinned"):
        verify_artifact(onnx_copy, expect_sha256=pinned, log=quiet)


@pytest.mark.parametrize("problem", ["pickled", "missing", "shape", "nan"])
def test_a_bad_initial_state_file_is_one_error(onnx_copy, rehash, problem):
    arrays = dict(np.load(onnx_copy / "initial_state.npz"))
    name = "state.0.wkv"
    if problem == "pickled":
        arrays[name] = np.array([object()], dtype=object)
    elif problem == "missing":
        del arrays[name]
    elif problem == "shape":
        arrays[name] = arrays[name][:1]
    else:
        arrays[name] = np.full_like(arrays[name], np.nan)
    with open(onnx_copy / "initial_state.npz", "wb") as f:
        np.savez(f, **arrays)
    rehash(onnx_copy)
    with pytest.raises(ArtifactError, match=r"initial_state.npz(\[state.0.wkv.npy\])?: (not a readable|holds no|state.0.wkv is|state.0.wkv holds)"):
        OrtBackend(onnx_copy)


def test_a_swapped_graph_with_other_state_names_is_refused(onnx_copy, onnx_export, rehash):
    shutil.copy(onnx_export("v4") / "model.onnx", onnx_copy / "model.onnx")  # v4's five-tensor state
    rehash(onnx_copy)
    with pytest.raises(ArtifactError, match="not the state the manifest lists: the graph belongs to another model"):
        OrtBackend(onnx_copy)


def test_the_token_range_comes_from_the_onnx_graph(onnx_copy, rehash):
    rehash(onnx_copy, lambda d: d["config"].update(vocab_size=10**6))
    with pytest.raises(ArtifactError, match=r"step's output 0 is float32 \(1, 256\), the manifest implies float32 "
                                            r"\(1, 1000000\) \(config.vocab_size\)"):
        OrtBackend(onnx_copy)


def test_the_token_range_comes_from_the_tvm_library(tvm_copy, rehash):
    from rwkv_edge.runtime.tvm_backend import TvmBackend

    rehash(tvm_copy, lambda d: d["config"].update(vocab_size=10**6))
    with pytest.raises(ArtifactError, match="its embedding has 256 rows, the manifest says vocab_size 1000000"):
        TvmBackend(tvm_copy)


def test_a_library_outside_the_bundle_never_loads(tvm_copy, tmp_path, rehash):
    """The attack of the issue: graphs.step.file names a library elsewhere whose constructor runs code."""
    from rwkv_edge.runtime.tvm_backend import TvmBackend

    ran = tmp_path / "constructor-ran"
    source = tmp_path / "evil.c"
    source.write_text(f'#include <stdio.h>\n__attribute__((constructor)) static void run(void) '
                      f'{{ fopen("{ran}", "w"); }}\n')
    subprocess.run(["cc", "-shared", "-fPIC", "-o", str(tmp_path / "evil.so"), str(source)], check=True)
    rehash(tvm_copy, lambda d: d["graphs"]["step"].update(file=str(tmp_path / "evil.so")))
    with pytest.raises(ArtifactError, match="is not one of the listed files"):
        TvmBackend(tvm_copy)
    (tvm_copy / "evil.so").symlink_to(tmp_path / "evil.so")
    rehash(tvm_copy, lambda d: d["graphs"]["step"].update(file="evil.so"))
    with pytest.raises(ArtifactError, match="a symbolic link"):
        TvmBackend(tvm_copy)
    assert not ran.exists()


def test_a_tvm_library_of_another_model_is_refused(tvm_copy, tvm_bundle, rehash):
    from rwkv_edge.runtime.tvm_backend import TvmBackend

    shutil.copy(tvm_bundle("v4") / "model.so", tvm_copy / "model.so")
    rehash(tvm_copy)
    with pytest.raises(ArtifactError, match="main has 11 inputs, the manifest implies 7: it belongs to another model"):
        TvmBackend(tvm_copy)


def test_a_bundle_of_an_older_rwkv_edge_asks_for_a_recompile(tvm_copy, rehash):
    """Older libraries have no interface(): a real Relax library without one stands for them."""
    import tvm
    from tvm import relax

    from rwkv_edge.runtime.tvm_backend import TvmBackend

    builder = relax.BlockBuilder()
    token = relax.Var("token", relax.TensorType((1,), "int64"))
    with builder.function("main", params=[token]):
        builder.emit_func_output(token)
    tvm.compile(builder.get(), tvm.target.Target({"kind": "llvm"})).export_library(str(tvm_copy / "model.so"))
    rehash(tvm_copy)
    with pytest.raises(ArtifactError, match=r"built by an older rwkv-edge \(no interface\(\) function\): recompile it"):
        TvmBackend(tvm_copy)


@pytest.mark.parametrize("backend", ["torch", "onnxruntime", "tvm"])
def test_the_python_api_refuses_bad_tokens_and_states_with_typed_errors(backend, onnx_export, tvm_bundle, version_ckpt):
    from rwkv_edge.model import load_model
    from rwkv_edge.runtime import TorchBackend
    from rwkv_edge.runtime.tvm_backend import TvmBackend

    runner = {"torch": lambda: TorchBackend(load_model(version_ckpt("v5"))),
              "onnxruntime": lambda: OrtBackend(onnx_export("v5")),
              "tvm": lambda: TvmBackend(tvm_bundle("v5"))}[backend]()
    state = runner.init_state()
    for bad in (1.5, 1.0, True, "3", None, 256, -1):
        with pytest.raises(TokenError):
            runner.step(bad, state)
    with pytest.raises(TokenError, match="non-empty list of token ids"):
        runner.prefill([], state)
    for bad, message in ((None, "must be a dict"), ({**state, "state.9.x": state["state.0.wkv"]}, "unexpected state"),
                         ({**state, "state.0.wkv": "zeros"}, "holds <U5 values"),
                         ({**state, "state.0.wkv": [[1.0], [2.0, 3.0]]}, "holds object values"),
                         ({**state, "state.0.wkv": np.zeros((2, 2), np.float32)}, "has shape")):
        with pytest.raises(StateError, match=message):
            runner.step(1, bad)


def test_a_bundle_rebuilt_in_the_same_directory_loads_its_own_code(tvm_bundle, tmp_path):
    """TVM loads a library by its real path and the dynamic loader returns the library already
    loaded from that path: without a content-named path the second load ran the first bundle."""
    from rwkv_edge.runtime.tvm_backend import TvmBackend

    out = tmp_path / "bundle"
    shutil.copytree(tvm_bundle("v4"), out)
    first = TvmBackend(out)
    shutil.rmtree(out)
    shutil.copytree(tvm_bundle("v7"), out)
    second, reference = TvmBackend(out), TvmBackend(tvm_bundle("v7"))
    logits = [b.step(3, b.init_state())[0] for b in (second, reference)]
    np.testing.assert_array_equal(logits[0], logits[1])
    assert len(first.init_state()) == 10 and len(second.init_state()) == 6
