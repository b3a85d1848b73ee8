"""The ctypes binding of librwkv_edge (runtime/native.py) against the Python runtime on the same bundles.

Greedy generation through the library is token-identical to ``runtime.generation.generate`` on the
TVM backend (the demo model and a random v7 model); seeded sampling through the C sampler draws the
Python ``Draws``' tokens over the same logits; a state saved by either side and resumed by the other
goes on exactly as one uninterrupted run; bad arguments end in the typed errors with the library's
message. Skips, naming what is missing, where the library cannot be built (cmake, g++, TVM).
"""

from __future__ import annotations

import json
import shutil
import types
from pathlib import Path

import numpy as np
import pytest

from rwkv_edge.artifact import MANIFEST, read_manifest
from rwkv_edge.errors import ArtifactError, OptionError, StateError, TokenError, TokenizerError
from rwkv_edge.platforms import host_arch
from rwkv_edge.runtime.generation import Sampler, generate
from rwkv_edge.runtime.native import NativeBackend, NativeModel, NativeSampler, load_library
from rwkv_edge.runtime.native_runner import runner_unavailable
from rwkv_edge.runtime.registry import open_backend
from rwkv_edge.runtime.tvm_backend import TvmBackend
from rwkv_edge.state_file import load_state, save_state
from rwkv_edge.tokenizer import load_tokenizer

missing = runner_unavailable(host_arch())
pytestmark = pytest.mark.skipif(missing is not None, reason=f"librwkv_edge cannot be built here: {missing}")
PROMPT = "The quick brown fox"
GREEDY = Sampler(temperature=0.0)
SAMPLERS = {  # the spec's settings, each path of the draw
    "temperature": Sampler(temperature=1.0, top_p=1.0, seed=1),
    "top-p": Sampler(temperature=0.8, top_p=0.5, seed=2),
    "top-k": Sampler(temperature=1.3, top_p=0.9, top_k=5, seed=3),
    "penalties": Sampler(temperature=1.0, top_p=0.85, presence_penalty=0.4, frequency_penalty=0.3,
                         penalty_decay=0.9, seed=2**64 - 1),
    "greedy penalised": Sampler(temperature=0.0, frequency_penalty=2.0, presence_penalty=-0.5),
}


def quiet(_: str) -> None:
    pass


@pytest.fixture(scope="module")
def library():
    return load_library(log=quiet)


@pytest.fixture(scope="module", params=["demo", "random-v7"])
def bundle(request, demo_bundle, tvm_bundle) -> Path:
    return demo_bundle if request.param == "demo" else tvm_bundle("v7", prefill=4)


def python_tokens(directory: Path, prompt: str, n: int, sampler: Sampler) -> list[int]:
    backend = TvmBackend(directory)
    return list(generate(backend, load_tokenizer("bytes").encode(prompt), n, sampler))


def native_tokens(model: NativeModel, prompt: str, n: int, sampler: Sampler, session=None) -> list[int]:
    tokens: list[int] = []
    session = session or model.session()
    session.generate(prompt, NativeSampler(model.lib, sampler, model.vocab_size), n,
                     callback=lambda token, text: tokens.append(token) if token >= 0 else None)
    return tokens


def test_greedy_generation_is_token_identical_to_python(bundle, library):
    with NativeModel(bundle, library=library) as model:
        assert model.vocab_size == read_manifest(bundle).vocab_size and model.tokenizer == "bytes"
        assert model.tokenize(PROMPT) == load_tokenizer("bytes").encode(PROMPT)
        got = native_tokens(model, PROMPT, 40, GREEDY)
    assert got == python_tokens(bundle, PROMPT, 40, GREEDY)


@pytest.mark.parametrize("name", list(SAMPLERS))
def test_seeded_sampling_draws_the_python_draws(bundle, library, name):
    sampler = SAMPLERS[name]
    with NativeModel(bundle, library=library) as model:
        c = NativeSampler(library, sampler, model.vocab_size)
        draws = sampler.start(model.vocab_size)
        rng = np.random.default_rng(0)
        for _ in range(200):  # the same logits to both: scaled so that the nucleus holds several ids
            logits = (rng.standard_normal(model.vocab_size) * 3).astype(np.float32)
            assert c.sample(logits) == draws.draw(logits)
        # and through generation, the model's own logits
        assert native_tokens(model, PROMPT, 30, sampler) == python_tokens(bundle, PROMPT, 30, sampler)


