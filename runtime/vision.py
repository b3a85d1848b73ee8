"""Running an image model's artifact: ``open_vision(directory).run(images) -> logits`` (or features).

The whole-image graph of ``export onnx`` (onnxruntime), of ``compile`` for TVM (here or on the device
behind a TVM RPC server, e.g. an aarch64 board or qemu) or for Core ML: the image runner of the
backend whose kind the manifest names (runtime/registry.py). Images are validated before any runner
sees them: (N, 3, H, W) float32 at the artifact's one resolution, one ImageError line otherwise. A
graph exported for batch 1 runs the images one by one.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Protocol

import numpy as np

from ..architectures import IMAGE, LANGUAGE
from ..artifact import Artifact, open_artifact
from ..contract import IMAGENET_MEAN, IMAGENET_STD
from ..errors import ArtifactError, ImageError
from .registry import BACKENDS, entry_of_kind, resolve
from .rpc_client import Remote

# An artifact of each family opened as an image model: None, or why it cannot be
IMAGE_REFUSALS = {LANGUAGE: "holds a {architecture} language model, not an image model", IMAGE: None}
OPTION_WORDS = {"executor": "an executor", "remote": "an RPC device", "threads": "threads"}  # an error names the first


class ImageRunner(Protocol):
    runs_on: str

    def run(self, images: np.ndarray) -> np.ndarray:
        """(B, 3, H, W) float32, B = 1 unless the graph's batch is dynamic -> the graph's output."""

    def close(self) -> None: ...


class VisionRunner:
    """An opened image-model artifact: ``run`` images through it; what it is in ``describe()``."""

    def __init__(self, artifact: Artifact, backend: ImageRunner) -> None:
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
    """The image-model artifact at ``directory`` (checked and hashed) on the image runner of its kind:
    onnxruntime for an ONNX export (``threads``), TVM for a bundle, here or on the device behind
    ``remote``, Core ML for a package (``executor``: "predict" on macOS, else "mil", coremltools'
    evaluation of the program). ArtifactError for an option its runner does not take."""
    artifact = directory if isinstance(directory, Artifact) else open_artifact(directory, expect_sha256=expect_sha256)
    m = artifact.manifest
    refusal = IMAGE_REFUSALS[m.family]
    if refusal is not None:
        raise ArtifactError(f"{artifact.directory}: {refusal.format(architecture=m.architecture)}")
    entry = entry_of_kind(m.kind)
    options = {"executor": executor, "remote": remote, "threads": threads}  # OPTION_WORDS' order
    given = {name: value for name, value in options.items() if value is not None}
    refused = [name for name in given if name not in entry.options]
    if refused:
        takers = " and ".join(e.label for e in BACKENDS.values() if e.image and refused[0] in e.options)
        raise ArtifactError(f"{artifact.directory}: "
                            + entry.image_refusal.format(option=OPTION_WORDS[refused[0]], takers=takers, kind=m.kind))
    return VisionRunner(artifact, resolve(entry.image)(artifact, **given))


def pixels(images: np.ndarray) -> np.ndarray:
    """Normalised images (N, 3, H, W) -> the RGB pixels in 0..255 they came from (IMAGENET_MEAN, IMAGENET_STD)."""
    std, mean = (np.asarray(v, np.float32).reshape(1, 3, 1, 1) for v in (IMAGENET_STD, IMAGENET_MEAN))
    return images * std + mean
