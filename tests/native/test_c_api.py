"""The native runtime (librwkv_edge, rwkv-edge-run): the same tokens as the Python TVM backend, state
files that continue a generation, and one line with exit 2 for every bad bundle, state file or argument.

Host tests run the x86-64 build; the aarch64 ones run the cross-compiled build under
``qemu-aarch64-static`` on the smallest model with few tokens, and skip, naming what is missing,
where the cross compiler, qemu or the aarch64 TVM libraries are not installed.
"""

from __future__ import annotations

import ctypes
import json
import shutil
import struct
import subprocess
from pathlib import Path

import numpy as np
import pytest

from rwkv_edge.artifact import read_manifest
from rwkv_edge.model import LANGUAGE_ARCHITECTURES
from rwkv_edge.runtime.generation import Sampler, generate
from rwkv_edge.runtime.native_runner import RUNNER, build_native, host_arch, run_program, runner_unavailable
from rwkv_edge.tokenizer import ByteTokenizer

HOST = host_arch()
no_host = runner_unavailable(HOST)
no_arm = runner_unavailable("aarch64")
needs_host = pytest.mark.skipif(no_host is not None, reason=f"no host build of the native runtime: {no_host}")
needs_arm = pytest.mark.skipif(no_arm is not None, reason=f"no aarch64 build of the native runtime: {no_arm}")
TARGETS = {"x86_64": "x86_64-host", "aarch64": "aarch64-linux"}
PROMPT = "The quick brown fox"
N = 24
ERR_ARGUMENT, ERR_BUNDLE, ERR_STATE, ERR_UNSUPPORTED = 1, 2, 3, 4


def quiet(_: str) -> None:
    pass


@pytest.fixture(scope="module")
def host_build():
    return build_native(HOST, log=quiet)


@pytest.fixture(scope="module")
def arm_build():
    return build_native("aarch64", log=quiet)


@pytest.fixture
def bundle_of(tvm_bundle, demo_bundle):
    """bundle_of(name) -> "demo", "v4".."v7" or "v7-prefill" (a prefill function of 8 tokens)."""
    def get(name: str) -> Path:
        if name == "demo":
            return demo_bundle
        if name.endswith("-prefill"):
            return tvm_bundle(name.split("-")[0], TARGETS[HOST], prefill=8)
        return tvm_bundle(name, TARGETS[HOST])

    return get


def python_greedy(bundle: Path, prompt: list[int], n: int, sampler: Sampler = Sampler(temperature=0)) -> list[int]:
    """The tokens rwkv_edge.runtime.generation.generate draws (greedily by default) on the Python TVM backend."""
    from rwkv_edge.runtime.tvm_backend import TvmBackend

    backend = TvmBackend(bundle)
    try:
        return list(generate(backend, prompt, n, sampler))
    finally:
        backend.close()


def read_ids(path: Path) -> list[int]:
    return [int(line) for line in path.read_text().split()]


def run(build, bundle: Path, *args: str, arch: str = HOST, stdin: str | None = None):
    return run_program(bundle, list(args), arch=arch, build=build, stdin=stdin, log=quiet)


def assert_refused(done, *words: str, program: str = "rwkv-edge-run") -> None:
    """Exit 2, nothing on stdout, one line on stderr holding every one of ``words``."""
    assert done.returncode == 2, done.stderr
    assert done.stdout == "", done.stdout
    assert done.stderr.startswith(f"{program}: error: ") and done.stderr.count("\n") == 1, done.stderr
    for part in words:
        assert part in done.stderr, done.stderr


def raw(text: str) -> bytes:
    return text.encode("utf-8", "surrogateescape")


# -- generation --------------------------------------------------------------------------------------------

@needs_host
@pytest.mark.parametrize("name", ["demo", *LANGUAGE_ARCHITECTURES, "v7-prefill"])
def test_greedy_generation_matches_the_python_backend(name, bundle_of, host_build, tmp_path):
    bundle = bundle_of(name)
    ids = tmp_path / "ids"
    done = run(host_build, bundle, "--prompt", PROMPT, "-n", str(N), "--temperature", "0", "--ids-out", str(ids))
    assert done.returncode == 0 and done.stderr == "", done.stderr
    expected = python_greedy(bundle, ByteTokenizer().encode(PROMPT), N)
    assert read_ids(ids) == expected
    assert raw(done.stdout) == bytes(expected)  # the bytes tokenizer: the text is the ids, the prompt not echoed


