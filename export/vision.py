"""``rwkv-edge export onnx`` of a Vision-RWKV checkpoint: the whole-image graph at one resolution.

model.onnx takes ``images`` (B, 3, H, W) float32 and gives ``logits`` (B, classes), or ``features``
(B, C, H / p, W / p) for a backbone-only checkpoint (docs/onnx-contract.md, "Vision artifacts").
The manifest is the language models' (kind ``onnx``) with architecture ``vrwkv``, the vision config,
no state and no tokenizer; reference.npz holds REFERENCE_IMAGES seeded synthetic images and the fp32
PyTorch model's outputs on them.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .. import __version__
from ..artifact import ArtifactWriter, Graph, Manifest
from ..artifact.builder import report_commit, stage
from ..artifact.files import REFERENCE, STEP_ONNX
from ..artifact.reference import VisionReference
from ..bundled import recorded_checkpoint
from ..contract import CONTRACT_VERSION, IMAGENET_MEAN, IMAGENET_STD, IMAGE_GRAPH, NO_TOKENIZER
from ..errors import OptionError
from ..model import VisionRWKV
from ..model.vision import class_names
from ..model.checkpoint import Checkpoint
from ..model.threads import image_threads, torch_threads
from .graph import ImageGraph
from .options import OnnxOptions
from .trace import export_graph

REFERENCE_IMAGES = 8  # per artifact: noise, gradients, blobs, stripes (reference_images)
VISION_WEIGHTS = {"fp32": torch.float32, "fp16": torch.float16}  # fp16: fp16 compute, the Bi-WKV scans in fp32


def export_vision(checkpoint: Path, opened: Checkpoint, writer: ArtifactWriter, options: OnnxOptions,
                  log: Callable[[str], None]) -> Manifest:
    """Write the image graph, its reference and manifest into ``writer`` and commit them (``image_size``
    None is the trained size)."""
    if options.weights not in VISION_WEIGHTS:
        raise OptionError(f"image models export with {' or '.join(VISION_WEIGHTS)} weights, not {options.weights}")
    model = VisionRWKV.from_checkpoint(opened, torch.float32, str(checkpoint))
    cfg = model.config
    size = options.image_size or cfg.image_size
    fixed = model.at_resolution(size)  # ImageError for a size that is no multiple of the patch
    log(f"  Vision-RWKV: {cfg.depth} layers x {cfg.embed_dims}, patch {cfg.patch_size}, {size} x {size} px "
        f"({size // cfg.patch_size}^2 tokens), {f'{cfg.num_classes} classes' if cfg.num_classes else 'backbone'}, "
        f"{options.weights} weights")
    graph = ImageGraph(fixed, size)
    write_reference(graph, writer.dir / REFERENCE, log)
    graph = ImageGraph(fixed.to(VISION_WEIGHTS[options.weights]), size)
    manifest = _manifest(model, graph, size, checkpoint, opened, options)
    export_graph(graph, writer.dir / STEP_ONNX, manifest, options, log, IMAGE_GRAPH)
    report_commit(log, writer, manifest, writer.commit(manifest))
    return manifest


def write_reference(graph: ImageGraph, path: Path, log: Callable[[str], None]) -> None:
    """REFERENCE_IMAGES reference images and the (fp32) ``graph``'s outputs on them, saved to ``path``
    (on the threads ``image_threads`` picks for the batch)."""
    with stage(log, f"reference outputs on {REFERENCE_IMAGES} images (fp32 compute)"):
        images = reference_images(REFERENCE_IMAGES, graph.image_size, graph.model.config.in_channels)
        with torch.inference_mode(), torch_threads(image_threads(graph.model, images.shape)):
            output = graph(torch.from_numpy(images)).numpy()
        VisionReference(images, output, graph.output_names()[0]).save(path)


def vision_config(model: VisionRWKV, image_size: int, output: str, meta: dict[str, Any]) -> dict[str, Any]:
    """The manifest's config: the model's, the graph's resolution (``trained_image_size`` beside it),
    its output's name, and ``class_names`` where the checkpoint's meta has one per class."""
    config = {k: v for k, v in model.describe().items() if k not in ("family", "architecture")}
    config.update(image_size=image_size, trained_image_size=model.config.image_size, output=output)
    names = class_names(meta, model.config.num_classes)
    if names is not None:
        config["class_names"] = names
    return config


def reference_images(n: int, size: int, channels: int = 3, seed: int = 0) -> np.ndarray:
    """``n`` seeded synthetic images, ImageNet-normalised as the official pipeline leaves them, cycling
    through white noise, smooth colour gradients, soft blobs and oriented stripes, rounded to 8-bit pixel
    levels before normalising.  -> (n, channels, size, size) float32"""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:size, 0:size] / max(size - 1, 1)  # (size, size) each, in [0, 1]
    images = []
    for i in range(n):
        kind = i % 4
        if kind == 0:  # noise
            image = rng.random((channels, size, size))
        elif kind == 1:  # a gradient per channel, in a random direction
            a, b, c = rng.uniform(-1, 1, (3, channels, 1, 1))
            image = 0.5 + 0.5 * np.tanh(a * x + b * y + c)
        elif kind == 2:  # a few soft blobs of random colours on a plain background
            image = np.broadcast_to(rng.random((channels, 1, 1)), (channels, size, size)).copy()
            for _ in range(3):
                cy, cx, r = rng.uniform(0.1, 0.9), rng.uniform(0.1, 0.9), rng.uniform(0.05, 0.3)
                weight = np.exp(-((y - cy) ** 2 + (x - cx) ** 2) / (2 * r * r))
                image += weight * (rng.random((channels, 1, 1)) - image)
        else:  # stripes at a random angle and frequency, with a little noise
            angle, freq = rng.uniform(0, np.pi), rng.uniform(2, 8)
            wave = np.sin(2 * np.pi * freq * (x * np.cos(angle) + y * np.sin(angle)))
            image = 0.5 + 0.4 * wave * rng.uniform(0.3, 1, (channels, 1, 1)) + 0.05 * rng.standard_normal((channels, size, size))
        images.append(np.clip(image, 0, 1))
    mean = np.resize(np.array(IMAGENET_MEAN), channels)[:, None, None]
    std = np.resize(np.array(IMAGENET_STD), channels)[:, None, None]
    pixels = np.round(np.stack(images) * 255)  # 8-bit levels: what an image file or a Core ML image input holds
    return ((pixels - mean) / std).astype(np.float32)


def _manifest(model: VisionRWKV, graph: ImageGraph, size: int, checkpoint: Path, opened: Checkpoint,
              options: OnnxOptions) -> Manifest:
    import onnx
    import onnxscript

    return Manifest(
        kind="onnx", contract_version=CONTRACT_VERSION, architecture="vrwkv",
        config=vision_config(model, size, graph.output_names()[0], opened.meta), tokenizer=NO_TOKENIZER,
        weights=options.weights, compute=options.weights, group_size=0, batch="dynamic" if options.dynamic_batch else 1,
        state=[], source={"checkpoint": recorded_checkpoint(checkpoint), "sha256": opened.sha256},
        graphs={IMAGE_GRAPH: Graph(STEP_ONNX)}, reference=REFERENCE,
        tools={"rwkv_edge": __version__, "torch": torch.__version__, "onnx": onnx.__version__,
               "onnxscript": onnxscript.__version__, "opset": str(options.opset)},
    )
