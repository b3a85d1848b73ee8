"""ONNX Runtime behind the step contract, reading an artifact directory made by ``export onnx``."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..errors import ArtifactError, StateError
from ..manifest import Manifest, initial_state, read_manifest
from ..model import StateTensor
from .backend import NamedState, check_named_state, check_token_ids, prefill_in_chunks


class OrtBackend:
    """model.onnx for single steps; prefill.onnx, where exported, for whole chunks of a prompt."""

    name = "onnxruntime"

    def __init__(self, directory: str | Path, threads: int | None = None) -> None:
        import onnxruntime as ort

        self.directory = Path(directory)
        self.manifest: Manifest = read_manifest(self.directory, kind="onnx")
        self.vocab_size = int(self.manifest.config["vocab_size"])
        options = ort.SessionOptions()
        if threads:
            options.intra_op_num_threads = threads
        options.log_severity_level = 3

        def session(name: str):
            try:
                return ort.InferenceSession(str(self.directory / name), options, providers=["CPUExecutionProvider"])
            except Exception as e:  # onnxruntime raises its own types for unreadable or invalid graphs
                message = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
                raise ArtifactError(f"{self.directory / name}: onnxruntime cannot load it: {message}") from None

        graphs = self.manifest.graphs
        self.step_session = session(graphs["step"]["file"])
        self.prefill_session = session(graphs["prefill"]["file"]) if "prefill" in graphs else None
        self.chunk = graphs["prefill"]["chunk"] if "prefill" in graphs else 0
        self.spec = self.manifest.state
        self._initial = initial_state(self.manifest, self.directory)

    def state_spec(self) -> list[StateTensor]:
        return self.spec

    def init_state(self) -> NamedState:
        return {k: v.copy() for k, v in self._initial.items()}

    def step(self, token: int, state: NamedState) -> tuple[np.ndarray, NamedState]:
        check_token_ids([token], self.vocab_size)
        return self._run(self.step_session, np.array([token], dtype=np.int64), state)

    def prefill(self, tokens: list[int], state: NamedState) -> tuple[np.ndarray, NamedState]:
        """Whole chunks through the prefill graph, the remainder one step at a time."""
        return prefill_in_chunks(self, tokens, state)

    def run_prefill_chunk(self, tokens: list[int], state: NamedState) -> tuple[np.ndarray, NamedState]:
        """One call of the prefill graph as exported: logits (V,) or (T, V), and the state."""
        if self.prefill_session is None or len(tokens) != self.chunk:
            raise StateError(f"this artifact's prefill graph takes exactly {self.chunk} tokens")
        check_token_ids(tokens, self.vocab_size)
        return self._run(self.prefill_session, np.array([tokens], dtype=np.int64), state)

    def _run(self, session, tokens: np.ndarray, state: NamedState) -> tuple[np.ndarray, NamedState]:
        check_named_state(state, self.spec)
        feeds = {session.get_inputs()[0].name: tokens}
        feeds.update({t.input_name: np.asarray(state[t.input_name], dtype=np.float32)[None] for t in self.spec})
        outputs = session.run(None, feeds)
        return outputs[0][0], {t.input_name: out[0] for t, out in zip(self.spec, outputs[1:])}
