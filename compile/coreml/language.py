"""``rwkv-edge compile CKPT --target ios-coreml|macos-coreml``: the PyTorch step -> model.mlpackage.

Core ML converts from the PyTorch step (``torch.jit.trace``), not from ONNX. Two forms:

- explicit state (default): ``token`` int32 (1,) and every state tensor fp32 (1, ...) in,
  ``logits`` fp32 (1, V) and every ``state_out`` tensor out, named by the contract with dots
  turned into underscores (``state_3_wkv``);
- stateful (``--stateful``, iOS 18 / macOS 15): only ``token`` in and ``logits`` out; the state
  lives in Core ML states (fp16, Core ML has no other state type) updated in place.

From iOS 18 / macOS 15 the package is multifunction: ``decode`` (1 token) and ``prefill``
(T tokens) share one copy of the weights. Before that it holds ``main``, the decode step only.

fp16 compute keeps the parts that fp16 cannot carry in fp32: every op on the WKV recurrence (any
path from a ``wkv`` state input to a ``wkv`` state output) and the normalisations, whose
variances overflow fp16 on real activations. Weights can be compressed to int8 or int4 (iOS 18 /
macOS 15): the project's quantizer (``quantize.py``) quantizes the projections and the head, and each
of those weights becomes a ``constexpr_blockwise_shift_scale`` of exactly its integers and fp16 scales,
the numbers the ONNX and TVM artifacts of the same format hold.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from torch import nn

from ... import __version__
from ...artifact import ArtifactWriter, Graph, Manifest
from ...artifact.files import INITIAL_STATE, PACKAGE, REFERENCE
from ...bundled import recorded_checkpoint
from ...contract import CONTRACT_VERSION
from ...errors import OptionError
from ...artifact.builder import build_reference, copy_tokenizer_file, load_source, open_source, report_commit, save_initial_state, stage, tokenizer_name
from ...export.graph import ContractGraph
from ...model import RWKVModel
from ...model.base import quantized_linears
from ...model.checkpoint import Checkpoint
from ...quantize import Quantized
from ...targets import coreml_name
from ...targets.coreml import import_coremltools, quiet_coremltools
from ...weights import compute_precision, weight_format
from .. import CompileRequest
from .compression import compress_blockwise, quantized_matrices
from .plan import CoreMLOptions, CoreMLPlan, ct_target
from .precision import Fp16Selector


def compile_request(source: Path, out_dir: Path, options: CoreMLOptions, request: CompileRequest,
                    log: Callable[[str], None], opened: Checkpoint) -> Manifest:
    """``compile_for`` of a language model's checkpoint (``opened``): refuses --image-size, then ``compile_coreml``."""
    if request.image_size is not None:
        raise OptionError("--image-size applies to image models; this checkpoint is a language model")
    return compile_coreml(source, out_dir, options, log, opened)


def compile_coreml(checkpoint: str | Path, out_dir: str | Path, options: CoreMLOptions = CoreMLOptions(),
                   log: Callable[[str], None] = print, opened: Checkpoint | None = None) -> Manifest:
    """Convert ``checkpoint`` (``opened`` already, or read here) to ``out_dir``/model.mlpackage +
    manifest.json; returns the manifest."""
    checkpoint, out_dir = Path(checkpoint), Path(out_dir)
    plan = options.resolve()
    build = plan.build()
    log(f"target: platform {build.platform}, deployment {build.deployment}, compute_units {build.compute_units}, "
        f"form {build.form}, functions {', '.join(build.functions)} ({build.name})")
    log(f"weights: {plan.weights}, {plan.compute} compute" + (", the WKV recurrence and norms in fp32" if compute_precision(plan.compute).half else ""))
    with ArtifactWriter(out_dir, log, reads=[checkpoint]) as writer:
        model, sha = load_source(checkpoint, opened or open_source(checkpoint, log), log)
        manifest = _manifest(model, checkpoint, sha, plan)
        matrices = _quantize(model, plan, log) if plan.compressed else {}
        with stage(log, "reference rollout (fp32 compute)") as rollout:
            build_reference(model, manifest.tokenizer, progress=rollout.progress).save(writer.dir / REFERENCE)
        parts = {}
        for function, chunk in plan.functions.items():
            with stage(log, f"convert {function}" + (f" ({chunk} tokens)" if chunk else "")):
                mlmodel = _convert(model, chunk, plan)
            if plan.compressed:
                with stage(log, f"compress {function} weights to {plan.weights}"):
                    mlmodel = compress_blockwise(mlmodel, matrices)
            _stamp(mlmodel, manifest, function)
            parts[function] = writer.scratch / f"{function}.mlpackage"
            mlmodel.save(str(parts[function]))
        with stage(log, f"save {PACKAGE}"):
            _package(parts, writer.dir / PACKAGE)
        if save_initial_state(model, writer.dir / INITIAL_STATE):
            manifest.initial_state = INITIAL_STATE
        manifest.tokenizer_file = copy_tokenizer_file(manifest.tokenizer, writer.dir)
        sha256 = writer.commit(manifest)
    size = sum(meta["bytes"] for meta in manifest.files.values())
    log(f"{PACKAGE}: {size / 1e6:.1f} MB")
    report_commit(log, writer, manifest, sha256)
    return manifest


