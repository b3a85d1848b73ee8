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
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch
from torch import nn

from .. import __version__
from ..artifact import ArtifactWriter, CoreMLBuild, Graph, Manifest
from ..contract import CONTRACT_VERSION
from ..errors import OptionError, ToolError
from ..quantize import Quantized, check_group, quantized_exactly
from ..weights import check_weights, weight_format
from ..model import RWKVModel
from ..model.checkpoint import Checkpoint
from ..architectures import IMAGE, detect
from ..targets import CoreMLTarget, coreml_name, get_target
from . import CompileRequest
from ..targets.coreml import check_compute_units, deployment_order, import_coremltools, quiet_coremltools
from ..artifact.files import INITIAL_STATE, PACKAGE, REFERENCE
from ..artifact.builder import build_reference, load_source, open_source, report_commit, save_initial_state, stage, tokenizer_name
from ..export.graph import ContractGraph

# weight format -> (compute precision, oldest iOS that runs it): fp16 and compressed weights compute in
# fp16 (with the recurrence and the norms in fp32, see Fp16Selector), fp32 weights in fp32
WEIGHTS = {"fp16": ("fp16", "iOS16"), "fp32": ("fp32", "iOS16"), "int8": ("fp16", "iOS18"), "int4": ("fp16", "iOS18")}
MULTIFUNCTION_IOS = 18  # multifunction packages (and states) need iOS 18 / macOS 15
BLOCKWISE_SPEC = 9  # Core ML spec version of iOS 18 / macOS 15: constexpr_blockwise_shift_scale
# Ops kept in fp32 under fp16 compute: normalisations and the reductions they decompose into.
FP32_OP_TYPES = frozenset({"layer_norm", "instance_norm", "batch_norm", "l2_norm", "reduce_mean", "reduce_sum",
                           "reduce_l2_norm", "reduce_sum_square", "square", "sqrt", "rsqrt", "pow"})


@dataclass(frozen=True)
class CoreMLOptions:
    target: str = "ios-coreml"
    stateful: bool = False  # Core ML states (fp16) instead of explicit fp32 state I/O
    weights: str | None = None  # the weight format (WEIGHTS); default: the target's
    compute_units: str | None = None  # ALL, CPU_ONLY, CPU_AND_GPU, CPU_AND_NE; default: the target's
    deployment: str | None = None  # minimum deployment target, e.g. "iOS18"; default: per form
    prefill_chunk: int = 16  # tokens per prefill call (multifunction packages only); 0: decode only
    group_size: int | None = None  # int8/int4: weights per scale (default: the format's)

    def resolve(self) -> "CoreMLPlan":
        """Check every option against the target; OptionError naming the first that does not fit."""
        target = get_target(self.target)
        if not isinstance(target, CoreMLTarget):
            raise OptionError(f"target {self.target!r} is not a Core ML target")
        fmt = check_weights(self.weights or target.weight_formats[0], target.weight_formats, "a Core ML package")
        deployment = target.deployment(self.stateful, self.deployment)
        if fmt.quantized and self.deployment is None:
            deployment = target.stateful_deployment  # iOS 18 / macOS 15: the first with blockwise weights
        weights, group = fmt.name, check_group(fmt, self.group_size)
        if self.prefill_chunk < 0:
            raise OptionError(f"prefill chunk must be >= 0, got {self.prefill_chunk}")
        ios = _ios_equivalent(deployment)
        compute, oldest = WEIGHTS[weights]
        if ios < deployment_order(oldest):
            raise OptionError(f"{weights} weights need iOS 18 / macOS 15; {deployment} is too old")
        multifunction = ios >= MULTIFUNCTION_IOS and self.prefill_chunk > 0
        return CoreMLPlan(target, deployment, weights, compute,
                          check_compute_units(self.compute_units or target.compute_units), self.stateful,
                          self.prefill_chunk if multifunction else 0, group)


@dataclass(frozen=True)
class CoreMLPlan:
    """Resolved options: what will be built."""

    target: CoreMLTarget
    deployment: str
    weights: str
    compute: str  # "fp16" or "fp32"
    compute_units: str
    stateful: bool
    prefill_chunk: int  # 0: a single-function package holding the decode step as "main"
    group_size: int  # int8/int4: weights per scale; 0 for float weights

    @property
    def functions(self) -> dict[str, int | None]:
        """Function name -> tokens per call (None: the single-token step)."""
        if not self.prefill_chunk:
            return {"main": None}
        return {"decode": None, "prefill": self.prefill_chunk}

    def build(self) -> CoreMLBuild:
        """The manifest's record of what is built."""
        return CoreMLBuild(self.target.name, self.target.platform, self.deployment, self.compute_units,
                           "stateful" if self.stateful else "explicit", "fp16" if self.stateful else "fp32", "int32",
                           list(self.functions))

    @property
    def compressed(self) -> bool:
        return weight_format(self.weights).quantized


