"""``rwkv-edge export onnx``: checkpoint -> model.onnx (+ prefill.onnx) + manifest.json.

Stages: load the checkpoint, trace the step graph with torch.export and the onnxscript-based
exporter, clean it up (onnxscript optimizer: constant folding, redundant Reshape/Cast/Unsqueeze
removed), stamp the contract metadata, check it with ``onnx.checker`` (full check), then move the
files into place. Everything is written beside the output directory and swapped in whole when it
is complete (``artifact/writer.py``): an earlier artifact there stays intact until that moment,
and after an error or an interruption.
"""

from __future__ import annotations

import json
import logging
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from .. import __version__
from ..artifact import ArtifactWriter, Graph, Manifest
from ..contract import CONTRACT_VERSION
from ..errors import OptionError
from ..quantize import check_group
from ..weights import check_weights, weight_format
from ..model import RWKVModel
from ..model.base import round_linear_inputs
from ..architectures import IMAGE, detect
from ..artifact.files import INITIAL_STATE, PREFILL_ONNX, REFERENCE, STEP_ONNX
from ..artifact.builder import (build_reference, load_source, log_spread, open_source, report_commit, save_initial_state, stage,
                                tokenizer_name)
from .graph import ContractGraph, ImageGraph
from .cleanup import clean_up, fold_weight_transposes
from .nbits import to_matmul_nbits

# the formats an export holds -> the precision it computes in (int8/int4: MatMulNBits, fp32 activations)
WEIGHTS = {"fp32": torch.float32, "fp16": torch.float16, "int8": torch.float32, "int4": torch.float32}
# weights above this go to ``<graph>.onnx.data`` beside the graph, written one tensor at a time and mapped
# by onnxruntime and the TVM build, instead of a protobuf serialised whole in memory (and at most 2 GB)
EXTERNAL_DATA_BYTES = 256 << 20


@dataclass(frozen=True)
class OnnxOptions:
    weights: str = "fp32"  # the weight format; fp16 also computes in fp16; the state stays fp32 at the interface
    prefill_chunk: int = 16  # tokens per prefill call; 0: no prefill graph
    prefill_all_logits: bool = False  # prefill returns (B, T, V) instead of the last position
    dynamic_batch: bool = False  # a symbolic batch axis instead of batch 1
    opset: int = 18
    group_size: int | None = None  # int8/int4: weights per scale (default: the format's)
    image_size: int | None = None  # image models: the graph's fixed resolution (default: the trained one)
    # what the reference rollout computes: "fp32" (the export's own numbers); "int8" (int8/int4 weights) the
    # projections' inputs rounded per group too, with the rounding spread: the reference of the int8-compute
    # TVM bundle that compile_tvm builds from this export (not of the ONNX graphs, which compute in fp32)
    reference_compute: str = "fp32"

    def __post_init__(self) -> None:
        check_group(check_weights(self.weights, tuple(WEIGHTS), "an ONNX export"), self.group_size)
        if self.reference_compute not in ("fp32", "int8"):
            raise OptionError(f"unknown reference compute {self.reference_compute!r}; expected fp32 or int8")
        if self.reference_compute == "int8" and not weight_format(self.weights).quantized:
            raise OptionError(f"an int8-compute reference takes int8 or int4 weights, not {self.weights}")
        if self.prefill_chunk < 0:
            raise OptionError(f"prefill chunk must be >= 0, got {self.prefill_chunk}")
        if self.opset < 18:
            raise OptionError(f"opset must be >= 18, got {self.opset}")
        if self.image_size is not None and self.image_size <= 0:
            raise OptionError(f"image size must be positive, got {self.image_size}")


def export_onnx(checkpoint: str | Path, out_dir: str | Path, options: OnnxOptions = OnnxOptions(),
                log: Callable[[str], None] = print) -> Manifest:
    """Export ``checkpoint`` to ``out_dir``; returns the manifest written there."""
    checkpoint = Path(checkpoint)
    with ArtifactWriter(out_dir, log) as writer:
        opened = open_source(checkpoint, log)
        if detect(opened.tensors).family == IMAGE:
            from .vision import export_vision

            return export_vision(checkpoint, opened, writer, options, log)
        if options.image_size is not None:
            raise OptionError(f"{checkpoint} is a language model: --image-size applies to image models")
        fmt = weight_format(options.weights)
        model, sha = load_source(checkpoint, opened, log, note=f", {fmt.name} weights, {_compute(options)} compute")
        del opened  # its private copy lives on only where the model maps it (fp32 tensors)
        group = check_group(fmt, options.group_size)
        if fmt.quantized:
            with stage(log, f"quantize the projections to {fmt.name}, groups of {group}"):
                count = model.quantize_weights(fmt.bits, group, in_place=True)  # in the copy: no second one
                log(f"  {count} matrices and the embedding; the LoRA matrices stay fp32")
        if options.reference_compute == "fp32":
            with stage(log, "reference rollout (fp32 compute)"):
                build_reference(model, tokenizer_name(model)).save(writer.dir / REFERENCE)
        model = model.to(WEIGHTS[options.weights])
        manifest = _manifest(model, checkpoint, sha, options, group)
        graphs = {"step": (ContractGraph(model), STEP_ONNX)}
        if options.prefill_chunk:
            graphs["prefill"] = (ContractGraph(model, options.prefill_chunk, options.prefill_all_logits), PREFILL_ONNX)
        for role, (graph, name) in graphs.items():
            _export_graph(graph, writer.dir / name, manifest, options, log, role)
        if options.reference_compute == "int8":  # after the graphs: the rounding must not be traced into them
            with stage(log, "reference rollout and rounding spread (int8 compute: activations rounded per group)"):
                round_linear_inputs(model, group)
                reference = build_reference(model, tokenizer_name(model), spread=True)
                reference.save(writer.dir / REFERENCE)
                log_spread(log, reference.spread)
        if save_initial_state(model, writer.dir / INITIAL_STATE):
            manifest.initial_state = INITIAL_STATE
        report_commit(log, writer.out, manifest, writer.commit(manifest))
    return manifest


