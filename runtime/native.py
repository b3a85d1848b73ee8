"""The C library (``librwkv_edge.so``, ``runtime/cpp``, ``rwkv_edge.h``) from Python, through ctypes.

``NativeModel`` opens a TVM bundle in the library (which checks it against its manifest itself),
``NativeSession`` feeds it tokens and holds the state and logits, ``NativeSampler`` draws tokens as
``runtime.generation`` does, and ``NativeSession.generate`` runs the library's own generation loop
with a Python callback per token. ``NativeBackend`` puts the library behind the step contract
(``Backend``): ``rwkv-edge generate BUNDLE --backend native``.

Nothing is compiled at import: the library is built on first use (``native_runner.build_native``,
cached) or given by path. Every status the library returns becomes the matching errors.py
exception with the library's own one-line message.
"""

from __future__ import annotations

import ctypes
import os
import sys
import weakref
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from ..artifact import Artifact, open_artifact
from ..contract import StateTensor
from ..errors import ArtifactError, OptionError, RwkvEdgeError, StateError, TokenError, TokenizerError, ToolError
from .backend import NamedState, check_named_state, check_token_ids, no_prefill_graph

ABI_VERSION = 1  # RWKV_EDGE_ABI_VERSION of the header this binding follows
OK, ERR_ARGUMENT, ERR_BUNDLE, ERR_STATE, ERR_UNSUPPORTED, ERR_IO, ERR_RUNTIME, ERR_MEMORY = range(8)
# status -> the exception it raises by default; a call whose arguments mean something more precise
# (a token id, a tokenizer) names its own class for that status
ERRORS: dict[int, type[Exception]] = {
    ERR_ARGUMENT: OptionError, ERR_BUNDLE: ArtifactError, ERR_STATE: StateError, ERR_UNSUPPORTED: ArtifactError,
    ERR_IO: ArtifactError, ERR_RUNTIME: ToolError, ERR_MEMORY: MemoryError,
}
MAX_UINT64 = 2**64 - 1

_model_p, _session_p, _sampler_p = ctypes.c_void_p, ctypes.c_void_p, ctypes.c_void_p
TOKEN_CALLBACK = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.c_int32, ctypes.POINTER(ctypes.c_char), ctypes.c_size_t,
                                  ctypes.c_void_p)


class OpenOptions(ctypes.Structure):
    _fields_ = [("expect_sha256", ctypes.c_char_p), ("num_threads", ctypes.c_int)]


class SamplerParams(ctypes.Structure):
    _fields_ = [("temperature", ctypes.c_double), ("top_p", ctypes.c_double), ("top_k", ctypes.c_int32),
                ("presence_penalty", ctypes.c_double), ("frequency_penalty", ctypes.c_double),
                ("penalty_decay", ctypes.c_double), ("seed", ctypes.c_uint64)]


class GenerateOptions(ctypes.Structure):
    _fields_ = [("max_tokens", ctypes.c_int32), ("stop", ctypes.POINTER(ctypes.c_char_p)),
                ("stop_count", ctypes.c_size_t), ("end_token", ctypes.c_int32)]


