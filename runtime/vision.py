"""Running an image model's artifact: ``open_vision(directory).run(images) -> logits`` (or features).

The whole-image graph of ``export onnx`` (onnxruntime) or of ``compile`` (TVM, here or on the device
behind a TVM RPC server, e.g. an aarch64 board or qemu). Images are validated before any backend sees
them: (N, 3, H, W) float32 at the artifact's one resolution, one ImageError line otherwise. A graph
exported for batch 1 runs the images one by one.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from ..artifact import Artifact, open_artifact
from ..artifact.interface import GraphInterface, check_interface
from ..contract import IMAGENET_MEAN, IMAGENET_STD, IMAGE_GRAPH, IMAGE_INPUT
from ..errors import ArtifactError, ImageError, OptionError, PlatformError, one_line
from ..targets.coreml import import_coremltools, quiet_coremltools
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
                expect_sha256: str | None = None, executor: str | None = None) -> VisionRunner:
    """The image-model artifact at ``directory`` (checked and hashed) on its backend: onnxruntime for an
    ONNX export (``threads``), TVM for a bundle, here or on the device behind ``remote``, Core ML for a
    package (``executor``: "predict" on macOS, else "mil", coremltools' evaluation of the program)."""
    artifact = directory if isinstance(directory, Artifact) else open_artifact(directory, expect_sha256=expect_sha256)
    m = artifact.manifest
    if not m.is_vision:
        raise ArtifactError(f"{artifact.directory}: holds a {m.architecture} language model, not an image model")
    if m.kind == "coreml" and remote is None and threads is None:
        return VisionRunner(artifact, _CoreMLImage(artifact, executor))
    if executor is not None:
        raise ArtifactError(f"{artifact.directory}: an executor applies to Core ML artifacts, this is {m.kind}")
    if m.kind == "onnx" and remote is None:
        return VisionRunner(artifact, _OrtImage(artifact, threads))
    if m.kind == "tvm" and threads is None:
        return VisionRunner(artifact, _TvmImage(artifact, remote))
    if m.kind in ("onnx", "tvm"):
        raise ArtifactError(f"{artifact.directory}: {'an RPC device' if remote else 'threads'} applies to "
                            f"{'TVM' if remote else 'ONNX'} artifacts, this is {m.kind}")
    raise ArtifactError(f"{artifact.directory}: a Core ML package runs here or on a Mac, not with "
                        f"{'an RPC device' if remote else 'threads'}")


class _OrtImage:
    def __init__(self, artifact: Artifact, threads: int | None) -> None:
        import onnxruntime as ort

        from .ort_backend import session_signature

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


class _TvmImage:
    """model.so's ``main(images (1, 3, H, W), weights...)`` on the Relax VM, weights from params.safetensors."""

    def __init__(self, artifact: Artifact, remote: Remote | None) -> None:
        import tvm

        from ..artifact.params import map_params
        from .tvm_backend import library_bytes, library_interface, load_library, upload_library

        m = artifact.manifest
        graph = m.graphs[IMAGE_GRAPH]
        library = artifact.path(graph.file)
        if m.target.device != "cpu":
            raise PlatformError(f"{artifact.directory}: a {m.target.device} image bundle is built and checked "
                                f"(`rwkv-edge verify`), not yet run: the image runtime runs CPU bundles")
        self.remote, self._session = remote, None
        if remote is None:
            if host_triple() != m.target.triple:
                raise PlatformError(f"{artifact.directory} was built for {m.target.triple} ({m.target.name}); this "
                                    f"machine is {host_triple()}: run it on a {m.target.triple} device with --rpc")
            self.device = tvm.cpu()
            self.vm = load_library(library_bytes(artifact, library), library, self.device)
            self.runs_on = f"TVM {tvm.__version__} Relax VM on this machine ({m.target.triple})"
        else:
            self._session = open_session(remote)
            self.device = self._session.cpu()
            self.vm = upload_library(self._session, library_bytes(artifact, library), library, remote, self.device)
            self.runs_on = f"TVM {tvm.__version__} Relax VM on {remote.describe()} ({m.target.triple})"
        interface = library_interface(self._call, library, m)
        weights = map_params(artifact.path(graph.params), interface.weights)
        self.params = [tvm.runtime.tensor(w, self.device) for w in weights]

    def _call(self, function: str, args: list):
        if self.remote is None:
            return self.vm[function](*args)
        self.vm.set_input(function, *args)  # over RPC a result comes back through get_outputs
        self.vm.invoke_stateful(function)
        return self.vm.get_outputs(function)

    def run(self, images: np.ndarray) -> np.ndarray:
        import tvm

        return self._call("main", [tvm.runtime.tensor(images, self.device), *self.params]).numpy()

    def close(self) -> None:
        import gc

        self.vm = self.params = self._session = self.device = None
        gc.collect()  # the VM's get_outputs closure is a reference cycle that holds the session


class _CoreMLImage:
    """model.mlpackage's ``main(image)``: an image input of pixels in 0..255 that normalises them itself
    (compile/coreml_vision.py), so normalised images are turned back into pixels first."""

    def __init__(self, artifact: Artifact, executor: str | None) -> None:
        from .coreml_backend import EXECUTORS, default_executor, describe_executor, package_interface

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


def pixels(images: np.ndarray) -> np.ndarray:
    """Normalised images (N, 3, H, W) -> the RGB pixels in 0..255 they came from (IMAGENET_MEAN, IMAGENET_STD)."""
    std, mean = (np.asarray(v, np.float32).reshape(1, 3, 1, 1) for v in (IMAGENET_STD, IMAGENET_MEAN))
    return images * std + mean
