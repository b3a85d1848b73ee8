"""``rwkv-edge compile VISION_CKPT --target ios-coreml|macos-coreml``: Vision-RWKV -> model.mlpackage.

Core ML converts from the PyTorch model, traced at one resolution (``--image-size``, default the
checkpoint's). The package holds one function, ``main``:

- in: ``image``, a Core ML image (RGB, S x S, already resized and center-cropped: an app hands it a
  CVPixelBuffer or CGImage);
- out: ``logits`` fp32 (1, classes), or ``features`` (1, C, S / p, S / p) for a backbone.

The ImageNet normalisation is inside, so the package takes plain pixels: the image input's
per-channel bias subtracts the mean, and the graph's first op divides by the std.

fp16, int8 and int4 weights compute in fp16 with the normalisations and the Bi-WKV scans in fp32, as
the PyTorch model keeps its scans (``bi_wkv_ops``); int8/int4 weights (iOS 18 / macOS 15) are the project's quantizer's numbers for every
projection and the head, stored as ``constexpr_blockwise_shift_scale``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
from torch import nn

from ... import __version__
from ...artifact import ArtifactWriter, CoreMLBuild, Graph, Manifest
from ...artifact.files import PACKAGE, REFERENCE
from ...artifact.manifest import CORE_ML_IMAGE_FORMS
from ...bundled import recorded_checkpoint
from ...contract import CONTRACT_VERSION, IMAGENET_MEAN, IMAGENET_STD, IMAGE_GRAPH, NO_TOKENIZER
from ...errors import OptionError
from ...artifact.builder import open_source, report_commit, stage
from ...export.graph import ImageGraph
from ...export.vision import vision_config, write_reference
from ...model.base import quantized_linears
from ...model.checkpoint import Checkpoint
from ...model.vision import VisionRWKV
from ...targets.coreml import import_coremltools, quiet_coremltools
from ...weights import compute_precision, weight_format
from .. import CompileRequest
from .compression import compress_blockwise, quantized_matrices
from .plan import CoreMLOptions, CoreMLPlan, ct_target
from .precision import Fp16Selector


def compile_request(source: Path, out_dir: Path, options: CoreMLOptions, request: CompileRequest,
                    log: Callable[[str], None], opened: Checkpoint) -> Manifest:
    """``compile_for`` of an image model's checkpoint (``opened``): refuses --prefill-chunk, then
    ``compile_vision_coreml`` at ``request.image_size``."""
    if request.prefill_chunk is not None:
        raise OptionError("--prefill-chunk applies to language models, not to an image model")
    return compile_vision_coreml(source, out_dir, replace(options, prefill_chunk=0), request.image_size, log, opened)


def compile_vision_coreml(checkpoint: Path, out_dir: Path, options: CoreMLOptions, image_size: int | None,
                          log: Callable[[str], None] = print, opened: Checkpoint | None = None) -> Manifest:
    """Convert the Vision-RWKV ``checkpoint`` (``opened`` already, or read here) to ``out_dir``/model.mlpackage +
    manifest.json."""
    if options.stateful:
        raise OptionError("--stateful applies to language models: an image model has no state")
    plan = options.resolve()
    build = CoreMLBuild(plan.target.name, plan.target.platform, plan.deployment, plan.compute_units,
                        form=CORE_ML_IMAGE_FORMS[0], state_dtype="", token_dtype="", functions=["main"])
    log(f"target: platform {build.platform}, deployment {build.deployment}, compute_units {build.compute_units} "
        f"({build.name})")
    log(f"weights: {plan.weights}, {plan.compute} compute"
        + (", the Bi-WKV scans and the norms in fp32" if compute_precision(plan.compute).half else ""))
    with ArtifactWriter(out_dir, log, reads=[checkpoint]) as writer:
        opened = opened or open_source(checkpoint, log)
        model = VisionRWKV.from_state_dict(opened.tensors, torch.float32, str(checkpoint), opened.meta)
        size = image_size or model.config.image_size
        model = model.at_resolution(size)  # ImageError for a size that is no multiple of the patch
        graph = ImageGraph(model, size)
        manifest = _manifest(graph, checkpoint, opened, plan, build)
        matrices = _quantize(model, plan, log) if plan.compressed else {}
        write_reference(graph, writer.dir / REFERENCE, log)  # with the quantized weights, as the package holds them
        with stage(log, f"convert ({size} x {size} px)"):
            mlmodel = _convert(model, size, manifest.config["output"], plan)
        if plan.compressed:
            with stage(log, f"compress the weights to {plan.weights}"):
                mlmodel = compress_blockwise(mlmodel, matrices)
        _stamp(mlmodel, manifest)
        with stage(log, f"save {PACKAGE}"):
            mlmodel.save(str(writer.dir / PACKAGE))
        sha256 = writer.commit(manifest)
    log(f"{PACKAGE}: {sum(meta['bytes'] for meta in manifest.files.values()) / 1e6:.1f} MB")
    report_commit(log, writer, manifest, sha256)
    return manifest


class PixelGraph(nn.Module):
    """RGB pixels minus the ImageNet mean (1, 3, S, S), as Core ML's image input hands them over -> the
    model's output, on the fixed patch grid of S x S images."""

    def __init__(self, model: VisionRWKV, size: int) -> None:
        super().__init__()
        self.model, self.grid = model, (size // model.config.patch_size,) * 2
        self.register_buffer("inverse_std", 1 / torch.tensor(IMAGENET_STD).reshape(1, 3, 1, 1))

    def forward(self, centred: torch.Tensor) -> torch.Tensor:
        return self.model.run(centred * self.inverse_std, self.grid).float()


def _convert(model: VisionRWKV, size: int, output: str, plan: CoreMLPlan):
    """Trace the model at ``size`` x ``size`` and convert it to an ML program with an image input."""
    ct = import_coremltools()

    example = torch.zeros(1, model.config.in_channels, size, size)
    image = ct.ImageType(name="image", shape=tuple(example.shape), scale=1.0, bias=[-m for m in IMAGENET_MEAN],
                         color_layout=ct.colorlayout.RGB)
    precision = (ct.transform.FP16ComputePrecision(op_selector=Fp16Selector(bi_wkv_ops)) if compute_precision(plan.compute).half
                 else ct.precision.FLOAT32)
    with quiet_coremltools(), torch.no_grad():
        traced = torch.jit.trace(PixelGraph(model, size).eval(), (example,), check_trace=False)
        return ct.convert(traced, inputs=[image], outputs=[ct.TensorType(name=output, dtype=np.float32)],
                          convert_to="mlprogram", minimum_deployment_target=ct_target(plan.deployment),
                          compute_precision=precision, compute_units=getattr(ct.ComputeUnit, plan.compute_units),
                          skip_model_load=True)


def bi_wkv_ops(block) -> set[int]:
    """ids of the ops of the Bi-WKV scans, which stay in fp32 as in the PyTorch model: every op downstream
    of a constant that fp16 cannot hold (the scans' -1e38 "empty sum", model/vision.py), up to and
    including the division that ends each layer's scans."""
    def beyond_fp16(value) -> bool:
        value = np.asarray(value)
        return value.dtype.kind == "f" and value.size > 0 and np.abs(value).max() > np.finfo(np.float16).max

    stack = [child for op in block.operations if op.op_type == "const" and beyond_fp16(op.outputs[0].val)
             for child in op.outputs[0].child_ops]
    found: set[int] = set()
    while stack:
        op = stack.pop()
        if id(op) not in found:
            found.add(id(op))
            if op.op_type != "real_div":
                stack.extend(child for out in op.outputs for child in out.child_ops)
    return found


def _quantize(model: VisionRWKV, plan: CoreMLPlan, log: Callable[[str], None]) -> dict:
    fmt = weight_format(plan.weights)
    with stage(log, f"quantize the projections and the head to {fmt.name}, groups of {plan.group_size}"):
        linears = list(quantized_linears(model, fmt.bits, plan.group_size))
        log(f"  {len(linears)} matrices; the patch embedding stays fp16")
    return quantized_matrices(linears)


def _stamp(mlmodel, manifest: Manifest) -> None:
    """What the package is, inside it as well as in manifest.json."""
    mlmodel.short_description = f"rwkv-edge Vision-RWKV, {manifest.config['image_size']} px RGB image -> {manifest.config['output']}"
    mlmodel.version = __version__
    names = manifest.config.get("class_names")
    mlmodel.user_defined_metadata.update({
        "rwkv_edge.architecture": manifest.architecture,
        "rwkv_edge.checkpoint_sha256": manifest.source["sha256"],
        **({"rwkv_edge.class_names": "\n".join(names)} if names else {}),
    })


def _manifest(graph: ImageGraph, checkpoint: Path, opened, plan: CoreMLPlan, build: CoreMLBuild) -> Manifest:
    ct = import_coremltools()

    config = vision_config(graph.model, graph.image_size, graph.output_names()[0], opened.meta)
    return Manifest(
        kind="coreml", contract_version=CONTRACT_VERSION, architecture="vrwkv", config=config,
        tokenizer=NO_TOKENIZER, weights=plan.weights, compute=plan.compute, group_size=plan.group_size, batch=1,
        state=[], source={"checkpoint": recorded_checkpoint(checkpoint), "sha256": opened.sha256},
        graphs={IMAGE_GRAPH: Graph(PACKAGE, function="main")}, target=build, reference=REFERENCE,
        tools={"rwkv_edge": __version__, "torch": torch.__version__, "coremltools": ct.__version__},
    )