_status, _size, _i32 = ctypes.c_int, ctypes.c_size_t, ctypes.c_int32
_float_p = ctypes.POINTER(ctypes.c_float)
_SIGNATURES = {  # name -> (restype, argtypes), as rwkv_edge.h declares them
    "rwkv_edge_last_error": (ctypes.c_char_p, []),
    "rwkv_edge_abi_version": (ctypes.c_int, []),
    "rwkv_edge_model_open": (_status, [ctypes.c_char_p, ctypes.POINTER(OpenOptions), ctypes.POINTER(_model_p)]),
    "rwkv_edge_model_close": (None, [_model_p]),
    "rwkv_edge_vocab_size": (_i32, [_model_p]),
    "rwkv_edge_architecture": (ctypes.c_char_p, [_model_p]),
    "rwkv_edge_tokenizer_name": (ctypes.c_char_p, [_model_p]),
    "rwkv_edge_end_of_text": (ctypes.c_int32, [_model_p]),
    "rwkv_edge_state_count": (_size, [_model_p]),
    "rwkv_edge_state_size": (_size, [_model_p]),
    "rwkv_edge_state_tensor": (_status, [_model_p, _size, ctypes.POINTER(ctypes.c_char_p),
                                         ctypes.POINTER(ctypes.POINTER(ctypes.c_int64)), ctypes.POINTER(_size)]),
    "rwkv_edge_tokenize": (_status, [_model_p, ctypes.c_char_p, _size, ctypes.POINTER(_i32), _size,
                                     ctypes.POINTER(_size)]),
    "rwkv_edge_token_bytes": (_status, [_model_p, _i32, ctypes.POINTER(ctypes.POINTER(ctypes.c_char)),
                                        ctypes.POINTER(_size)]),
    "rwkv_edge_session_new": (_status, [_model_p, ctypes.POINTER(_session_p)]),
    "rwkv_edge_session_free": (None, [_session_p]),
    "rwkv_edge_session_reset": (_status, [_session_p]),
    "rwkv_edge_prefill": (_status, [_session_p, ctypes.POINTER(_i32), _size]),
    "rwkv_edge_step": (_status, [_session_p, _i32]),
    "rwkv_edge_logits": (_status, [_session_p, ctypes.POINTER(_float_p)]),
    "rwkv_edge_state_get": (_status, [_session_p, _float_p, _size]),
    "rwkv_edge_state_set": (_status, [_session_p, _float_p, _size]),
    "rwkv_edge_state_save": (_status, [_session_p, ctypes.c_char_p]),
    "rwkv_edge_state_load": (_status, [_session_p, ctypes.c_char_p]),
    "rwkv_edge_default_sampler_params": (SamplerParams, []),
    "rwkv_edge_sampler_new": (_status, [ctypes.POINTER(SamplerParams), _i32, ctypes.POINTER(_sampler_p)]),
    "rwkv_edge_sampler_free": (None, [_sampler_p]),
    "rwkv_edge_sample": (_status, [_sampler_p, _float_p, ctypes.POINTER(_i32)]),
    "rwkv_edge_default_generate_options": (GenerateOptions, []),
    "rwkv_edge_generate": (_status, [_session_p, _sampler_p, ctypes.c_char_p, _size, ctypes.POINTER(GenerateOptions),
                                     TOKEN_CALLBACK, ctypes.c_void_p, ctypes.POINTER(_i32)]),
}
_LIBRARIES: dict[Path, ctypes.CDLL] = {}


def load_library(path: str | Path | None = None, log: Callable[[str], None] = print) -> ctypes.CDLL:
    """``librwkv_edge.so`` at ``path`` (default: this machine's build, made on first use by
    ``native_runner.build_native``), its functions typed; ToolError for a library that cannot be
    loaded or follows another ABI version."""
    if path is None:
        from .native_runner import build_native

        path = build_native(log=log).shared_library
    path = Path(path).resolve()
    if path not in _LIBRARIES:
        try:
            lib = ctypes.CDLL(str(path))
        except OSError as e:
            raise ToolError(f"cannot load {path}: {e}") from None
        for name, (restype, argtypes) in _SIGNATURES.items():
            try:
                function = getattr(lib, name)
            except AttributeError:
                raise ToolError(f"{path} has no {name}: not librwkv_edge, or another version of it") from None
            function.restype, function.argtypes = restype, argtypes
        if lib.rwkv_edge_abi_version() != ABI_VERSION:
            raise ToolError(f"{path} follows ABI version {lib.rwkv_edge_abi_version()}, this binding {ABI_VERSION}: "
                            "rebuild it from this rwkv-edge")
        _LIBRARIES[path] = lib
    return _LIBRARIES[path]