SAMPLED = Sampler(temperature=0.9, top_p=0.9, top_k=40, presence_penalty=0.3, frequency_penalty=0.2,
                  penalty_decay=0.99, seed=2**64 - 5)


@needs_host
@pytest.mark.parametrize("name", ["demo", "v7"])
def test_sampled_generation_matches_the_python_backend(name, bundle_of, host_build, tmp_path):
    """Every sampler setting, a seed past 2**63: the same draws as rwkv_edge.runtime.generation."""
    bundle, ids, s = bundle_of(name), tmp_path / "ids", SAMPLED
    done = run(host_build, bundle, "--prompt", PROMPT, "-n", str(N), "--temperature", str(s.temperature),
               "--top-p", str(s.top_p), "--top-k", str(s.top_k), "--presence-penalty", str(s.presence_penalty),
               "--frequency-penalty", str(s.frequency_penalty), "--penalty-decay", str(s.penalty_decay),
               "--seed", str(s.seed), "--ids-out", str(ids))
    assert done.returncode == 0, done.stderr
    assert read_ids(ids) == python_greedy(bundle, ByteTokenizer().encode(PROMPT), N, s)


@needs_host
def test_a_saved_state_continues_as_one_longer_run(bundle_of, host_build, tmp_path):
    bundle = bundle_of("v5")
    greedy = ["--temperature", "0"]
    whole, first, rest, state = tmp_path / "whole", tmp_path / "first", tmp_path / "rest", tmp_path / "s.state"
    assert run(host_build, bundle, "--prompt", PROMPT, "-n", "20", *greedy, "--ids-out", str(whole)).returncode == 0
    done = run(host_build, bundle, "--prompt", PROMPT, "-n", "12", *greedy, "--ids-out", str(first),
               "--state-out", str(state))
    assert done.returncode == 0 and not Path(f"{state}.partial").exists(), done.stderr
    done = run(host_build, bundle, "--prompt", "", "-n", "8", *greedy, "--state-in", str(state), "--ids-out", str(rest))
    assert done.returncode == 0, done.stderr
    assert read_ids(first) + read_ids(rest) == read_ids(whole) == python_greedy(bundle, list(PROMPT.encode()), 20)


@needs_host
def test_the_state_file_holds_the_format_the_spec_gives(bundle_of, host_build, tmp_path):
    bundle = bundle_of("v7")
    state = tmp_path / "s.state"
    assert run(host_build, bundle, "--prompt", "Hi", "-n", "2", "--state-out", str(state)).returncode == 0
    data = state.read_bytes()
    (length,) = struct.unpack("<Q", data[:8])
    assert (8 + length) % 8 == 0
    header = json.loads(data[8:8 + length])
    manifest = read_manifest(bundle)
    assert header.pop("__metadata__") == {"format": "rwkv-edge.state/1", "architecture": manifest.architecture,
                                          "source_sha256": manifest.source["sha256"]}
    names = [t.input_name for t in manifest.state] + ["logits"]
    assert list(header) == names
    offset = 0
    for t in manifest.state:
        entry = header[t.input_name]
        assert entry["dtype"] == "F32" and entry["shape"] == list(t.shape)
        assert entry["data_offsets"] == [offset, offset + 4 * int(np.prod(t.shape))]
        offset = entry["data_offsets"][1]
    assert header["logits"]["shape"] == [manifest.vocab_size]
    assert len(data) == 8 + length + header["logits"]["data_offsets"][1]


