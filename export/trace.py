"""One graph module -> a checked ONNX file: traced with torch.export and the onnxscript-based exporter,
cleaned up, int8/int4 matrices as MatMulNBits, stamped with the manifest's metadata, checked in full.
What every exporter of the stage shares."""

from __future__ import annotations

import json
import logging
import warnings
from collections.abc import Callable
from pathlib import Path

import torch

from ..artifact import Manifest
from ..artifact.builder import stage
from ..weights import weight_format
from .cleanup import clean_up, fold_weight_transposes
from .graph import ContractGraph, ImageGraph
from .nbits import to_matmul_nbits
from .options import OnnxOptions

# weights above this go to ``<graph>.onnx.data`` beside the graph, written one tensor at a time and mapped
# by onnxruntime and the TVM build, instead of a protobuf serialised whole in memory (and at most 2 GB)
EXTERNAL_DATA_BYTES = 256 << 20


def export_graph(graph: ContractGraph | ImageGraph, path: Path, manifest: Manifest, options: OnnxOptions,
                 log: Callable[[str], None], role: str) -> None:
    """Trace, clean up, stamp and check one graph (``path``, and ``path``.data for weights above 2 GB)."""
    batch_dim = torch.export.Dim("batch", min=1, max=4096) if options.dynamic_batch else None
    inputs = graph.example_inputs(batch=2 if batch_dim else 1)
    dynamic_shapes = graph.dynamic_shapes(batch_dim) if batch_dim else None
    with stage(log, f"export {role} graph", "torch.export, then ONNX; may take a minute"), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        # the exporter's registry logs one line per missing torchvision op: not ours to fix
        logging.getLogger("torch.onnx._internal.exporter._registration").setLevel(logging.ERROR)
        program = torch.onnx.export(
            graph, inputs, dynamo=True, opset_version=options.opset, optimize=False, verbose=False,
            input_names=graph.input_names(), output_names=graph.output_names(), dynamic_shapes=dynamic_shapes,
        )
    before = len(program.model.graph)
    fmt = weight_format(manifest.weights)
    names = quantized_weight_names(graph) if fmt.quantized else set()
    with stage(log, f"clean up {role} graph", "the onnxscript optimizer; may take a minute"):
        clean_up(program.model, keep=names)
    if fmt.quantized:
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