class StatefulGraph(nn.Module):
    """tokens -> logits; the state lives in fp16 buffers that become Core ML states, updated in place."""

    def __init__(self, model: RWKVModel, chunk: int | None = None) -> None:
        super().__init__()
        self.contract = ContractGraph(model, chunk)
        self.names = [coreml_name(t.input_name) for t in self.contract.spec]
        for t, name in zip(self.contract.spec, self.names):
            self.register_buffer(name, torch.full((1, *t.shape), max(-65504.0, min(t.fill, 65504.0)), dtype=torch.float16))

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        states = [getattr(self, name).float() for name in self.names]
        logits, *new_states = self.contract(tokens, *states)
        for name, new in zip(self.names, new_states):
            getattr(self, name)[:] = new.clamp(-65504, 65504).half()  # (1, ...) fp16, in place
        return logits


def _convert(model: RWKVModel, chunk: int | None, plan: CoreMLPlan):
    """Trace one function (the single step, or ``chunk`` tokens) and convert it to an ML program."""
    ct = import_coremltools()

    graph = ContractGraph(model, chunk)
    tokens = graph.example_inputs(1)[0].to(torch.int32)
    token_input = ct.TensorType(name="token" if chunk is None else "tokens", shape=tuple(tokens.shape), dtype=np.int32)
    if plan.stateful:
        module = StatefulGraph(model, chunk).eval()
        example = (tokens,)
        inputs = [token_input]
        outputs = [ct.TensorType(name="logits", dtype=np.float32)]
        states = [ct.StateType(wrapped_type=ct.TensorType(shape=(1, *t.shape), dtype=np.float16), name=name)
                  for t, name in zip(graph.spec, module.names)]
    else:
        module = graph.eval()
        example = (tokens, *graph.example_inputs(1)[1:])
        inputs = [token_input] + [ct.TensorType(name=coreml_name(t.input_name), shape=(1, *t.shape), dtype=np.float32)
                                  for t in graph.spec]
        outputs = [ct.TensorType(name=coreml_name(name), dtype=np.float32) for name in graph.output_names()]
        states = None
    precision = (ct.transform.FP16ComputePrecision(op_selector=Fp16Selector()) if compute_precision(plan.compute).half
                 else ct.precision.FLOAT32)
    with quiet_coremltools(), torch.no_grad():
        traced = torch.jit.trace(module, example, check_trace=False)
        return ct.convert(traced, inputs=inputs, outputs=outputs, states=states, convert_to="mlprogram",
                          minimum_deployment_target=ct_target(plan.deployment), compute_precision=precision,
                          compute_units=getattr(ct.ComputeUnit, plan.compute_units), skip_model_load=True)


def _quantize(model: RWKVModel, plan: CoreMLPlan, log: Callable[[str], None]) -> dict[bytes, Quantized]:
    """Quantize the model's projections and head in place (``quantize_weights(embedding=False)``: its
    ``quantized_linears``); returns their ``quantized_matrices``."""
    fmt = weight_format(plan.weights)
    with stage(log, f"quantize the projections to {fmt.name}, groups of {plan.group_size}"):
        # Core ML compresses the matrices its converter makes consts of (compress_blockwise): the embedding,
        # a gather, keeps its precision
        linears = list(quantized_linears(model, fmt.bits, plan.group_size))
        log(f"  {len(linears)} matrices; the embedding and LoRA matrices stay fp32")
    return quantized_matrices(linears)


def _package(parts: dict[str, Path], out: Path) -> None:
    """One function: copy its package. Several: a multifunction package sharing identical weights."""
    ct = import_coremltools()

    if list(parts) == ["main"]:
        shutil.copytree(parts["main"], out)
        return
    descriptor = ct.utils.MultiFunctionDescriptor()
    for function, path in parts.items():
        descriptor.add_function(str(path), src_function_name="main", target_function_name=function)
    descriptor.default_function_name = "decode"
    with quiet_coremltools():
        ct.utils.save_multifunction(descriptor, str(out))


def _stamp(mlmodel, manifest: Manifest, function: str) -> None:
    """The contract metadata, inside the package as well as in manifest.json."""
    mlmodel.short_description = f"rwkv-edge {manifest.architecture} step ({function}), contract {manifest.contract_version}"
    mlmodel.version = __version__
    mlmodel.user_defined_metadata.update({
        "rwkv_edge.contract_version": manifest.contract_version,
        "rwkv_edge.architecture": manifest.architecture,
        "rwkv_edge.config": json.dumps(manifest.config),
        "rwkv_edge.tokenizer": manifest.tokenizer,
        "rwkv_edge.form": manifest.target.form,
        "rwkv_edge.checkpoint_sha256": manifest.source["sha256"],
    })


def _manifest(model: RWKVModel, checkpoint: Path, sha: str, plan: CoreMLPlan) -> Manifest:
    ct = import_coremltools()

    graphs = {"step": Graph(PACKAGE, function=next(iter(plan.functions)))}
    if plan.prefill_chunk:
        graphs["prefill"] = Graph(PACKAGE, function="prefill", chunk=plan.prefill_chunk)
    return Manifest(
        kind="coreml", contract_version=CONTRACT_VERSION, architecture=model.version,
        config=model.describe(), tokenizer=tokenizer_name(model), weights=plan.weights, compute=plan.compute,
        group_size=plan.group_size, batch=1,
        state=model.state_spec(), source={"checkpoint": recorded_checkpoint(checkpoint), "sha256": sha},
        graphs=graphs, target=plan.build(), reference=REFERENCE,
        tools={"rwkv_edge": __version__, "torch": torch.__version__, "coremltools": ct.__version__},
    )
