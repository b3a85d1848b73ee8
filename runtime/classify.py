"""``rwkv-edge classify``: image files -> top-k classes, for anything that maps images to logits.

No torch here: an ``ImageModel`` is a checkpoint run by PyTorch (``runtime/torch_vision.py``) or, on a
runtime-only install, a compiled artifact. ``open_image_model`` is the one place that picks which.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from ..errors import ArtifactError, OptionError
from ..images import load_image

BATCH = 32  # images per model call


class ImageModel(Protocol):
    """Images (N, 3, S, S) float32, normalised (``images.preprocess``) -> logits (N, classes), or features
    (N, C, h, w) for a backbone."""

    image_size: int  # S the model was trained (or an artifact built) for
    class_names: list[str] | None  # the checkpoint's, None: classes are shown by index

    def run(self, images: np.ndarray) -> np.ndarray: ...


def open_image_model(source: str | Path, classifier: bool = False) -> ImageModel:
    """The model behind ``source``: an image model's artifact directory (or its .mlpackage), run by its
    runtime (``runtime/vision.py``), or a Vision-RWKV checkpoint, run by PyTorch. ``classifier``: a
    backbone without a head is refused, as is a language model."""
    if Path(source).is_dir():
        from .coreml_backend import artifact_directory
        from .vision import open_vision

        runner = open_vision(artifact_directory(source))
        if classifier and runner.output_name != "logits":
            runner.close()
            raise ArtifactError(f"{source}: a backbone's artifact (it gives features, no class logits); "
                                "classify needs a checkpoint or artifact with a classifier head")
        return runner
    from .torch_vision import open_vision_checkpoint

    return open_vision_checkpoint(source, classifier)


@dataclass(frozen=True)
class Guess:
    index: int
    name: str  # the class name, or the index as text when the model has none
    probability: float


@dataclass(frozen=True)
class Classification:
    path: Path
    converted: str | None  # how the file was made RGB, if it was not
    top: list[Guess]  # most probable first

    def as_dict(self) -> dict[str, Any]:
        return {"image": str(self.path), "converted": self.converted,
                "top": [{"index": g.index, "name": g.name, "probability": g.probability} for g in self.top]}


def top_k(logits: np.ndarray, k: int, class_names: Sequence[str] | None) -> list[list[Guess]]:
    """Softmax probabilities of the k most probable classes per row, most probable first (ties: lower index).
    logits (N, classes)"""
    z = logits.astype(np.float64)
    p = np.exp(z - z.max(-1, keepdims=True))
    p /= p.sum(-1, keepdims=True)  # (N, classes)
    order = np.argsort(-p, axis=-1, kind="stable")[:, :k]  # (N, k)
    return [[Guess(int(i), class_names[i] if class_names else str(int(i)), float(row[i])) for i in idx]
            for row, idx in zip(p, order)]


def classify(model: ImageModel, paths: Sequence[str | Path], top: int = 5,
             image_size: int | None = None) -> list[Classification]:
    """Read and preprocess every image (each bad file is one ImageError naming it, before the model runs),
    then the top ``top`` classes of each, at ``image_size`` (default: the model's)."""
    if top < 1:
        raise OptionError(f"top must be at least 1 class, got {top}")
    size = image_size or model.image_size
    loaded = [load_image(p, size) for p in paths]
    logits = np.concatenate([model.run(np.stack([im.pixels for im in loaded[i:i + BATCH]]))
                             for i in range(0, len(loaded), BATCH)])  # (N, classes)
    guesses = top_k(logits, top, model.class_names)
    return [Classification(im.path, im.converted, g) for im, g in zip(loaded, guesses)]