def compile_target(source: Path, out_dir: Path, target: CoreMLTarget, request: CompileRequest,
                   log: Callable[[str], None] = print) -> Manifest:
    """``compile_for`` for Core ML targets: from a checkpoint only (Core ML converts the PyTorch step)."""
    if source.is_dir() or source.suffix == ".onnx":
        raise OptionError(f"{target.name}: Core ML converts from the PyTorch checkpoint, not from an ONNX export; "
                          f"give the .pth / .safetensors file (an export's manifest.json names it)")
    if not request.schedules:
        raise OptionError(f"{target.name} is a Core ML target: --no-schedules applies to TVM targets only")
    chunk = CoreMLOptions.prefill_chunk if request.prefill_chunk is None else request.prefill_chunk
    options = CoreMLOptions(target.name, request.stateful, request.weights, request.compute_units, request.deployment,
                            chunk, request.group_size)
    options.resolve()  # every option checked before the checkpoint loads
    opened = open_source(source, log)  # once: it says which family the checkpoint is
    if detect(opened.tensors).family == IMAGE:
        if request.prefill_chunk is not None:
            raise OptionError("--prefill-chunk applies to language models, not to an image model")
        from .coreml_vision import compile_vision_coreml

        return compile_vision_coreml(source, out_dir, replace(options, prefill_chunk=0), request.image_size, log,
                                     opened)
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
    log(f"weights: {plan.weights}, {plan.compute} compute" + (", the WKV recurrence and norms in fp32" if plan.compute == "fp16" else ""))
    with ArtifactWriter(out_dir, log, reads=[checkpoint]) as writer:
        model, sha = load_source(checkpoint, opened or open_source(checkpoint, log), log)
        manifest = _manifest(model, checkpoint, sha, plan)
        matrices = _quantize(model, plan, log) if plan.compressed else {}
        with stage(log, "reference rollout (fp32 compute)"):
            build_reference(model, manifest.tokenizer).save(writer.dir / REFERENCE)
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
        sha256 = writer.commit(manifest)
    size = sum(meta["bytes"] for meta in manifest.files.values())
    log(f"{PACKAGE}: {size / 1e6:.1f} MB")
    report_commit(log, writer.out, manifest, sha256)
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
    precision = (ct.transform.FP16ComputePrecision(op_selector=Fp16Selector()) if plan.compute == "fp16"
                 else ct.precision.FLOAT32)
    with quiet_coremltools(), torch.no_grad():
        traced = torch.jit.trace(module, example, check_trace=False)
        return ct.convert(traced, inputs=inputs, outputs=outputs, states=states, convert_to="mlprogram",
                          minimum_deployment_target=ct_target(plan.deployment), compute_precision=precision,
                          compute_units=getattr(ct.ComputeUnit, plan.compute_units), skip_model_load=True)


class Fp16Selector:
    """``op_selector`` of FP16ComputePrecision: True for the ops that run in fp16.

    Kept in fp32: the normalisation ops (FP32_OP_TYPES) and the ops ``region(block)`` names; by default
    the WKV recurrence, i.e. every op on a path from a ``wkv*`` state (an input, or a ``read_state``) to a
    ``wkv*`` state output (a function output, or a ``coreml_update_state``)."""

    def __init__(self, region: Callable[[object], set[int]] | None = None) -> None:
        self._region = region or _recurrence_ops
        self._fp32: dict[int, set[int]] = {}

    def __call__(self, op) -> bool:
        if op.op_type in FP32_OP_TYPES:
            return False
        block = op.enclosing_block
        if id(block) not in self._fp32:
            self._fp32[id(block)] = self._region(block)
        return id(op) not in self._fp32[id(block)]