@needs_host
def test_chat_keeps_the_state_across_turns(bundle_of, host_build, tmp_path):
    """Two chat turns equal one prompt holding the first turn, its reply and the second turn."""
    bundle = bundle_of("v7")
    ids = tmp_path / "ids"
    done = run(host_build, bundle, "--chat", "-n", "6", "--temperature", "0", "--ids-out", str(ids), stdin="hi\nho\n")
    assert done.returncode == 0, done.stderr
    chat = read_ids(ids)
    turn = list(b"User: hi\n\nAssistant:")
    first = python_greedy(bundle, turn, 6)
    assert b"\n\n" not in bytes(first), "this test expects a first reply cut at -n"
    assert chat[:6] == first and len(chat) == 12
    # a reply cut at -n gets its "\n\n" before the next turn
    assert chat[6:] == python_greedy(bundle, turn + first + list(b"\n\nUser: ho\n\nAssistant:"), 6)


# -- bad input: exit 2 and one line --------------------------------------------------------------------------

@needs_host
def test_the_command_line_is_checked(bundle_of, host_build):
    bundle = bundle_of("v7")
    assert_refused(run(host_build, bundle, "--prompt", "a", "extra"), "unexpected argument 'extra'", "usage:")
    assert_refused(run(host_build, bundle, "--prompt", "a", "--frobnicate"), "unknown option --frobnicate")
    done = run(host_build, bundle, "--help")
    assert done.returncode == 0 and done.stdout.startswith("usage: rwkv-edge-run BUNDLE") and done.stderr == ""


@needs_host
def test_tampered_bundles_are_refused(bundle_of, host_build, tmp_path, rehash):
    original = bundle_of("v7")
    flipped = shutil.copytree(original, tmp_path / "flipped")
    data = bytearray((flipped / "model.so").read_bytes())
    data[len(data) // 2] ^= 0xFF
    (flipped / "model.so").write_bytes(data)
    assert_refused(run(host_build, flipped, "--prompt", "a"), f"{flipped}/model.so: sha256 differs from the manifest")

    truncated = shutil.copytree(original, tmp_path / "truncated")
    params = truncated / "params.safetensors"
    params.write_bytes(params.read_bytes()[:-4])
    rehash(truncated)
    assert_refused(run(host_build, truncated, "--prompt", "a"), "params.safetensors: w", "past the end of the file")

    pinned = "0" * 64
    assert_refused(run(host_build, original, "--prompt", "a", "--expect-sha256", pinned), f"not the expected {pinned}")
    assert_refused(run(host_build, original, "--prompt", "a", "--expect-sha256", "xyz"), "64 hex digits")


@pytest.fixture
def saved_state(bundle_of, host_build, tmp_path):
    """(a v7 bundle, a state file it saved)."""
    bundle = bundle_of("v7")
    state = tmp_path / "good.state"
    assert run(host_build, bundle, "--prompt", "Hi", "-n", "2", "--state-out", str(state)).returncode == 0
    return bundle, state


def _rewrite(path: Path, edit) -> Path:
    """The state file with its header edited by ``edit(header)`` (the data unchanged), beside it."""
    data = path.read_bytes()
    (length,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8:8 + length])
    edit(header)
    text = json.dumps(header).encode()
    text += b" " * ((8 - len(text) % 8) % 8)
    out = path.with_name("edited.state")
    out.write_bytes(struct.pack("<Q", len(text)) + text + data[8 + length:])
    return out


def _first_shape(header: dict) -> None:
    name = next(k for k in header if k.startswith("state."))
    header[name]["shape"] = [d + 1 for d in header[name]["shape"]]


