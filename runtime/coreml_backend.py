"""A Core ML artifact (``rwkv-edge compile --target ios-coreml|macos-coreml``) behind the step contract.

Two executors run the package's functions:
- ``predict``: Core ML itself (macOS only; ``make_state`` for the stateful form, macOS 15+);
- ``mil``: coremltools' per-op value inference of the ML program (any OS; not Apple's runtime).

The state crosses this interface as fp32 arrays under the contract's names, as with every backend.
The stateful form keeps it in fp16 Core ML states: it is written into them before a call and read
back after (on a device the app keeps one MLState instead). ``CoreMLImage`` runs an image model's
package with the same executors.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

from ..artifact import Artifact, open_artifact
from ..artifact.interface import GraphInterface, Signature, TensorSpec, check_interface
from ..errors import ArtifactError, OptionError, StateError, one_line
from ..contract import IMAGE_GRAPH, StateTensor
from ..targets.coreml import EXECUTORS, coreml_name, import_coremltools, quiet_coremltools
from .backend import NamedState, check_named_state, check_token_ids, prefill_in_chunks
from .vision import pixels



def default_executor() -> str:
    return "predict" if sys.platform == "darwin" else "mil"


def describe_executor(executor: str) -> str:
    if executor == "predict":
        return "Core ML predict (Apple's runtime), on this Mac"
    return ("coremltools per-op value inference of the ML program on this machine: a reference "
            "evaluation of the converted program, not Apple's runtime")


def artifact_directory(path: str | Path) -> Path:
    """The artifact directory, given it or the model.mlpackage inside it."""
    path = Path(path)
    return path.parent if path.suffix == ".mlpackage" else path


class CoreMLBackend:
    """model.mlpackage: ``decode`` (or ``main``) for single steps, ``prefill`` where the package has it."""

    def __init__(self, artifact: Artifact | str | Path, executor: str | None = None) -> None:
        self.executor = executor or default_executor()
        if self.executor not in EXECUTORS:
            raise OptionError(f"unknown Core ML executor {self.executor!r}; choose {', '.join(EXECUTORS)}")
        if not isinstance(artifact, Artifact):
            artifact = open_artifact(artifact_directory(artifact), kind="coreml")
        self.artifact, self.directory, self.manifest = artifact, artifact.directory, artifact.manifest
        self.name = f"coreml-{self.executor}"
        self.runs_on = describe_executor(self.executor)
        self.spec = self.manifest.state
        self.stateful = self.manifest.target.form == "stateful"
        graphs = self.manifest.graphs
        self.step_function = graphs["step"].function
        self.prefill_function = graphs["prefill"].function if "prefill" in graphs else None
        self.chunk = graphs["prefill"].chunk if "prefill" in graphs else 0
        self.package = artifact.graph("step")
        check_interface(self.manifest, package_interface(self.package), self.package)
        self.vocab_size = self.manifest.vocab_size  # the width of the step function's logits (checked above)
        self._initial = artifact.initial_state()
        self._run = self._mil_runner() if self.executor == "mil" else self._predict_runner()

    def state_spec(self) -> list[StateTensor]:
        return self.spec

    def close(self) -> None:
        pass

    def init_state(self) -> NamedState:
        state = {k: v.copy() for k, v in self._initial.items()}
        if self.stateful:  # what fp16 states can hold
            state = {k: _to_fp16(v).astype(np.float32) for k, v in state.items()}
        return state

    def step(self, token: int, state: NamedState) -> tuple[np.ndarray, NamedState]:
        check_token_ids([token], self.vocab_size)
        logits, state = self._call(self.step_function, "token", [token], state)
        return logits[0], state

    def prefill(self, tokens: list[int], state: NamedState) -> tuple[np.ndarray, NamedState]:
        """Whole chunks through the prefill graph, the remainder one step at a time."""
        return prefill_in_chunks(self, tokens, state)

    def run_prefill_chunk(self, tokens: list[int], state: NamedState) -> tuple[np.ndarray, NamedState]:
        """One call of the prefill function: the logits after the last token, and the state."""
        if self.prefill_function is None or len(tokens) != self.chunk:
            raise StateError(f"this package's prefill function takes exactly {self.chunk} tokens")
        check_token_ids(tokens, self.vocab_size)
        logits, state = self._call(self.prefill_function, "tokens", [tokens], state)
        return logits[0], state

    def _call(self, function: str, token_name: str, tokens: list, state: NamedState) -> tuple[np.ndarray, NamedState]:
        check_named_state(state, self.spec)
        feeds = {token_name: np.asarray(tokens, dtype=np.int32)}
        states = {coreml_name(t.input_name): np.asarray(state[t.input_name], np.float32)[None] for t in self.spec}
        if self.stateful:
            states = {k: _to_fp16(v) for k, v in states.items()}
            outputs, states = self._run(function, feeds, states)
            new = {t.input_name: states[coreml_name(t.input_name)][0].astype(np.float32) for t in self.spec}
        else:
            outputs, _ = self._run(function, {**feeds, **states}, None)
            new = {t.input_name: outputs[coreml_name(t.output_name)][0].astype(np.float32) for t in self.spec}
        return outputs["logits"].astype(np.float32), new

    def _mil_runner(self):
        from .coreml_mil import MilProgram

        program = MilProgram(self.package)

        def run(function, feeds, states):
            states = dict(states) if states is not None else None
            return program.run(function, feeds, states), states

        return run

    def _predict_runner(self):
        if sys.platform != "darwin":
            raise OptionError("Core ML predict runs on macOS only; on this OS use the reference evaluation "
                              "(executor 'mil'), which `rwkv-edge verify` picks by default")
        ct = import_coremltools()
        units = getattr(ct.ComputeUnit, self.manifest.target.compute_units)
        models: dict = {}

        def model(function: str):
            if function not in models:
                try:
                    with quiet_coremltools():
                        name = None if function == "main" else function
                        models[function] = ct.models.MLModel(str(self.package), compute_units=units, function_name=name)
                except Exception as e:
                    raise ArtifactError(f"{self.package}: Core ML cannot load function {function!r}: {e}") from None
            return models[function]

        def run(function, feeds, states):
            m = model(function)
            if states is None:
                return m.predict(feeds), None
            core_state = m.make_state()
            for name, value in states.items():
                core_state.write_state(name, value)
            outputs = m.predict(feeds, state=core_state)
            return outputs, {name: np.asarray(core_state.read_state(name)) for name in states}

        return run


class CoreMLImage:
    """An image model's model.mlpackage, ``main(image)``: an image input of pixels in 0..255 that normalises
    them itself (compile/coreml/image.py), so normalised images are turned back into pixels first."""

    def __init__(self, artifact: Artifact, executor: str | None = None) -> None:
        self.executor = executor or default_executor()
        if self.executor not in EXECUTORS:
            raise OptionError(f"unknown Core ML executor {self.executor!r}; choose {', '.join(EXECUTORS)}")
        self.package, self.output = artifact.graph(IMAGE_GRAPH), artifact.manifest.config["output"]
        check_interface(artifact.manifest, package_interface(self.package), self.package)
        self.runs_on = describe_executor(self.executor)
        if self.executor == "mil":
            from .coreml_mil import MilProgram

            program = MilProgram(self.package)
            self._run = lambda pixels: program.run("main", {"image": pixels})[self.output]
        else:
            self._run = self._predictor(artifact)

    def run(self, images: np.ndarray) -> np.ndarray:
        return np.asarray(self._run(pixels(images)), np.float32)

    def _predictor(self, artifact: Artifact):
        if sys.platform != "darwin":
            raise OptionError("Core ML predict runs on macOS only; on this OS use the reference evaluation "
                              "(executor 'mil'), which `rwkv-edge verify` picks by default")
        from PIL import Image

        ct = import_coremltools()
        try:
            with quiet_coremltools():
                model = ct.models.MLModel(str(self.package),
                                          compute_units=getattr(ct.ComputeUnit, artifact.manifest.target.compute_units))
        except Exception as e:  # Core ML's own errors for a package it cannot load
            raise ArtifactError(f"{self.package}: Core ML cannot load it: {one_line(e)}") from None

        def run(image: np.ndarray) -> np.ndarray:  # (1, 3, H, W) pixels -> an 8-bit RGB image
            rgb = np.clip(np.round(image[0].transpose(1, 2, 0)), 0, 255).astype(np.uint8)
            return model.predict({"image": Image.fromarray(rgb, "RGB")})[self.output]

        return run

    def close(self) -> None:
        self._run = None


_ARRAY_DTYPES = {"INT32": "int32", "FLOAT32": "float32", "FLOAT16": "float16"}


def package_interface(package: Path) -> GraphInterface:
    """What a Core ML package's functions take and return, by its spec: the array inputs, then the
    states (a stateful package reads and writes them in place), and the outputs. An RGB image input
    counts as float32 (1, 3, H, W), the pixels it stands for."""
    ct = import_coremltools()
    from coremltools.proto import FeatureTypes_pb2 as ft

    try:
        with quiet_coremltools():
            spec = ct.utils.load_spec(str(package))
    except Exception as e:  # coremltools' own errors for an unreadable package
        raise ArtifactError(f"{package}: coremltools cannot read it: {one_line(e)}") from None

    def tensor(feature, array) -> TensorSpec:
        if feature.type.WhichOneof("Type") == "imageType":
            return TensorSpec("float32", (1, 3, int(feature.type.imageType.height), int(feature.type.imageType.width)))
        code = ft.ArrayFeatureType.ArrayDataType.Name(array.dataType)
        return TensorSpec(_ARRAY_DTYPES.get(code, code.lower()), tuple(int(d) for d in array.shape))

    described = {f.name: f for f in spec.description.functions} or {"main": spec.description}
    return GraphInterface({name: Signature(
        tuple(tensor(f, f.type.multiArrayType) for f in d.input) + tuple(tensor(f, f.type.stateType.arrayType) for f in d.state),
        tuple(tensor(f, f.type.multiArrayType) for f in d.output)) for name, d in described.items()})


def _to_fp16(value: np.ndarray) -> np.ndarray:
    """fp16 with the out-of-range fills (RWKV-4's -1e30) clipped to the largest finite value."""
    return np.clip(value, -65504, 65504).astype(np.float16)