def test_the_native_backend_keeps_the_step_contract(bundle, library):
    native = NativeBackend(bundle)
    tvm = TvmBackend(bundle)
    tokens = load_tokenizer("bytes").encode(PROMPT)
    state, expected = native.init_state(), tvm.init_state()
    before = {k: v.copy() for k, v in state.items()}
    for token in tokens[:5]:
        logits, new = native.step(token, state)
        want, expected = tvm.step(token, expected)
        np.testing.assert_array_equal(logits, want)
        assert all(np.array_equal(before[k], state[k]) for k in state)  # the caller's state untouched
        state, before = new, {k: v.copy() for k, v in new.items()}
    for k in state:
        np.testing.assert_array_equal(state[k], expected[k])
    logits, _ = native.prefill(tokens, native.init_state())
    np.testing.assert_array_equal(logits, tvm.prefill(tokens, tvm.init_state())[0])
    assert isinstance(open_backend(bundle, "native"), NativeBackend)
    assert isinstance(open_backend(bundle), TvmBackend)  # a TVM bundle's own backend stays tvm
    native.close()


def test_a_state_saved_by_c_goes_on_in_python_and_back(bundle, library, tmp_path):
    """Ten tokens, a state file, ten more: the twenty of one uninterrupted run, whichever side saves."""
    manifest = read_manifest(bundle)
    identity = (manifest.architecture, manifest.source["sha256"])
    whole = python_tokens(bundle, PROMPT, 20, GREEDY)
    tvm = TvmBackend(bundle)
    with NativeModel(bundle, library=library) as model:
        session = model.session()
        first = native_tokens(model, PROMPT, 10, GREEDY, session)
        session.save(tmp_path / "c.state")
        state, logits = load_state(tmp_path / "c.state", manifest.state, *identity, manifest.vocab_size)
        rest = list(generate(tvm, [], 10, GREEDY, start=(logits, state)))
        assert first + rest == whole

        logits, state = tvm.prefill(load_tokenizer("bytes").encode(PROMPT), tvm.init_state())
        draws, first = GREEDY.start(manifest.vocab_size), []
        for _ in range(10):
            first.append(draws.draw(logits))
            logits, state = tvm.step(first[-1], state)
        save_state(tmp_path / "py.state", state, manifest.state, *identity, logits)
        resumed = model.session()
        resumed.load(tmp_path / "py.state")
        np.testing.assert_array_equal(resumed.logits(), logits)
        assert first + native_tokens(model, "", 10, GREEDY, resumed) == whole


def test_bad_arguments_raise_typed_errors_with_the_library_s_message(bundle, library, tmp_path, onnx_export):
    with NativeModel(bundle, library=library) as model:
        session = model.session()
        with pytest.raises(StateError, match=r"\S"):  # no token fed yet: no logits
            session.logits()
        for token in (model.vocab_size, -1, 2**31):
            with pytest.raises(TokenError):
                session.step(token)
        with pytest.raises(TokenError):
            session.step("a")
        with pytest.raises(TokenError, match="non-empty list"):
            session.prefill([])
        with pytest.raises(TokenError, match="outside the vocabulary"):
            session.prefill([1, model.vocab_size])
        with pytest.raises(TokenError):
            model.token_bytes(model.vocab_size)
        with pytest.raises(StateError, match=r"\S") as caught:  # the library's own check
            session.set_flat_state(np.zeros(model.state_size - 1, np.float32))
        assert "\n" not in str(caught.value)
        with pytest.raises(StateError, match="state.0.att_shift is missing"):
            session.set_state({})
        with pytest.raises(OptionError, match=r"\S"):  # the library refuses the setting (not Python's Sampler)
            NativeSampler(library, types.SimpleNamespace(temperature=1.0, top_p=0.0), model.vocab_size)
        with pytest.raises(OptionError, match=r"\S"):
            NativeSampler(library, types.SimpleNamespace(penalty_decay=1.5), model.vocab_size)
        with pytest.raises(OptionError, match="seed"):
            NativeSampler(library, types.SimpleNamespace(seed=-1), model.vocab_size)
        sampler = NativeSampler(library, GREEDY, model.vocab_size)
        with pytest.raises(OptionError, match="expected"):
            sampler.sample(np.zeros(model.vocab_size + 1, np.float32))
        with pytest.raises(StateError, match=r"\S"):  # an empty prompt needs logits to go on from
            session.generate("", sampler, 5)
        with pytest.raises(OptionError, match="stop sequence"):
            session.generate(PROMPT, sampler, 5, stop=[""])
        with pytest.raises(OptionError, match="max_tokens"):
            session.generate(PROMPT, sampler, 0)
        with pytest.raises(ZeroDivisionError):  # the callback's exception stops generation and comes back
            session.generate(PROMPT, sampler, 5, callback=lambda token, text: 1 / 0)
        # state files: another model's, and no file
        other = read_manifest(bundle)
        save_state(tmp_path / "other.state", {t.input_name: np.zeros(t.shape, np.float32) for t in other.state},
                   other.state, other.architecture, "0" * 64)
        with pytest.raises(StateError, match="another model"):
            session.load(tmp_path / "other.state")
        with pytest.raises(StateError):
            session.load(tmp_path / "missing.state")
        session.close()
        with pytest.raises(StateError, match="closed"):
            session.step(1)
    with pytest.raises(ArtifactError, match=r"\S"):
        NativeModel(bundle, expect_sha256="0" * 64, library=library)
    with pytest.raises(ArtifactError, match=r"\S"):
        NativeModel(onnx_export("v7"), library=library)  # not a TVM bundle
    with pytest.raises(OptionError, match="threads"):
        NativeModel(bundle, threads=-1, library=library)


