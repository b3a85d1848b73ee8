"""A Vision-RWKV checkpoint run by PyTorch, as an ``ImageModel`` (runtime/classify.py)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from ..architectures import IMAGE, detect
from ..errors import CheckpointError
from ..model import VisionRWKV
from ..model.sources import open_checkpoint
from ..model.threads import image_threads, torch_threads
from ..model.vision import class_names


class TorchVisionModel:
    """The PyTorch model of a checkpoint: any image size that is a multiple of the patch size; each
    call on ``threads`` intra-op threads, or where None on those ``image_threads`` picks for its batch."""

    def __init__(self, model: VisionRWKV, class_names: list[str] | None, threads: int | None = None) -> None:
        self.model, self.threads = model, threads
        self.image_size = model.config.image_size
        self.class_names = class_names

    @property
    def runs_on(self) -> str:
        one = (1, self.model.config.in_channels, self.image_size, self.image_size)
        threads = image_threads(self.model, one, self.threads) or torch.get_num_threads()
        return f"PyTorch {torch.__version__}, {threads} threads (one image), on this machine"

    def run(self, images: np.ndarray) -> np.ndarray:
        """(N, 3, H, W) float32 -> logits (N, classes) or features (N, C, H / p, W / p), float32."""
        with torch.inference_mode(), torch_threads(image_threads(self.model, images.shape, self.threads)):
            return self.model(torch.from_numpy(np.asarray(images))).numpy()


def open_vision_checkpoint(path: str | Path, classifier: bool = False, threads: int | None = None) -> TorchVisionModel:
    """Load a Vision-RWKV checkpoint (run on ``threads``, as ``TorchVisionModel``); CheckpointError, in
    one line, for a language model or, with ``classifier``, a backbone without a classification head."""
    checkpoint = open_checkpoint(path)
    architecture = detect(checkpoint.tensors)  # raises for a checkpoint of no architecture
    if architecture.family != IMAGE:
        raise CheckpointError(f"{path}: an {architecture.label} {architecture.family} model; this command takes a "
                              "Vision-RWKV image checkpoint (`rwkv-edge info` shows what a checkpoint is)")
    model = VisionRWKV.from_checkpoint(checkpoint, source=str(path))
    if classifier and not model.config.num_classes:
        raise CheckpointError(f"{path}: a Vision-RWKV backbone without a classification head (no head.fc), "
                              "which gives features, not classes; classify needs a classifier checkpoint "
                              "(`rwkv-edge trace --images` writes the features)")
    return TorchVisionModel(model, class_names(checkpoint.meta, model.config.num_classes), threads)
