"""``rwkv-edge export onnx`` of an RWKV language model: the step graph and the prefill graph of the step
contract (docs/onnx-contract.md), the reference rollout, the initial state where the checkpoint has one."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import torch

from .. import __version__
from ..artifact import ArtifactWriter, Graph, Manifest
from ..artifact.builder import (build_reference, copy_tokenizer_file, load_source, log_spread, report_commit,
                                save_initial_state, stage, tokenizer_name)
from ..artifact.files import INITIAL_STATE, PREFILL_ONNX, REFERENCE, STEP_ONNX
from ..bundled import recorded_checkpoint
from ..contract import CONTRACT_VERSION
from ..errors import OptionError
from ..model import RWKVModel
from ..model.base import round_linear_inputs
from ..model.checkpoint import Checkpoint
from ..weights import compute_precision, weight_format
from .graph import ContractGraph
from .options import WEIGHTS, OnnxOptions
from .trace import export_graph


def export_language(checkpoint: Path, opened: Checkpoint, writer: ArtifactWriter, options: OnnxOptions,
                    log: Callable[[str], None]) -> Manifest:
    """Write the step (and prefill) graphs, the reference and the manifest into ``writer`` and commit them;
    ``opened`` is emptied once the model holds its tensors."""
    if options.image_size is not None:
        raise OptionError(f"{checkpoint} is a language model: --image-size applies to image models")
    fmt = weight_format(options.weights)
    model, sha = load_source(checkpoint, opened, log, note=f", {fmt.name} weights, {_compute(options)} compute")
    opened.tensors.clear()  # its private copy lives on only where the model maps it (fp32 tensors)
    group = fmt.check_group(options.group_size)
    if opened.stored is not None:  # a quantized source (GGUF): which matrices this format holds exactly
        log(f"  {opened.stored.report(fmt.name, group)}")
    if fmt.quantized:
        with stage(log, f"quantize the projections to {fmt.name}, groups of {group}"):
            count = model.quantize_weights(fmt.bits, group, in_place=True)  # in the copy: no second one
            log(f"  {count} matrices and the embedding; the LoRA matrices stay fp32")
    if not compute_precision(options.reference_compute).integer:
        with stage(log, "reference rollout (fp32 compute)") as rollout:
            build_reference(model, tokenizer_name(model), progress=rollout.progress).save(writer.dir / REFERENCE)
    model = model.to(WEIGHTS[options.weights])
    manifest = _manifest(model, checkpoint, sha, options, group)
    graphs = {"step": (ContractGraph(model), STEP_ONNX)}
    if options.prefill_chunk:
        graphs["prefill"] = (ContractGraph(model, options.prefill_chunk, options.prefill_all_logits), PREFILL_ONNX)
    for role, (graph, name) in graphs.items():
        export_graph(graph, writer.dir / name, manifest, options, log, role)
    if compute_precision(options.reference_compute).integer:  # after the graphs: the rounding must not be traced into them
        with stage(log, "reference rollout and rounding spread (int8 compute: activations rounded per group)") as rollout:
            round_linear_inputs(model, group)
            reference = build_reference(model, tokenizer_name(model), spread=True, progress=rollout.progress)
            reference.save(writer.dir / REFERENCE)
            log_spread(log, reference.spread)
    if save_initial_state(model, writer.dir / INITIAL_STATE):
        manifest.initial_state = INITIAL_STATE
    manifest.tokenizer_file = copy_tokenizer_file(manifest.tokenizer, writer.dir)
    report_commit(log, writer, manifest, writer.commit(manifest))
    return manifest


def _compute(options: OnnxOptions) -> str:
    return weight_format(options.weights).compute.name


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
        source={"checkpoint": recorded_checkpoint(checkpoint), "sha256": sha}, graphs=graphs, reference=REFERENCE,
        tools={"rwkv_edge": __version__, "torch": torch.__version__, "onnx": onnx.__version__,
               "onnxscript": onnxscript.__version__, "opset": str(options.opset)},
    )
