"""Generation stops at the tokenizer's end-of-text token (World: 0) unless told to go on past it, alike in
the C library (`rwkv_edge_end_of_text`), `rwkv-edge-run` and `rwkv-edge generate` on every backend.

The model: a tiny World-vocabulary v7 whose final norm has zero weights, so its logits are the same at
every position (``head @ ln_out.bias``): 20 for token 0 and for ``WORD``, 0 for the rest. A seeded draw
then picks one of the two about evenly, so the end-of-text token comes a few tokens in."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from rwkv_edge.runtime.generation import Sampler, generate
from rwkv_edge.runtime.native import NativeModel
from rwkv_edge.runtime.native_runner import build_native, host_arch, run_program, runner_unavailable
from rwkv_edge.tokenizer import WorldTokenizer, load_tokenizer

missing = runner_unavailable(host_arch())
needs_native = pytest.mark.skipif(missing is not None, reason=f"librwkv_edge cannot be built here: {missing}")
TARGET = {"x86_64": "x86_64-host", "aarch64": "aarch64-linux"}[host_arch()]
WORD = 64  # b"?" in the World vocabulary (id k is byte k - 1 for k <= 256)
N = 40
SEED = 2  # draws four "?" and then the end-of-text
SAMPLING = ("--temperature", "1", "--top-p", "1", "--seed", str(SEED))


def quiet(_: str) -> None:
    pass


@pytest.fixture(scope="module")
def two_token_checkpoint(make_ckpt, tmp_path_factory) -> Path:
    """A World-vocabulary v7 whose every position has logit 20 for tokens 0 and WORD, 0 for the others."""
    from rwkv_edge.model.synthetic import save_checkpoint

    tensors = torch.load(make_ckpt("v7", vocab_size=65536, n_embd=64, head_size=32), weights_only=True)
    bias = torch.linspace(0.5, 1.5, tensors["ln_out.bias"].numel())
    tensors["ln_out.weight"] = torch.zeros_like(tensors["ln_out.weight"])
    tensors["ln_out.bias"] = bias
    head = torch.zeros_like(tensors["head.weight"])
    head[[0, WORD]] = 20 * bias / bias.dot(bias)
    tensors["head.weight"] = head
    return save_checkpoint(tensors, tmp_path_factory.mktemp("eos") / "two-token.pth")


@pytest.fixture(scope="module")
def two_token_bundle(two_token_checkpoint, tmp_path_factory) -> Path:
    from rwkv_edge.compile.tvm import TvmOptions, compile_tvm
    from rwkv_edge.export import OnnxOptions, export_onnx

    root = tmp_path_factory.mktemp("eos-bundle")
    export_onnx(two_token_checkpoint, root / "onnx", OnnxOptions("fp32", prefill_chunk=0), log=quiet)
    compile_tvm(root / "onnx", root / "tvm", TvmOptions(TARGET), log=quiet)
    return root / "tvm"


@pytest.fixture(scope="module")
def expected(two_token_bundle) -> list[int]:
    """What the Python generation draws before the first end-of-text (the TVM backend, the same seed)."""
    from rwkv_edge.runtime.tvm_backend import TvmBackend

    backend = TvmBackend(two_token_bundle)
    try:
        prompt = WorldTokenizer().encode("Hi")
        ids = list(generate(backend, prompt, N, Sampler(temperature=1.0, top_p=1.0, seed=SEED), end_token=0))
        everything = list(generate(backend, prompt, N, Sampler(temperature=1.0, top_p=1.0, seed=SEED)))
    finally:
        backend.close()
    assert 0 < len(ids) < 20 and set(ids) == {WORD}  # the seed ends the text a few tokens in
    assert everything[:len(ids) + 1] == ids + [0] and len(everything) == N
    return ids


def test_each_tokenizer_names_its_end_of_text():
    assert load_tokenizer("world").end_of_text == 0
    assert load_tokenizer("bytes").end_of_text is None
    pile = load_tokenizer("20b")
    assert pile.end_of_text == 0 and pile.decode([0]) == "<|endoftext|>"


@needs_native
def test_the_library_gives_the_bundles_end_of_text(two_token_bundle, demo_bundle):
    library = build_native(host_arch(), log=quiet).shared_library
    with NativeModel(two_token_bundle, library=library, log=quiet) as model:
        assert model.end_of_text == 0
    with NativeModel(demo_bundle, library=library, log=quiet) as model:  # the bytes tokenizer: none
        assert model.end_of_text == -1


@needs_native
def test_rwkv_edge_run_stops_at_end_of_text(two_token_bundle, expected, tmp_path):
    build = build_native(host_arch(), log=quiet)
    ids = tmp_path / "ids"
    done = run_program(two_token_bundle, ["--prompt", "Hi", "-n", str(N), *SAMPLING, "--ids-out", str(ids)],
                       build=build, log=quiet)
    assert done.returncode == 0, done.stderr
    assert [int(x) for x in ids.read_text().split()] == expected
    assert done.stdout == "?" * len(expected)
    done = run_program(two_token_bundle, ["--prompt", "Hi", "-n", str(N), *SAMPLING, "--ids-out", str(ids),
                                          "--ignore-eos"], build=build, log=quiet)
    assert done.returncode == 0, done.stderr
    went_on = [int(x) for x in ids.read_text().split()]
    assert len(went_on) == N and went_on[:len(expected) + 1] == expected + [0]


@pytest.mark.parametrize("backend", ["torch", "tvm", pytest.param("native", marks=needs_native)])
def test_generate_stops_at_end_of_text(cli, two_token_checkpoint, two_token_bundle, expected, backend):
    source = two_token_checkpoint if backend == "torch" else two_token_bundle
    args = ("generate", str(source), "--prompt", "Hi", "-n", str(N), *SAMPLING, "--backend", backend)
    code, out, err = cli(*args)
    assert code == 0, err
    assert out == "Hi" + "?" * len(expected) + "\n"
    code, out, err = cli(*args, "--ignore-eos")
    assert code == 0, err
    assert out.startswith("Hi" + "?" * len(expected)) and len(out) > len(expected) + 3