def _check(lib: ctypes.CDLL, status: int, errors: dict[int, type[Exception]] | None = None) -> None:
    """Raise the exception of ``status`` (``errors`` overriding ``ERRORS``) with the library's message."""
    if status == OK:
        return
    message = (lib.rwkv_edge_last_error() or b"").decode("utf-8", "replace") or f"status {status}"
    kind = (errors or {}).get(status) or ERRORS.get(status, RwkvEdgeError)
    raise kind(message)


class NativeModel:
    """A TVM bundle opened by the library: its code, its mapped weights, its tokenizer. Use as a
    context manager, or ``close()``; closing it frees its sessions first."""

    def __init__(self, bundle_dir: str | Path, expect_sha256: str | None = None, threads: int = 0,
                 library: str | Path | ctypes.CDLL | None = None, log: Callable[[str], None] = print) -> None:
        self.lib = library if isinstance(library, ctypes.CDLL) else load_library(library, log)
        self.directory = Path(bundle_dir)
        if isinstance(threads, bool) or not isinstance(threads, int) or threads < 0:
            raise OptionError(f"threads must be an integer >= 0 (0: TVM's default), got {threads!r}")
        options = OpenOptions(expect_sha256.encode() if expect_sha256 is not None else None, threads)
        handle = _model_p()
        _check(self.lib, self.lib.rwkv_edge_model_open(os.fsencode(self.directory), ctypes.byref(options),
                                                       ctypes.byref(handle)))
        self.handle = handle
        self._sessions: weakref.WeakSet[NativeSession] = weakref.WeakSet()
        lib = self.lib
        self.vocab_size: int = lib.rwkv_edge_vocab_size(handle)
        self.architecture: str = lib.rwkv_edge_architecture(handle).decode()
        self.tokenizer: str = lib.rwkv_edge_tokenizer_name(handle).decode()
        self.end_of_text: int = lib.rwkv_edge_end_of_text(handle)  # -1: the tokenizer has none
        self.state_size: int = lib.rwkv_edge_state_size(handle)
        self.spec = [self._state_tensor(i) for i in range(lib.rwkv_edge_state_count(handle))]

    def _state_tensor(self, index: int) -> StateTensor:
        name, shape, ndim = ctypes.c_char_p(), ctypes.POINTER(ctypes.c_int64)(), _size()
        _check(self.lib, self.lib.rwkv_edge_state_tensor(self._live(), index, ctypes.byref(name), ctypes.byref(shape),
                                                         ctypes.byref(ndim)))
        _, layer, role = name.value.decode().split(".", 2)  # "state.3.wkv"
        return StateTensor(int(layer), role, tuple(int(shape[i]) for i in range(ndim.value)))

    def _live(self) -> ctypes.c_void_p:
        if self.handle is None:
            raise StateError(f"{self.directory}: the native model is closed")
        return self.handle

    def tokenize(self, text: str | bytes) -> list[int]:
        """Token ids of ``text`` (str: its UTF-8 bytes) by the bundle's tokenizer; TokenizerError where the
        bundle carries none the library reads."""
        data = text.encode("utf-8") if isinstance(text, str) else bytes(text)
        count = _size()
        ids = (_i32 * max(len(data), 1))()  # a token is at least one byte: enough but for a strange tokenizer
        status = self.lib.rwkv_edge_tokenize(self._live(), data, len(data), ids, len(ids), ctypes.byref(count))
        if status == ERR_ARGUMENT and count.value > len(ids):
            ids = (_i32 * count.value)()
            status = self.lib.rwkv_edge_tokenize(self._live(), data, len(data), ids, len(ids), ctypes.byref(count))
        _check(self.lib, status, {ERR_UNSUPPORTED: TokenizerError})
        return list(ids[:count.value])

    def token_bytes(self, token: int) -> bytes:
        """The bytes of ``token`` (possibly part of a UTF-8 character; b"" for end-of-text)."""
        data, length = ctypes.POINTER(ctypes.c_char)(), _size()
        _check(self.lib, self.lib.rwkv_edge_token_bytes(self._live(), _token(token), ctypes.byref(data),
                                                        ctypes.byref(length)),
               {ERR_ARGUMENT: TokenError, ERR_UNSUPPORTED: TokenizerError})
        return ctypes.string_at(data, length.value) if length.value else b""

    def session(self) -> NativeSession:
        """A new session from the model's initial state."""
        return NativeSession(self)

    def close(self) -> None:
        if self.handle is not None:
            for session in list(self._sessions):
                session.close()
            self.lib.rwkv_edge_model_close(self.handle)
            self.handle = None

    def __enter__(self) -> NativeModel:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __del__(self) -> None:
        if getattr(self, "handle", None) is not None:
            self.close()