def test_a_tampered_bundle_is_refused_by_the_library(bundle, library, tmp_path):
    copy = Path(shutil.copytree(bundle, tmp_path / "copy"))
    data = json.loads((copy / MANIFEST).read_text())
    data["files"]["params.safetensors"]["sha256"] = "0" * 64
    (copy / MANIFEST).write_text(json.dumps(data))
    with pytest.raises(ArtifactError, match="params.safetensors"):
        NativeModel(copy, library=library)


@pytest.fixture(scope="module")
def world_bundle(tmp_path_factory) -> Path:
    """A tiny model with the World vocabulary's 65536 rows, compiled for this machine: it carries the vocabulary."""
    from rwkv_edge.compile.tvm import TvmOptions, compile_tvm
    from rwkv_edge.export import OnnxOptions, export_onnx
    from rwkv_edge.model.synthetic import make_checkpoint, save_checkpoint

    root = tmp_path_factory.mktemp("world")
    checkpoint = save_checkpoint(make_checkpoint("v7", n_layer=1, n_embd=64, vocab_size=65536), root / "world.pth")
    export_onnx(checkpoint, root / "onnx", OnnxOptions("fp32", prefill_chunk=0), log=quiet)
    compile_tvm(root / "onnx", root / "tvm", TvmOptions("x86_64-host" if host_arch() == "x86_64" else "aarch64-linux"),
                log=quiet)
    return root / "tvm"


def test_a_world_bundle_tokenizes_with_the_vocabulary_it_carries(world_bundle, library, tmp_path, rehash):
    text = "Hello, wörld! 你好 \U0001F600 def f(x):\n    return x"
    python = load_tokenizer("world")
    with NativeModel(world_bundle, library=library) as model:
        assert model.tokenizer == "world" and model.vocab_size == 65536
        ids = model.tokenize(text)
        assert ids == python.encode(text)
        assert b"".join(model.token_bytes(i) for i in ids) == text.encode()
        assert model.token_bytes(0) == b""  # end-of-text
        got = native_tokens(model, text, 12, GREEDY)
    assert got == list(generate(TvmBackend(world_bundle), python.encode(text), 12, GREEDY))
    # a bundle of an rwkv-edge before the bundle carried its vocabulary: opens, does not tokenize
    old = Path(shutil.copytree(world_bundle, tmp_path / "old"))
    (old / "rwkv_vocab_v20230424.txt").unlink()
    rehash(old, lambda data: data.pop("tokenizer_file"))
    with NativeModel(old, library=library) as model:
        with pytest.raises(TokenizerError, match="carries no tokenizer file"):
            model.tokenize("Hello")
        model.session().prefill([1, 2, 3])  # token ids still run

