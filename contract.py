"""The step contract's names, shapes and version: what every artifact promises (docs/onnx-contract.md).

Free of torch, so that a runtime-only install can read and check an artifact.
"""

from __future__ import annotations

from dataclasses import dataclass

CONTRACT_VERSION = "1.1"  # of docs/onnx-contract.md; bump on any change (1.1: weights/compute metadata, reference.npz)
VERSIONS = ("v4", "v5", "v6", "v7")  # the architectures an artifact may hold (model.ARCHITECTURES)
# The image contract (docs/onnx-contract.md, "Vision artifacts"): one whole-image graph, no state, no tokenizer.
VISION_ARCHITECTURES = ("vrwkv",)  # Vision-RWKV (model/vision.py)
IMAGE_GRAPH, IMAGE_INPUT = "image", "images"  # the manifest's graph role; the input (B, 3, H, W) float32
IMAGE_OUTPUTS = ("logits", "features")  # (B, classes), or (B, C, H / patch, W / patch) for a backbone
NO_TOKENIZER = "none"
MAX_CHUNK = 4096  # tokens per prefill call: the most any graph is exported or compiled with  # the manifest's tokenizer field of an image model
# what image models' pixels are normalised with, RGB in 0..255 (mmcls img_norm_cfg): (pixel - mean) / std
IMAGENET_MEAN, IMAGENET_STD = (123.675, 116.28, 103.53), (58.395, 57.12, 57.375)


@dataclass(frozen=True)
class StateTensor:
    """One tensor of the state: where it lives, its shape and its value in the zero state."""

    layer: int
    role: str
    shape: tuple[int, ...]
    fill: float = 0.0

    @property
    def input_name(self) -> str:
        return f"state.{self.layer}.{self.role}"

    @property
    def output_name(self) -> str:
        return f"state_out.{self.layer}.{self.role}"


def matrix_state_spec(n_layer: int, n_embd: int, n_head: int, head_size: int) -> list[StateTensor]:
    """The v5/v6/v7 state: token shift, [head, key, value] WKV matrix, token shift, per layer."""
    spec = []
    for i in range(n_layer):
        spec += [
            StateTensor(i, "att_shift", (n_embd,)),
            StateTensor(i, "wkv", (n_head, head_size, head_size)),
            StateTensor(i, "ffn_shift", (n_embd,)),
        ]
    return spec


def compatible(version: str) -> bool:
    """Whether an artifact of contract ``version`` runs here: the same major version."""
    return version.split(".")[0] == CONTRACT_VERSION.split(".")[0]
