"""Every backend that runs here keeps the Backend contract (runtime/backend.py): steps are pure (the
caller's state is never modified, a returned state never shares memory with an earlier one), bad
token ids and states are refused with the typed errors before anything runs, and prefill equals
the same tokens stepped one at a time."""

from __future__ import annotations

import numpy as np
import pytest

from rwkv_edge.errors import StateError, TokenError
from rwkv_edge.verify.report import OutputErrors
from rwkv_edge.verify.tolerances import FP32

TOKENS = [3, 141, 59, 26, 5, 35]  # 4 through a prefill graph, 2 single steps


def quiet(_: str) -> None:
    pass


@pytest.fixture(scope="module")
def open_backend(version_ckpt, tvm_bundle, tmp_path_factory):
    """open_backend(name) -> a backend of the tiny v5 model (trained initial state included)."""
    from rwkv_edge.runtime.registry import open_backend as by_name

    def make(name: str):
        if name == "torch":
            return by_name(version_ckpt("v5"), "torch")
        if name == "onnxruntime":
            from rwkv_edge.export import OnnxOptions, export_onnx

            out = tmp_path_factory.mktemp("contract-onnx")
            export_onnx(version_ckpt("v5"), out, OnnxOptions(prefill_chunk=4), log=quiet)
            return by_name(out, "onnxruntime")
        if name == "tvm-host":
            return by_name(tvm_bundle("v5", prefill=4), "tvm")
        if name == "tvm-aarch64-qemu":
            return _emulated_tvm(tvm_bundle("v5", "aarch64-linux", prefill=4))
        from rwkv_edge.compile.coreml import CoreMLOptions, compile_coreml
        from rwkv_edge.runtime.coreml_backend import CoreMLBackend

        out = tmp_path_factory.mktemp("contract-coreml")
        compile_coreml(version_ckpt("v5"), out, CoreMLOptions(weights="fp32", deployment="iOS18", prefill_chunk=4),
                       log=quiet)
        return CoreMLBackend(out, executor="mil")

    return make


def _emulated_tvm(bundle):
    from rwkv_edge.runtime.rpc_client import Remote
    from rwkv_edge.runtime.rpc_server import emulation_unavailable_reason, rpc_server
    from rwkv_edge.runtime.tvm_backend import TvmBackend

    why = emulation_unavailable_reason()
    if why is not None:
        pytest.skip(f"no aarch64 emulation here: {why}")
    server = rpc_server(emulate="cortex-a53")
    host, port = server.__enter__()
    backend = TvmBackend(bundle, Remote(f"{host}:{port}"))
    close = backend.close

    def close_both() -> None:
        close()
        server.__exit__(None, None, None)

    backend.close = close_both
    return backend


BACKENDS = ["torch", "onnxruntime", "tvm-host", "tvm-aarch64-qemu", "coreml-mil"]


@pytest.fixture(scope="module", params=BACKENDS)
def backend(request, open_backend):
    opened = open_backend(request.param)
    yield opened
    opened.close()


def snapshot(state):
    return {k: np.array(v, copy=True) for k, v in state.items()}


def test_steps_are_pure_and_never_alias(backend):
    state = backend.init_state()
    again = backend.init_state()
    assert all(not np.shares_memory(np.asarray(state[k]), np.asarray(again[k])) for k in state)
    before = snapshot(state)
    seen = [state]
    for token in TOKENS[:3]:
        _, new = backend.step(token, seen[-1])
        for k, v in before.items():
            np.testing.assert_array_equal(np.asarray(seen[0][k]), v, err_msg=f"{backend.name} changed the caller's {k}")
        for old in seen:
            shared = [k for k in new if np.shares_memory(np.asarray(new[k]), np.asarray(old[k]))]
            assert not shared, f"{backend.name}: returned state shares memory with an earlier one: {shared}"
        seen.append(new)


def test_bad_tokens_and_states_are_refused_with_typed_errors(backend):
    state = backend.init_state()
    for token in (-1, backend.vocab_size, 1.5, True, "3"):
        with pytest.raises(TokenError):
            backend.step(token, state)
    with pytest.raises(TokenError):
        backend.prefill([], state)
    name = next(iter(state))
    for bad in ({k: v for k, v in state.items() if k != name}, {**state, name: np.zeros((1, 2), np.float32)},
                {**state, "state.99.wkv": state[name]}, [state]):
        with pytest.raises(StateError):
            backend.step(1, bad)


def test_prefill_equals_steps(backend):
    logits, state = backend.prefill(TOKENS, backend.init_state())
    step_state = backend.init_state()
    for token in TOKENS:
        step_logits, step_state = backend.step(token, step_state)
    errors = OutputErrors()
    errors.add(len(TOKENS) - 1, step_logits, logits)
    assert errors.scaled[0] <= FP32.logits_scaled, f"{backend.name}: prefill logits {errors.scaled[0]:.2e}"
    for name in step_state:
        e = OutputErrors()
        e.add(len(TOKENS) - 1, np.asarray(step_state[name]), np.asarray(state[name]))
        assert e.scaled[0] <= FP32.state_scaled, f"{backend.name}: prefill {name} {e.scaled[0]:.2e}"
    assert backend.chunk in (0, 4)
    assert backend.name != "tvm" or backend.chunk == 4  # the TVM bundles' prefill function ran