def _written(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


BAD_STATES = {
    "truncated": (lambda p: _written(p.with_name("t.state"), p.read_bytes()[:-4]), "truncated ("),
    "truncated in its header": (lambda p: _written(p.with_name("h.state"), p.read_bytes()[:50]), "truncated ("),
    "not a state file": (lambda p: _written(p.with_name("x.state"), b"\x10" + bytes(40)), "not a state file"),
    "huge header": (lambda p: _written(p.with_name("l.state"), struct.pack("<Q", 1 << 40) + bytes(8)),
                    "not a state file (a header of 1099511627776 bytes)"),
    "wrong shape": (lambda p: _rewrite(p, _first_shape), "has shape"),
    "other architecture": (lambda p: _rewrite(p, lambda h: h["__metadata__"].update(architecture="v5")),
                           "architecture \"v5\""),
    "other model": (lambda p: _rewrite(p, lambda h: h["__metadata__"].update(source_sha256="ab" * 32)),
                    "saved from another model"),
    "other format": (lambda p: _rewrite(p, lambda h: h["__metadata__"].update(format="rwkv-edge.state/2")),
                     "not a state file of format 'rwkv-edge.state/1'"),
    "extra tensor": (lambda p: _rewrite(p, lambda h: h.update(extra=h["logits"])), "holds a tensor \"extra\""),
    "missing tensor": (lambda p: _rewrite(p, lambda h: h.pop(next(k for k in h if k.startswith("state.")))),
                       "has no tensor state."),
}


@needs_host
@pytest.mark.parametrize("damage", list(BAD_STATES))
def test_a_bad_state_file_is_refused(damage, saved_state, host_build):
    bundle, state = saved_state
    make, words = BAD_STATES[damage]
    bad = make(state)
    assert_refused(run(host_build, bundle, "--prompt", "", "--state-in", str(bad)), str(bad), words)


@needs_host
def test_a_state_from_another_architecture_is_refused(saved_state, bundle_of, host_build):
    _, state = saved_state  # saved by the v7 bundle
    assert_refused(run(host_build, bundle_of("v5"), "--prompt", "", "--state-in", str(state)),
                   "saved from a model of architecture")


@needs_host
@pytest.mark.parametrize("args, words", [
    (["-n", "0"], "-n must be in [1,"),
    (["--top-p", "1.5"], "top_p"),
    (["--temperature", "-1"], "temperature"),
    (["--penalty-decay", "0"], "penalty_decay"),
    (["--top-k", "-1"], "--top-k must be in [0,"),
    (["--seed", "-3"], "--seed"),
    (["--stop", ""], "empty stop sequence"),
    (["--temperature", "nan"], "not a finite number"),
    (["--bogus"], "unknown option --bogus"),
])
def test_arguments_out_of_range_exit_2(args, words, bundle_of, host_build):
    assert_refused(run(host_build, bundle_of("v7"), "--prompt", "a", *args), words)


@needs_host
def test_an_empty_prompt_needs_logits(bundle_of, host_build):
    assert_refused(run(host_build, bundle_of("v7"), "--prompt", ""), "an empty prompt needs a session holding logits")


@needs_host
def test_a_token_out_of_range_exits_2(bundle_of, host_build):
    done = run_program(bundle_of("v7"), ["--tokens", "1,256"], program=RUNNER, build=host_build, log=quiet)
    assert_refused(done, "token id 256 (position 1) is outside the vocabulary [0, 256)", program=RUNNER)


@needs_host
def test_a_world_bundle_without_its_tokenizer_file_is_unsupported(bundle_of, host_build, tmp_path, rehash):
    directory = shutil.copytree(bundle_of("v7"), tmp_path / "bundle")
    rehash(directory, lambda data: data.update(tokenizer="world"))
    assert_refused(run(host_build, directory, "--prompt", "a"), "carries no tokenizer file")


@needs_host
def test_encode_writes_the_ids_of_a_file(bundle_of, host_build, tmp_path):
    text = tmp_path / "text"
    text.write_bytes("héllo\n\x00wörld".encode())
    ids = tmp_path / "ids"
    done = run(host_build, bundle_of("v7"), "--encode", str(text), "--ids-out", str(ids))
    assert done.returncode == 0 and done.stdout == "" and done.stderr == "", done.stderr
    assert read_ids(ids) == list(text.read_bytes())


@needs_host
def test_stats_go_to_stderr(bundle_of, host_build):
    done = run(host_build, bundle_of("v7"), "--prompt", "a", "-n", "3", "--temperature", "0", "--stats")
    assert done.returncode == 0 and len(raw(done.stdout)) == 3
    assert "tokens/s" in done.stderr and "median step" in done.stderr and done.stderr.count("\n") == 1


# -- the library itself ------------------------------------------------------------------------------------

@pytest.fixture
def lib(host_build):
    lib = ctypes.CDLL(str(host_build.shared_library))
    lib.rwkv_edge_last_error.restype = ctypes.c_char_p
    lib.rwkv_edge_state_size.restype = ctypes.c_size_t
    return lib


@needs_host
def test_the_library_exports_the_c_interface_only(host_build):
    header = (host_build.include / "rwkv_edge.h").read_text()
    declared = {line.split("(")[0].split()[-1].lstrip("*") for line in header.splitlines()
                if line.startswith("RWKV_EDGE_API")}
    nm = shutil.which("nm")
    if nm is None:
        pytest.skip("nm is not installed (apt-get install binutils)")
    listed = subprocess.run([nm, "-D", "--defined-only", str(host_build.shared_library)], capture_output=True,
                            text=True, check=True).stdout.split("\n")
    exported = {line.split()[-1] for line in listed if line.strip()}
    assert exported == declared


@needs_host
def test_null_pointers_and_bad_ids_are_argument_errors(lib, bundle_of):
    model, session = ctypes.c_void_p(), ctypes.c_void_p()
    assert lib.rwkv_edge_model_open(None, None, ctypes.byref(model)) == ERR_ARGUMENT
    assert lib.rwkv_edge_last_error() == b"bundle_dir is NULL"
    assert lib.rwkv_edge_model_open(str(bundle_of("v7")).encode(), None, None) == ERR_ARGUMENT
    assert lib.rwkv_edge_model_open(str(bundle_of("v7")).encode(), None, ctypes.byref(model)) == 0
    assert lib.rwkv_edge_last_error() == b""
    try:
        assert lib.rwkv_edge_session_new(model, ctypes.byref(session)) == 0
        logits = ctypes.POINTER(ctypes.c_float)()
        assert lib.rwkv_edge_logits(session, ctypes.byref(logits)) == ERR_STATE
        assert lib.rwkv_edge_step(session, 256) == ERR_ARGUMENT
        assert b"outside the vocabulary [0, 256)" in lib.rwkv_edge_last_error()
        assert lib.rwkv_edge_step(None, 1) == ERR_ARGUMENT
        assert lib.rwkv_edge_prefill(session, None, 3) == ERR_ARGUMENT
        assert lib.rwkv_edge_step(session, 65) == 0
        assert lib.rwkv_edge_logits(session, ctypes.byref(logits)) == 0
        size = lib.rwkv_edge_state_size(model)
        values = (ctypes.c_float * size)()
        assert lib.rwkv_edge_state_set(session, values, size - 1) == ERR_STATE
        assert lib.rwkv_edge_state_get(session, values, size - 1) == ERR_ARGUMENT
        count = ctypes.c_size_t()
        ids = (ctypes.c_int32 * 2)()
        assert lib.rwkv_edge_tokenize(model, b"abc", 3, ids, 2, ctypes.byref(count)) == ERR_ARGUMENT
        assert count.value == 3
        assert lib.rwkv_edge_state_load(session, b"/nonexistent/state") == 5  # RWKV_EDGE_ERR_IO
    finally:
        lib.rwkv_edge_session_free(session)
        lib.rwkv_edge_model_close(model)


# -- aarch64 under qemu --------------------------------------------------------------------------------------

@needs_arm
def test_aarch64_greedy_generation_matches_the_host_under_qemu(tvm_bundle, arm_build, tmp_path):
    """The smallest model, few tokens: the aarch64 build's greedy tokens equal the Python backend's on
    the x86-64 bundle of the same model (their logits agree within the fp32 limits: test_native_runner)."""
    ids = tmp_path / "ids"
    done = run(arm_build, tvm_bundle("v7", "aarch64-linux"), "--prompt", "Hi", "-n", "6", "--temperature", "0",
               "--ids-out", str(ids), arch="aarch64")
    assert done.returncode == 0, done.stderr
    assert read_ids(ids) == python_greedy(tvm_bundle("v7", TARGETS[HOST]), list(b"Hi"), 6)


@needs_arm
def test_aarch64_bad_state_file_exits_2_under_qemu(tvm_bundle, arm_build, tmp_path):
    state = tmp_path / "bad.state"
    state.write_bytes(bytes(16))
    done = run(arm_build, tvm_bundle("v7", "aarch64-linux"), "--prompt", "", "--state-in", str(state), arch="aarch64")
    assert_refused(done, "not a state file")


@needs_arm
def test_aarch64_chat_state_crosses_to_python_and_back_under_qemu(tvm_bundle, arm_build, tmp_path):
    """A chat turn on the aarch64 build under qemu saves its state; Python (the x86-64 bundle of the same
    model) resumes it, and a state Python saved resumes on aarch64: the tokens of one uninterrupted run."""
    from rwkv_edge.runtime.tvm_backend import TvmBackend
    from rwkv_edge.state_file import load_state, save_state

    arm, host = tvm_bundle("v7", "aarch64-linux"), tvm_bundle("v7", TARGETS[HOST])
    manifest = read_manifest(host)
    turn = list(b"User: hi\n\nAssistant:")
    whole = python_greedy(host, turn, 12)
    ids, saved = tmp_path / "ids", tmp_path / "arm.state"
    done = run(arm_build, arm, "--chat", "-n", "6", "--temperature", "0", "--ids-out", str(ids),
               "--state-out", str(saved), stdin="hi\n", arch="aarch64")
    assert done.returncode == 0, done.stderr
    assert read_ids(ids) == whole[:6]

    backend = TvmBackend(host)
    try:  # Python goes on from the aarch64 chat's state and logits
        state, logits = load_state(saved, manifest.state, manifest.architecture, manifest.source["sha256"],
                                   manifest.vocab_size)
        assert list(generate(backend, [], 6, Sampler(temperature=0), start=(logits, state))) == whole[6:]
        logits, state = backend.prefill(turn + whole[:6], backend.init_state())  # ... and the reverse
        save_state(tmp_path / "py.state", state, manifest.state, manifest.architecture, manifest.source["sha256"],
                   logits)
    finally:
        backend.close()
    done = run(arm_build, arm, "--prompt", "", "-n", "6", "--temperature", "0", "--ids-out", str(ids),
               "--state-in", str(tmp_path / "py.state"), arch="aarch64")
    assert done.returncode == 0, done.stderr
    assert read_ids(ids) == whole[6:]


THREADS_CHECK = r"""
import ctypes, sys, threading
import tvm_ffi

lib = ctypes.CDLL(sys.argv[1])


class Options(ctypes.Structure):
    _fields_ = [("expect_sha256", ctypes.c_char_p), ("num_threads", ctypes.c_int)]


threads = tvm_ffi.get_global_func("runtime.NumThreads")
model, session = ctypes.c_void_p(), ctypes.c_void_p()
assert lib.rwkv_edge_model_open(sys.argv[2].encode(), ctypes.byref(Options(None, int(sys.argv[3]))),
                               ctypes.byref(model)) == 0
seen = {"before": threads()}


def step():  # TVM's pool belongs to the calling thread: the model sizes the pool of whichever thread runs it
    assert lib.rwkv_edge_session_new(model, ctypes.byref(session)) == 0
    assert lib.rwkv_edge_step(session, 1) == 0
    seen["stepping thread"] = threads()


worker = threading.Thread(target=step)
worker.start()
worker.join()
print(seen)
"""


@needs_host
@pytest.mark.parametrize("default, asked", [(2, 1), (1, 2)])
def test_num_threads_sizes_the_pool_of_the_thread_that_runs_the_model(bundle_of, host_build, tmp_path, default, asked):
    """Fewer threads than TVM's default, and more (a pool never grows past the cap it was made with)."""
    import os
    import sys

    script = tmp_path / "threads.py"
    script.write_text(THREADS_CHECK)
    done = subprocess.run([sys.executable, str(script), str(host_build.shared_library), str(bundle_of("v7")),
                           str(asked)], capture_output=True, text=True,
                          env={**os.environ, "TVM_NUM_THREADS": str(default)})
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == f"{{'before': {default}, 'stepping thread': {asked}}}"


@needs_host
def test_the_install_layout_runs_on_its_own(host_build, bundle_of, tmp_path):
    """cmake --install lays out bin/, lib/ (the TVM libraries too) and include/; the programs find
    their libraries through $ORIGIN/../lib, in an empty environment."""
    deploy = tmp_path / "deploy"
    subprocess.run(["cmake", "--install", str(host_build.run.parent), "--prefix", str(deploy)], check=True,
                   capture_output=True)
    assert sorted(str(p.relative_to(deploy)) for p in deploy.rglob("*") if p.is_file()) == [
        "bin/rwkv-edge-run", "bin/rwkv-edge-runner", "include/rwkv_edge.h", "lib/librwkv_edge.a",
        "lib/librwkv_edge.so", "lib/libtvm_ffi.so", "lib/libtvm_runtime.so"]
    bundle = bundle_of("v7")
    done = subprocess.run([str(deploy / "bin" / "rwkv-edge-run"), str(bundle), "--prompt", "Hi", "-n", "4",
                           "--temperature", "0"], capture_output=True, env={})
    assert done.returncode == 0, done.stderr
    assert done.stdout == bytes(python_greedy(bundle, list(b"Hi"), 4))


@needs_host
def test_a_stop_sequence_ends_generation_and_is_not_printed(bundle_of, host_build, tmp_path):
    bundle = bundle_of("v7")
    greedy = bytes(python_greedy(bundle, list(PROMPT.encode()), N))
    stop = greedy[9:11]
    first = greedy.find(stop)  # the bytes tokenizer: token i is byte i
    ids = tmp_path / "ids"
    done = run(host_build, bundle, "--prompt", PROMPT, "-n", str(N), "--temperature", "0", "--ids-out", str(ids),
               "--stop", stop.decode("utf-8", "surrogateescape"))
    assert done.returncode == 0, done.stderr
    assert raw(done.stdout) == greedy[:first]
    assert read_ids(ids) == list(greedy[:first + len(stop)])  # the tokens that made the stop sequence were drawn


@needs_arm
def test_aarch64_encode_under_qemu(tvm_bundle, arm_build, tmp_path):
    text, ids = tmp_path / "text", tmp_path / "ids"
    text.write_bytes("héllo wörld\n".encode())
    done = run(arm_build, tvm_bundle("v7", "aarch64-linux"), "--encode", str(text), "--ids-out", str(ids), arch="aarch64")
    assert done.returncode == 0 and done.stdout == "" and done.stderr == "", done.stderr
    assert read_ids(ids) == list(text.read_bytes())


@pytest.fixture(scope="module")
def world_bundle(make_ckpt, tmp_path_factory):
    """A tiny v7 of the World vocabulary (65536 ids) as an x86-64 bundle, which carries its tokenizer file."""
    from rwkv_edge.compile.tvm import TvmOptions, compile_tvm
    from rwkv_edge.export import OnnxOptions, export_onnx

    onnx, bundle = tmp_path_factory.mktemp("world-onnx"), tmp_path_factory.mktemp("world-tvm")
    export_onnx(make_ckpt("v7", vocab_size=65536, n_embd=64, head_size=32), onnx, OnnxOptions("fp32"), log=quiet)
    compile_tvm(onnx, bundle, TvmOptions("x86_64-host"), log=quiet)
    return bundle


WORLD_VOCAB = "rwkv_vocab_v20230424.txt"
WORLD_PROMPT = "Hello, wörld! 你好 🙂\n\n"


@needs_host
def test_world_tokenizer_generation_matches_python(world_bundle, host_build, tmp_path):
    from rwkv_edge.tokenizer import WorldTokenizer

    manifest = read_manifest(world_bundle)
    assert manifest.tokenizer == "world" and manifest.tokenizer_file == WORLD_VOCAB
    tokenizer = WorldTokenizer()
    text, ids = tmp_path / "text", tmp_path / "ids"
    text.write_bytes(WORLD_PROMPT.encode())
    assert run(host_build, world_bundle, "--encode", str(text), "--ids-out", str(ids)).returncode == 0
    assert read_ids(ids) == tokenizer.encode(WORLD_PROMPT)
    done = run(host_build, world_bundle, "--prompt", WORLD_PROMPT, "-n", "12", "--temperature", "0", "--ids-out", str(ids))
    assert done.returncode == 0, done.stderr
    expected = python_greedy(world_bundle, tokenizer.encode(WORLD_PROMPT), 12)
    assert read_ids(ids) == expected
    assert raw(done.stdout) == tokenizer.decode_bytes(expected)