def _recurrence_ops(block) -> set[int]:
    """ids of the ops that lie on a path from a wkv state to a wkv state output."""
    def is_wkv(name: str) -> bool:
        return "_wkv" in name  # state_3_wkv, state_out_3_wkv_num, ...

    sources = [v for name, v in block.inputs.items() if is_wkv(name)] if hasattr(block, "inputs") else []
    sinks = [v for v in block.outputs if is_wkv(v.name)]
    for op in block.operations:
        if op.op_type == "read_state" and is_wkv(op.input.name):
            sources.extend(op.outputs)
        if op.op_type == "coreml_update_state" and is_wkv(op.state.name):
            sinks.append(op.value)
    downstream, stack = set(), [op for v in sources for op in v.child_ops]
    while stack:
        op = stack.pop()
        if id(op) not in downstream:
            downstream.add(id(op))
            stack.extend(child for out in op.outputs for child in out.child_ops)
    upstream, stack = set(), [v.op for v in sinks if v.op is not None]
    while stack:
        op = stack.pop()
        if id(op) not in upstream:
            upstream.add(id(op))
            stack.extend(v.op for v in op.get_flattened_inputs() if v.op is not None)
    return downstream & upstream


def _quantize(model: RWKVModel, plan: CoreMLPlan, log: Callable[[str], None]) -> dict[bytes, Quantized]:
    """Quantize the model's projections and head in place (``quantize_weights``); returns
    ``quantized_matrices``."""
    fmt = weight_format(plan.weights)
    with stage(log, f"quantize the projections to {fmt.name}, groups of {plan.group_size}"):
        # Core ML compresses the matrices its converter makes consts of (compress_blockwise): the embedding,
        # a gather, keeps its precision
        count = model.quantize_weights(fmt.bits, plan.group_size, embedding=False)
        log(f"  {count} matrices; the embedding and LoRA matrices stay fp32")
    return quantized_matrices(model, fmt.bits, plan.group_size)


def quantized_matrices(model: nn.Module, bits: int, group: int) -> dict[bytes, Quantized]:
    """The quantizations of ``model``'s (already quantized) ``nn.Linear`` weights, keyed by the fp16 bytes of
    the dequantized matrix: the value its Core ML const holds."""
    found = {}
    for module in model.modules():
        if isinstance(module, nn.Linear):
            weight = module.weight.detach().numpy()  # (N, K): exactly a dequantized matrix now
            found[weight.astype(np.float16).tobytes()] = quantized_exactly(weight, bits, group)
    return found


def compress_blockwise(mlmodel, matrices: dict[bytes, Quantized]):
    """Every const weight that is one of ``matrices`` (fp16) -> ``constexpr_blockwise_shift_scale`` of its
    integers and scales. ToolError if one of them is not found (the converter changed the weights)."""
    from coremltools.converters.mil import Builder as mb
    from coremltools.converters.mil.mil import types
    from coremltools.converters.mil.mil.passes.graph_pass import AbstractGraphPass
    from coremltools.models.utils import _apply_graph_pass  # coremltools' own compressors apply passes so

    replaced: set[bytes] = set()

    class Blockwise(AbstractGraphPass):
        def apply(self, prog) -> None:
            for function in prog.functions.values():
                for op in list(function.operations):
                    value = op.outputs[0].val if op.op_type == "const" else None
                    if not isinstance(value, np.ndarray) or value.ndim != 2:
                        continue
                    key = value.astype(np.float16).tobytes()
                    q = matrices.get(key)
                    if q is None or q.values.shape != value.shape:
                        continue
                    replaced.add(key)
                    data = q.values.astype(types.np_int4_dtype) if q.bits == 4 else q.values
                    with function:
                        # the const's own dtype: fp32 where a linear stays in fp32 (fp32 scales hold the fp16 ones)
                        new = mb.constexpr_blockwise_shift_scale(data=data, scale=q.scales.astype(value.dtype), before_op=op,
                                                                 name=f"{op.name}_{q.bits}bit")
                    function.replace_uses_of_var_after_op(anchor_op=op, old_var=op.outputs[0], new_var=new)
                    function.remove_ops([op])

    with quiet_coremltools():
        compressed = _apply_graph_pass(mlmodel, Blockwise(), spec_version=BLOCKWISE_SPEC)
    if len(replaced) != len(matrices):
        raise ToolError(f"coremltools changed {len(matrices) - len(replaced)} of the {len(matrices)} quantized "
                        "matrices on conversion; they cannot be stored as the quantizer's numbers")
    return compressed


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
        state=model.state_spec(), source={"checkpoint": str(checkpoint.resolve()), "sha256": sha},
        graphs=graphs, target=plan.build(), reference=REFERENCE,
        tools={"rwkv_edge": __version__, "torch": torch.__version__, "coremltools": ct.__version__},
    )


def ct_target(deployment: str):
    ct = import_coremltools()

    return getattr(ct.target, deployment)


def _ios_equivalent(deployment: str) -> int:
    """Core ML feature level of a deployment target, as an iOS version (macOS 15 ~ iOS 18)."""
    n = deployment_order(deployment)
    return n + 3 if deployment.startswith("macOS") else n
