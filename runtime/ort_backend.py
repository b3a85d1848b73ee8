"""ONNX Runtime behind the step contract, reading an artifact directory made by ``export onnx``; and the
runner of an image model's export (``OrtImage``)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..artifact import Artifact, Manifest, open_artifact
from ..artifact.interface import GraphInterface, Signature, TensorSpec, check_interface
from ..errors import ArtifactError, StateError, one_line
from ..contract import IMAGE_GRAPH, IMAGE_INPUT, StateTensor
from .backend import NamedState, check_named_state, check_token_ids, prefill_in_chunks


class OrtBackend:
    """model.onnx for single steps; prefill.onnx, where exported, for whole chunks of a prompt."""

    name = "onnxruntime"

    def __init__(self, artifact: Artifact | str | Path, threads: int | None = None) -> None:
        import onnxruntime as ort

        self.artifact = artifact if isinstance(artifact, Artifact) else open_artifact(artifact, kind="onnx")
        self.directory = self.artifact.directory
        self.manifest: Manifest = self.artifact.manifest
        self.spec = self.manifest.state
        options = ort.SessionOptions()
        if threads:
            options.intra_op_num_threads = threads
        options.log_severity_level = 3

        def session(role: str):
            path = self.artifact.graph(role)
            try:
                loaded = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
            except Exception as e:  # onnxruntime raises its own types for unreadable or invalid graphs
                raise ArtifactError(f"{path}: onnxruntime cannot load it: {one_line(e)}") from None
            _check_io(loaded, self.spec, path)
            return loaded

        graphs = self.manifest.graphs
        self.step_session = session("step")
        self.prefill_session = session("prefill") if "prefill" in graphs else None
        sessions = {"step": self.step_session, "prefill": self.prefill_session}
        check_interface(self.manifest, GraphInterface({role: session_signature(s) for role, s in sessions.items() if s}),
                        self.directory)
        self.chunk = graphs["prefill"].chunk if "prefill" in graphs else 0
        self.vocab_size = self.manifest.vocab_size  # the width of the graph's logits (checked above)
        self.runs_on = f"onnxruntime {ort.__version__} CPUExecutionProvider, on this machine"
        self._initial = self.artifact.initial_state()

    def state_spec(self) -> list[StateTensor]:
        return self.spec

    def close(self) -> None:
        pass

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
        try:
            outputs = session.run(None, feeds)
        except Exception as e:  # onnxruntime's own error types: a graph that breaks at run time
            raise ArtifactError(f"{self.directory}: onnxruntime failed running the graph: {one_line(e)}") from None
        return outputs[0][0], {t.input_name: out[0] for t, out in zip(self.spec, outputs[1:])}


class OrtImage:
    """An image model's whole-image graph (model.onnx) on onnxruntime's CPU provider."""

    def __init__(self, artifact: Artifact, threads: int | None = None) -> None:
        import onnxruntime as ort

        options = ort.SessionOptions()
        if threads:
            options.intra_op_num_threads = threads
        options.log_severity_level = 3
        path = artifact.graph(IMAGE_GRAPH)
        try:
            self.session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        except Exception as e:  # onnxruntime raises its own types for unreadable or invalid graphs
            raise ArtifactError(f"{path}: onnxruntime cannot load it: {one_line(e)}") from None
        names = [i.name for i in self.session.get_inputs()]
        if names != [IMAGE_INPUT]:
            raise ArtifactError(f"{path}: inputs {names}, expected [{IMAGE_INPUT!r}]: not an image graph")
        check_interface(artifact.manifest, GraphInterface({IMAGE_GRAPH: session_signature(self.session)}), path)
        self.runs_on = f"onnxruntime {ort.__version__} CPUExecutionProvider, on this machine"

    def run(self, images: np.ndarray) -> np.ndarray:
        return self.session.run(None, {IMAGE_INPUT: images})[0]

    def close(self) -> None:
        self.session = None


def _check_io(session, spec: list[StateTensor], path: Path) -> None:
    """ArtifactError unless the graph's inputs and outputs are the contract's names, in the manifest's order
    (their shapes: ``check_interface``)."""
    inputs = [i.name for i in session.get_inputs()]
    outputs = [o.name for o in session.get_outputs()]
    want_in, want_out = [t.input_name for t in spec], ["logits"] + [t.output_name for t in spec]
    if inputs[1:] != want_in or inputs[:1] not in (["token"], ["tokens"]) or outputs != want_out:
        raise ArtifactError(f"{path}: its inputs/outputs ({', '.join(inputs[:3])}, ... -> {', '.join(outputs[:2])}, "
                            "...) are not the state the manifest lists: the graph belongs to another model")


_ORT_TYPES = {"tensor(float)": "float32", "tensor(float16)": "float16", "tensor(double)": "float64",
              "tensor(int64)": "int64", "tensor(int32)": "int32", "tensor(int8)": "int8", "tensor(uint8)": "uint8"}


def session_signature(session) -> Signature:
    """An onnxruntime session's inputs and outputs as the graph declares them (a dynamic axis by its name)."""
    def specs(values) -> tuple[TensorSpec, ...]:
        return tuple(TensorSpec(_ORT_TYPES.get(v.type, v.type), tuple(d if isinstance(d, int) else str(d) for d in v.shape))
                     for v in values)

    return Signature(specs(session.get_inputs()), specs(session.get_outputs()))