class NativeSampler:
    """The library's sampler: the same draws as ``runtime.generation``'s for the same settings, seed and logits.
    ``settings``: a ``runtime.Sampler`` (or any object with its fields; missing ones take the defaults)."""

    def __init__(self, lib: ctypes.CDLL, settings, vocab_size: int) -> None:
        self.lib, self.vocab_size = lib, vocab_size
        params = lib.rwkv_edge_default_sampler_params()
        for name, _ in SamplerParams._fields_:
            if hasattr(settings, name):
                value = getattr(settings, name)
                if name == "seed" and (isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= MAX_UINT64):
                    raise OptionError(f"seed must be an integer in [0, 2**64), got {value!r}")
                try:
                    setattr(params, name, value)
                except TypeError:
                    raise OptionError(f"{name} must be a number, got {value!r:.40}") from None
        handle = _sampler_p()
        _check(lib, lib.rwkv_edge_sampler_new(ctypes.byref(params), vocab_size, ctypes.byref(handle)))
        self.handle = handle

    def sample(self, logits: np.ndarray) -> int:
        """One token id from ``vocab_size`` logits; counted for the penalties."""
        logits = np.ascontiguousarray(logits, dtype=np.float32)
        if logits.shape != (self.vocab_size,):
            raise OptionError(f"expected {self.vocab_size} logits, got shape {logits.shape}")
        token = _i32()
        _check(self.lib, self.lib.rwkv_edge_sample(self._live(), logits.ctypes.data_as(_float_p), ctypes.byref(token)))
        return token.value

    def _live(self) -> ctypes.c_void_p:
        if self.handle is None:
            raise OptionError("the native sampler is closed")
        return self.handle

    def close(self) -> None:
        if self.handle is not None:
            self.lib.rwkv_edge_sampler_free(self.handle)
            self.handle = None

    def __del__(self) -> None:
        if getattr(self, "handle", None) is not None:
            self.close()