def _compute(options: OnnxOptions) -> str:
    return "fp16" if options.weights == "fp16" else "fp32"


def _manifest(model: RWKVModel, checkpoint: Path, sha: str, options: OnnxOptions, group: int) -> Manifest:
    import onnx
    import onnxscript

    graphs = {"step": Graph(STEP_ONNX)}
    if options.prefill_chunk:
        graphs["prefill"] = Graph(PREFILL_ONNX, chunk=options.prefill_chunk, all_logits=options.prefill_all_logits)
    return Manifest(
        kind="onnx", contract_version=CONTRACT_VERSION, architecture=model.version,
        config=model.describe(), tokenizer=tokenizer_name(model), weights=options.weights, compute=_compute(options), group_size=group,
        batch="dynamic" if options.dynamic_batch else 1,
        state=model.state_spec(),
        source={"checkpoint": str(checkpoint.resolve()), "sha256": sha}, graphs=graphs, reference=REFERENCE,
        tools={"rwkv_edge": __version__, "torch": torch.__version__, "onnx": onnx.__version__,
               "onnxscript": onnxscript.__version__, "opset": str(options.opset)},
    )


def _export_graph(graph: ContractGraph | ImageGraph, path: Path, manifest: Manifest, options: OnnxOptions,
                  log: Callable[[str], None], role: str) -> None:
    """Trace, clean up, stamp and check one graph (``path``, and ``path``.data for weights above 2 GB)."""
    batch_dim = torch.export.Dim("batch", min=1, max=4096) if options.dynamic_batch else None
    inputs = graph.example_inputs(batch=2 if batch_dim else 1)
    dynamic_shapes = graph.dynamic_shapes(batch_dim) if batch_dim else None
    with stage(log, f"export {role} graph"), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        # the exporter's registry logs one line per missing torchvision op: not ours to fix
        logging.getLogger("torch.onnx._internal.exporter._registration").setLevel(logging.ERROR)
        program = torch.onnx.export(
            graph, inputs, dynamo=True, opset_version=options.opset, optimize=False, verbose=False,
            input_names=graph.input_names(), output_names=graph.output_names(), dynamic_shapes=dynamic_shapes,
        )
    before = len(program.model.graph)
    with stage(log, f"clean up {role} graph"):
        clean_up(program.model)
    fmt = weight_format(manifest.weights)
    if fmt.quantized:
        names = quantized_weight_names(graph)
        log(f"  {to_matmul_nbits(program.model, names, fmt.bits, manifest.group_size)} MatMul -> MatMulNBits ({fmt.name})")
    fold_weight_transposes(program.model.graph)
    log(f"  {role}: {before} -> {len(program.model.graph)} nodes")
    program.model.metadata_props.update(_metadata(manifest, role))
    weights = sum(p.numel() * p.element_size() for p in graph.parameters())
    with stage(log, f"save and check {path.name}"):
        program.save(path, external_data=weights > EXTERNAL_DATA_BYTES)
        import onnx

        onnx.checker.check_model(str(path), full_check=True)


def quantized_weight_names(graph: ContractGraph) -> set[str]:
    """The graph's initializer names of the matrices ``quantize_weights`` quantized (every linear layer's)."""
    return {f"{name}.weight" for name, module in graph.named_modules() if isinstance(module, torch.nn.Linear)}


def _metadata(manifest: Manifest, role: str) -> dict[str, str]:
    return {
        "rwkv_edge.contract_version": manifest.contract_version,
        "rwkv_edge.graph": role,
        "rwkv_edge.architecture": manifest.architecture,
        "rwkv_edge.config": json.dumps(manifest.config),
        "rwkv_edge.tokenizer": manifest.tokenizer,
        "rwkv_edge.weights": manifest.weights,
        "rwkv_edge.compute": manifest.compute,
        "rwkv_edge.checkpoint_sha256": manifest.source["sha256"],
        "rwkv_edge.tools": json.dumps(manifest.tools),
    }
