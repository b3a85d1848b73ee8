"""reference.npz: what the fp32 PyTorch model computed when the artifact was built, so that a machine
with only the runtime and the artifact (no torch, no checkpoint) can verify it (docs/onnx-contract.md).

Arrays of one .npz (read without pickle):

- ``version`` () int64: REFERENCE_VERSION
- ``tokens`` (T,) int64: the rollout's token ids (T = 64)
- ``logits`` (T, V) float32: the logits after each token, the model feeding back its own state
- ``state_out.{layer}.{role}`` float32, the state's shape: the state after the last token
- ``greedy_prompt`` (P,) int64 and ``greedy_tokens`` (G,) int64: greedy generation from the prompt

An image model's reference (``VisionReference``) holds ``version``, ``images`` (N, 3, H, W) float32
and its output under the graph's output name: ``logits`` (N, classes) or ``features`` (N, C, h, w).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..contract import StateTensor
from ..errors import ArtifactError
from .files import read_npz

REFERENCE_VERSION = 1


@dataclass(frozen=True)
class Reference:
    tokens: np.ndarray  # (T,) int64
    logits: np.ndarray  # (T, V) float32
    state: dict[str, np.ndarray]  # state_out.{layer}.{role} after the last token
    greedy_prompt: np.ndarray  # (P,) int64
    greedy_tokens: np.ndarray  # (G,) int64

    def save(self, path: Path) -> None:
        with open(path, "wb") as f:
            np.savez(f, version=np.int64(REFERENCE_VERSION), tokens=self.tokens, logits=self.logits,
                     greedy_prompt=self.greedy_prompt, greedy_tokens=self.greedy_tokens, **self.state)


def load_reference(path: Path, spec: list[StateTensor], vocab_size: int) -> Reference:
    """The reference rollout at ``path``, checked against the artifact's state spec and vocabulary."""
    arrays = read_npz(path)
    if arrays.get("version", np.int64(-1)).item() != REFERENCE_VERSION:
        raise ArtifactError(f"{path}: reference version {arrays.get('version')}, this rwkv-edge reads "
                            f"{REFERENCE_VERSION}: rebuild the artifact")
    names = ["tokens", "logits", "greedy_prompt", "greedy_tokens", *(t.output_name for t in spec)]
    missing = [n for n in names if n not in arrays]
    if missing:
        raise ArtifactError(f"{path}: holds no {missing[0]}")
    tokens, logits = arrays["tokens"], arrays["logits"]
    shapes_ok = (tokens.ndim == 1 and tokens.size and logits.shape == (tokens.size, vocab_size)
                 and all(arrays[t.output_name].shape == t.shape for t in spec))
    ids = np.concatenate([tokens, arrays["greedy_prompt"], arrays["greedy_tokens"]])
    if not shapes_ok or ids.dtype.kind not in "iu" or ids.min() < 0 or ids.max() >= vocab_size:
        raise ArtifactError(f"{path}: its arrays do not have the shapes, dtypes and token range of this artifact")
    return Reference(tokens.astype(np.int64), logits.astype(np.float32),
                     {t.output_name: arrays[t.output_name].astype(np.float32) for t in spec},
                     arrays["greedy_prompt"].astype(np.int64), arrays["greedy_tokens"].astype(np.int64))


@dataclass(frozen=True)
class VisionReference:
    """What the fp32 PyTorch image model computed on a fixed set of images at build time."""

    images: np.ndarray  # (N, 3, H, W) float32
    output: np.ndarray  # (N, classes) logits, or (N, C, h, w) features
    name: str  # "logits" or "features"

    def save(self, path: Path) -> None:
        with open(path, "wb") as f:
            np.savez(f, version=np.int64(REFERENCE_VERSION), images=self.images, **{self.name: self.output})


def load_vision_reference(path: Path, config: dict) -> VisionReference:
    """The reference images and outputs at ``path``, checked against the image model's ``config``
    (a manifest's, validated): images (N, C, S, S), outputs (N, classes) or (N, C, S / p, S / p), N >= 1."""
    arrays = read_npz(path)
    if arrays.get("version", np.int64(-1)).item() != REFERENCE_VERSION:
        raise ArtifactError(f"{path}: reference version {arrays.get('version')}, this rwkv-edge reads "
                            f"{REFERENCE_VERSION}: rebuild the artifact")
    name, size = config["output"], config["image_size"]
    images, output = arrays.get("images"), arrays.get(name)
    if images is None or output is None:
        raise ArtifactError(f"{path}: holds no {'images' if images is None else name}")
    grid = size // config["patch_size"]
    per_image = (config["num_classes"],) if name == "logits" else (config["embed_dims"], grid, grid)
    if (images.shape[1:] != (config["in_channels"], size, size) or not len(images) or images.dtype.kind != "f"
            or output.shape != (len(images), *per_image) or output.dtype.kind != "f"):
        raise ArtifactError(f"{path}: its arrays do not have the shapes and dtypes of this artifact's images "
                            f"and {name} (images {images.shape}, {name} {output.shape})")
    return VisionReference(images.astype(np.float32), output.astype(np.float32), name)