class NativeSession:
    """One conversation in the library: the recurrent state and the logits after the last token."""

    def __init__(self, model: NativeModel) -> None:
        self.model, self.lib = model, model.lib
        handle = _session_p()
        _check(self.lib, self.lib.rwkv_edge_session_new(model._live(), ctypes.byref(handle)))
        self.handle = handle
        model._sessions.add(self)

    def _live(self) -> ctypes.c_void_p:
        if self.handle is None:
            raise StateError("the native session is closed")
        return self.handle

    def reset(self) -> None:
        """Back to the model's initial state, no logits."""
        _check(self.lib, self.lib.rwkv_edge_session_reset(self._live()))

    def prefill(self, tokens: Sequence[int]) -> None:
        """Feed ``tokens`` (whole chunks through the bundle's prefill function, the rest by steps)."""
        tokens = list(tokens) if not isinstance(tokens, (str, bytes)) else tokens
        check_token_ids(tokens, self.model.vocab_size)
        ids = (_i32 * len(tokens))(*tokens)
        _check(self.lib, self.lib.rwkv_edge_prefill(self._live(), ids, len(tokens)), {ERR_ARGUMENT: TokenError})

    def step(self, token: int) -> None:
        """Feed one token."""
        _check(self.lib, self.lib.rwkv_edge_step(self._live(), _token(token)), {ERR_ARGUMENT: TokenError})

    def logits(self) -> np.ndarray:
        """A copy of the logits (V,) after the last token fed; StateError where none was fed."""
        pointer = _float_p()
        _check(self.lib, self.lib.rwkv_edge_logits(self._live(), ctypes.byref(pointer)))
        return np.ctypeslib.as_array(pointer, (self.model.vocab_size,)).copy()

    def get_state(self) -> NamedState:
        """The state by contract input name (copies)."""
        flat = np.empty(self.model.state_size, np.float32)
        _check(self.lib, self.lib.rwkv_edge_state_get(self._live(), flat.ctypes.data_as(_float_p), flat.size))
        state, offset = {}, 0
        for t in self.model.spec:
            n = int(np.prod(t.shape))
            state[t.input_name] = flat[offset:offset + n].reshape(t.shape).copy()
            offset += n
        return state

    def set_state(self, state: NamedState) -> None:
        """Replace the state (checked against the spec first); the session then has no logits."""
        check_named_state(state, self.model.spec)
        flat = np.concatenate([np.asarray(state[t.input_name], np.float32).ravel() for t in self.model.spec])
        self.set_flat_state(flat)

    def set_flat_state(self, values: np.ndarray) -> None:
        """Replace the state with ``state_size`` floats, tensors in order (StateError for another size)."""
        values = np.ascontiguousarray(values, dtype=np.float32)
        _check(self.lib, self.lib.rwkv_edge_state_set(self._live(), values.ctypes.data_as(_float_p), values.size),
               {ERR_ARGUMENT: StateError})

    def save(self, path: str | Path) -> None:
        """Write the state (and the logits where there are some) to a state file, atomically."""
        _check(self.lib, self.lib.rwkv_edge_state_save(self._live(), os.fsencode(path)))

    def load(self, path: str | Path) -> None:
        """Read a state file of this model (StateError otherwise, the session unchanged)."""
        _check(self.lib, self.lib.rwkv_edge_state_load(self._live(), os.fsencode(path)), {ERR_IO: StateError})

    def generate(self, prompt: str | bytes, sampler: NativeSampler, max_tokens: int, stop: Sequence[str] = (),
                 end_token: int = -1, callback: Callable[[int, bytes], object] | None = None) -> int:
        """The library's generation: prefill ``prompt`` (may be empty where the session has logits), then
        draw up to ``max_tokens`` tokens; ``callback(token, text)`` hears each (token -1: the text held
        back at the end) and stops generation by returning a true value. Returns the tokens delivered.
        An exception in the callback stops generation and is raised here."""
        data = prompt.encode("utf-8") if isinstance(prompt, str) else bytes(prompt)
        if isinstance(max_tokens, bool) or not isinstance(max_tokens, int) or not 1 <= max_tokens < 2**31:
            raise OptionError(f"max_tokens must be an integer >= 1, got {max_tokens!r}")
        stops = [s.encode("utf-8") if isinstance(s, str) else bytes(s) for s in stop]
        if any(not s or b"\0" in s for s in stops):
            raise OptionError("a stop sequence must be non-empty text without NUL characters")
        options = self.lib.rwkv_edge_default_generate_options()
        options.max_tokens, options.end_token = max_tokens, end_token
        array = (ctypes.c_char_p * len(stops))(*stops)
        options.stop, options.stop_count = (ctypes.cast(array, ctypes.POINTER(ctypes.c_char_p)) if stops else None,
                                            len(stops))
        raised: list[BaseException] = []

        def on_token(token: int, text, length: int, _user) -> int:
            try:
                return 1 if callback(token, ctypes.string_at(text, length) if length else b"") else 0
            except BaseException as e:  # ctypes would print and swallow it
                raised.append(e)
                return 1

        c_callback = TOKEN_CALLBACK(on_token) if callback is not None else TOKEN_CALLBACK()
        generated = _i32()
        status = self.lib.rwkv_edge_generate(self._live(), sampler._live(), data, len(data), ctypes.byref(options),
                                             c_callback, None, ctypes.byref(generated))
        if raised:
            raise raised[0]
        _check(self.lib, status, {ERR_UNSUPPORTED: TokenizerError})
        return generated.value

    def close(self) -> None:
        if self.handle is not None:
            self.lib.rwkv_edge_session_free(self.handle)
            self.handle = None

    def __enter__(self) -> NativeSession:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __del__(self) -> None:
        if getattr(self, "handle", None) is not None and getattr(self.model, "handle", None) is not None:
            self.close()


