"""The step contract's names, shapes and version: what every artifact promises (docs/onnx-contract.md).

Free of torch, so that a runtime-only install can read and check an artifact.
"""

from __future__ import annotations

from dataclasses import dataclass

CONTRACT_VERSION = "1.2"  # of docs/onnx-contract.md; bump on any change (1.1: weights/compute metadata, reference.npz;
# 1.2: reference.npz version 2, the logits in compact form)
# The image contract (docs/onnx-contract.md, "Vision artifacts"): one whole-image graph, no state, no tokenizer.
IMAGE_GRAPH, IMAGE_INPUT = "image", "images"  # the manifest's graph role; the input (B, 3, H, W) float32
IMAGE_OUTPUTS = ("logits", "features")  # (B, classes), or (B, C, H / patch, W / patch) for a backbone
NO_TOKENIZER = "none"  # the manifest's tokenizer field of an image model
MAX_CHUNK = 4096  # tokens per prefill call: the most any graph is exported or compiled with
# Pixels per side of an image model's input. Measured on the demo Vision-RWKV (patch 8, 64 channels x 4 blocks;
# 2-core build machine, one image): `classify --image-size N` 64: 1.9-3.9 s (mostly importing torch), 512:
# 1.5-4.8 s, 1024: 5.9-9.9 s (0.45 GB peak), 2048: 22 s (1.1 GB), 4096: 115-124 s (2.2 GB), silent throughout;
# `export onnx --image-size N` 64: 16 s, 512: 43 s, 1024: 76 s (1.2 GB; a 104 MB artifact), 2048: 182 s
# (3.7 GB; 404 MB). A real model costs more per token (VRWKV-T: 192 channels x 12 blocks), so 1024 is where a
# run still ends in reasonable time.
MAX_IMAGE_SIZE = 1024
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
