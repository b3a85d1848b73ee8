"""Running an image model's artifact: ``open_vision(directory).run(images) -> logits`` (or features).

The whole-image graph of ``export onnx`` (onnxruntime) or of ``compile`` (TVM, here or on the device
behind a TVM RPC server, e.g. an aarch64 board or qemu). Images are validated before any backend sees
them: (N, 3, H, W) float32 at the artifact's one resolution, one ImageError line otherwise. A graph
exported for batch 1 runs the images one by one.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Protocol

import numpy as np

from ..artifact import Artifact, open_artifact
from ..contract import IMAGE_GRAPH, IMAGE_INPUT
from ..errors import ArtifactError, ImageError, PlatformError, ToolError, one_line
from ..platforms import host_triple
from .rpc_client import Remote, open_session


class _ImageBackend(Protocol):
    runs_on: str

    def run(self, images: np.ndarray) -> np.ndarray:
        """(B, 3, H, W) float32, B = 1 unless the graph's batch is dynamic -> the graph's output."""

    def close(self) -> None: ...


class VisionRunner:
    """An opened image-model artifact: ``run`` images through it; what it is in ``describe()``."""

    def __init__(self, artifact: Artifact, backend: _ImageBackend) -> None:
        self.artifact, self.backend = artifact, backend
        self.manifest = artifact.manifest
        config = self.manifest.config
        self.image_size: int = config["image_size"]
        self.in_channels: int = config["in_channels"]
        self.output_name: str = config["output"]  # "logits" or "features"
        self.class_names: list[str] | None = config.get("class_names")
        self.runs_on = backend.runs_on

    def run(self, images: np.ndarray) -> np.ndarray:
        """images (N, 3, H, W) float32 -> logits (N, classes), or features (N, C, H / p, W / p)."""
        check_images(images, self.in_channels, self.image_size)
        if self.manifest.batch == "dynamic":
            return self.backend.run(np.ascontiguousarray(images))
        return np.concatenate([self.backend.run(np.ascontiguousarray(images[i:i + 1])) for i in range(len(images))])

    def describe(self) -> dict[str, Any]:
        """What the artifact holds and where it runs."""
        m = self.manifest
        return {"directory": str(self.artifact.directory), "kind": m.kind, "architecture": m.architecture,
                "image_size": self.image_size, "output": self.output_name, "num_classes": m.config["num_classes"],
                "class_names": self.class_names is not None, "weights": m.weights, "compute": m.compute,
                "batch": m.batch, "target": m.target.name if m.target else None, "runs_on": self.runs_on}

    def close(self) -> None:
        """Release the backend (a remote device serves one session at a time)."""
        self.backend.close()


def check_images(images: object, channels: int, size: int) -> None:
    """ImageError, one line, unless ``images`` is a float32 array (N >= 1, channels, size, size)."""
    if not isinstance(images, np.ndarray) or images.dtype != np.float32:
        kind = images.dtype if isinstance(images, np.ndarray) else type(images).__name__
        raise ImageError(f"images must be a float32 numpy array (N, {channels}, {size}, {size}), got {kind}")
    if images.ndim != 4 or images.shape[1:] != (channels, size, size) or not len(images):
        raise ImageError(f"images have shape {images.shape}; this artifact takes (N, {channels}, {size}, {size}), "
                         f"N >= 1 (resize or crop to {size} x {size})")


def open_vision(directory: str | Path | Artifact, remote: Remote | None = None, threads: int | None = None,
                expect_sha256: str | None = None) -> VisionRunner:
    """The image-model artifact at ``directory`` (checked and hashed) on its backend: onnxruntime for an
    ONNX export (``threads``), TVM for a bundle, here or on the device behind ``remote``."""
    artifact = directory if isinstance(directory, Artifact) else open_artifact(directory, expect_sha256=expect_sha256)
    m = artifact.manifest
    if not m.is_vision:
        raise ArtifactError(f"{artifact.directory}: holds a {m.architecture} language model, not an image model")
    if m.kind == "onnx" and remote is None:
        return VisionRunner(artifact, _OrtImage(artifact, threads))
    if m.kind == "tvm" and threads is None:
        return VisionRunner(artifact, _TvmImage(artifact, remote))
    if m.kind in ("onnx", "tvm"):
        raise ArtifactError(f"{artifact.directory}: {'an RPC device' if remote else 'threads'} applies to "
                            f"{'TVM' if remote else 'ONNX'} artifacts, this is {m.kind}")
    raise ArtifactError(f"{artifact.directory}: no image runtime for {m.kind} artifacts yet (onnx, tvm)")


class _OrtImage:
    def __init__(self, artifact: Artifact, threads: int | None) -> None:
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
        self.runs_on = f"onnxruntime {ort.__version__} CPUExecutionProvider, on this machine"

    def run(self, images: np.ndarray) -> np.ndarray:
        return self.session.run(None, {IMAGE_INPUT: images})[0]

    def close(self) -> None:
        self.session = None


class _TvmImage:
    """model.so's ``main(images (1, 3, H, W), weights...)`` on the Relax VM, weights from params.safetensors."""

    def __init__(self, artifact: Artifact, remote: Remote | None) -> None:
        import tvm
        from tvm import relax

        from ..artifact.params import map_params
        from .tvm_backend import _content_name

        m = artifact.manifest
        graph = m.graphs[IMAGE_GRAPH]
        library = artifact.path(graph.file)
        if m.target.device != "cpu":
            raise PlatformError(f"{artifact.directory}: image bundles run on CPU targets only so far")
        self.remote, self._session = remote, None
        if remote is None:
            if host_triple() != m.target.triple:
                raise PlatformError(f"{artifact.directory} was built for {m.target.triple} ({m.target.name}); this "
                                    f"machine is {host_triple()}: run it on a {m.target.triple} device with --rpc")
            try:
                with _content_name(library, m.files[graph.file]["sha256"]) as name:
                    module = tvm.runtime.load_module(name)
            except Exception as e:  # a library that does not load is a broken artifact
                raise ArtifactError(f"{library}: TVM cannot load it: {one_line(e, last=True)}") from None
            self.device = tvm.cpu()
            self.runs_on = f"TVM {tvm.__version__} Relax VM on this machine ({m.target.triple})"
        else:
            self._session = open_session(remote)
            try:
                self._session.upload(str(library))
                module = self._session.load_module(library.name)
            except Exception as e:
                raise ToolError(f"{remote.describe()}: cannot load {library.name} there: {one_line(e, last=True)}") from None
            self.device = self._session.cpu()
            self.runs_on = f"TVM {tvm.__version__} Relax VM on {remote.describe()} ({m.target.triple})"
        self.vm = relax.VirtualMachine(module, self.device)
        weights = map_params(artifact.path(graph.params), graph.num_params)
        self.params = [tvm.runtime.tensor(w, self.device) for w in weights]

    def run(self, images: np.ndarray) -> np.ndarray:
        import tvm

        args = [tvm.runtime.tensor(images, self.device), *self.params]
        if self.remote is None:
            return self.vm["main"](*args).numpy()
        self.vm.set_input("main", *args)  # over RPC a result comes back through get_outputs
        self.vm.invoke_stateful("main")
        return self.vm.get_outputs("main").numpy()

    def close(self) -> None:
        import gc

        self.vm = self.params = self._session = self.device = None
        gc.collect()  # the VM's get_outputs closure is a reference cycle that holds the session