def _to_stderr(line: str) -> None:
    print(line, file=sys.stderr)


def _token(token: int) -> int:
    """A token id as the C int32 the library takes; TokenError for what is not an integer or does not fit."""
    if isinstance(token, bool) or not isinstance(token, (int, np.integer)) or not -2**31 <= token < 2**31:
        raise TokenError(f"token id {token!r:.40} is not an integer id")
    return int(token)


class NativeBackend:
    """A TVM bundle run by the C library behind the step contract: ``step`` and ``prefill`` are pure
    (the state goes in with ``state_set`` and comes back with ``state_get``). ``generate_text``
    streams the library's own generation with its sampler."""

    name = "native"

    def __init__(self, artifact: Artifact | str | Path, threads: int | None = None,
                 library: str | Path | None = None) -> None:
        self.artifact = artifact if isinstance(artifact, Artifact) else open_artifact(artifact, kind="tvm")
        # the library checks the bundle itself, pinned to the manifest checked here
        self.model = NativeModel(self.artifact.directory, expect_sha256=self.artifact.manifest_sha256,
                                 threads=threads or 0, library=library, log=_to_stderr)  # stdout: generated text
        self.session = self.model.session()
        self.vocab_size = self.model.vocab_size
        self.spec = self.model.spec
        self.runs_on = "librwkv_edge (the C runtime, TVM's runtime library) on this machine"
        prefill = self.artifact.manifest.graphs.get("prefill")
        self.chunk = prefill.chunk if prefill is not None else 0
        self._initial = self.session.get_state()

    def state_spec(self) -> list[StateTensor]:
        return self.spec

    def init_state(self) -> NamedState:
        return {k: v.copy() for k, v in self._initial.items()}

    def step(self, token: int, state: NamedState) -> tuple[np.ndarray, NamedState]:
        check_token_ids([token], self.vocab_size)
        self.session.set_state(state)
        self.session.step(token)
        return self.session.logits(), self.session.get_state()

    def prefill(self, tokens: list[int], state: NamedState) -> tuple[np.ndarray, NamedState]:
        check_token_ids(tokens, self.vocab_size)
        self.session.set_state(state)
        self.session.prefill(tokens)
        return self.session.logits(), self.session.get_state()

    def run_prefill_chunk(self, tokens: list[int], state: NamedState) -> tuple[np.ndarray, NamedState]:
        """Exactly ``chunk`` tokens: the library runs them in one call of the bundle's prefill function."""
        if not self.chunk:
            raise no_prefill_graph(self)
        if isinstance(tokens, (str, bytes)) or len(tokens) != self.chunk:
            raise StateError(f"this bundle's prefill function takes exactly {self.chunk} tokens")
        return self.prefill(tokens, state)

    def sampler(self, settings) -> NativeSampler:
        """The library's sampler with ``settings`` (a ``runtime.Sampler``)."""
        return NativeSampler(self.model.lib, settings, self.vocab_size)

    def close(self) -> None:
        self.model.close()
