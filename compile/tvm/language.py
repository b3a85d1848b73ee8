"""The step bundle of a language model: the export's step graph (``main``), its prefill graph
(``prefill``, CPU targets), ``initial_state()`` and ``interface()`` in one library, the weights in
``params.safetensors``, with the export's reference rollout, trained initial state and the
tokenizer's vocabulary file (the package docstring lists the bundle)."""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path

from ... import __version__
from ...artifact import Artifact, ArtifactWriter, Graph, Manifest
from ...artifact.files import INITIAL_STATE, LIBRARY, OBJECTS, PARAMS, REFERENCE
from ...artifact.params import save_params
from ...bundled import source_checkpoint
from ...errors import ArtifactError, OptionError
from ...artifact.builder import copy_tokenizer_file, report_commit, stage
from ...targets import GpuTarget, TvmTarget
from ...weights import weight_format
from .cpu import build
from .gather_warnings import without_gather_warnings
from .gpu import build_gpu
from .importer import import_graph
from .link import export_library
from .options import PREFILL_CHUNK, TvmOptions
from .record import schedule_data, target_record
from .source import OnnxExport


def build_language_bundle(export: OnnxExport, writer: ArtifactWriter, target: TvmTarget | GpuTarget, options: TvmOptions,
                          linker: Callable | None, log: Callable[[str], None]) -> Manifest:
    """Build ``export``'s step graph (and its prefill graph, where the bundle takes one) for ``target`` into
    ``writer`` and commit it (``linker``: ``link.find_linker``'s)."""
    onnx, gpu = export.artifact, isinstance(target, GpuTarget)
    log(f"target {target.name}: {target.tvm_target()}, {options.weights} weights, {options.compute} compute, schedules "
        f"{schedule_data(target, options)['params'] if options.schedules else 'off (TVM default lowering)'}")
    from .params import WeightTable

    step = onnx.graph("step")
    table = WeightTable()
    mod = _add_initial_state(import_graph(step, log, table=table), onnx.initial_state(), onnx.manifest)
    rows = _embedding_rows(step)
    prefill = _prefill_graph(onnx, options, gpu, log)
    recurrences = 0
    if prefill is not None:
        prefill_mod, recurrences = prefill_module(onnx.graph("prefill"), target, options, table, log)
        mod = _add_prefill(mod, prefill_mod)
    bundle = writer.dir
    if gpu:
        with without_gather_warnings():
            executable, counts, params = build_gpu(mod, target, options.weights, bundle, log,
                                                   group=options.group_size or 0, vocab_size=rows, table=table)
    else:
        executable, counts, params = build(mod, target, options, log, vocab_size=rows, table=table)
    if recurrences:
        counts["wkv7 kernels"] = recurrences
    library = LIBRARY if linker is not None else OBJECTS
    with stage(log, f"link {library}"):
        export_library(executable, bundle / library, linker)
    with stage(log, f"write {PARAMS}: {len(params)} weights, {sum(v.nbytes for v in params) / 1e6:.1f} MB"):
        save_params(params, bundle / PARAMS)
    vocabulary = _copy_extras(onnx, bundle)
    if options.integer_compute and not export.int8_reference:
        _int8_reference(onnx.manifest, bundle / REFERENCE, log)
    manifest = _manifest(onnx.manifest, target, options, library, counts, params, prefill)
    manifest.tokenizer_file = vocabulary
    report_commit(log, writer, manifest, writer.commit(manifest))
    if target.link_note and library == OBJECTS:
        log(f"note: {target.link_note}")
    if gpu:
        log(f"built, not executed: {manifest.target.executed}")
    return manifest


def _int8_reference(onnx_manifest: Manifest, path: Path, log: Callable[[str], None]) -> None:
    """Replace the export's reference rollout with the int8-compute model's: the checkpoint with the same
    quantized weights, each projection rounding its input per group (``quantize_weights(activations=True)``),
    with its rounding spread (``build_reference(spread=True)``)."""
    from ...artifact.builder import build_reference, log_spread, tokenizer_name
    from ...model import load_checkpoint

    checkpoint = source_checkpoint(onnx_manifest.source)
    if not checkpoint.exists():
        raise ArtifactError(f"int8 compute needs the export's checkpoint for its reference rollout: {checkpoint} is "
                            "not there (compile the checkpoint itself, or --compute fp32)")
    with stage(log, "reference rollout and rounding spread (int8 compute: activations rounded per group)") as rollout:
        model, sha = load_checkpoint(checkpoint)
        if sha != onnx_manifest.source["sha256"]:
            raise ArtifactError(f"{checkpoint} is not the checkpoint the export was made from (sha256 differs)")
        model.quantize_weights(weight_format(onnx_manifest.weights).bits, onnx_manifest.group_size, activations=True)
        reference = build_reference(model, tokenizer_name(model), spread=True, progress=rollout.progress)
        reference.save(path)
        log_spread(log, reference.spread)


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


def prefill_module(path: Path, target: TvmTarget, options: TvmOptions, table, log: Callable[[str], None]) -> tuple:
    """The prefill graph in Relax and how many of its recurrences run as one kernel each (``wkv7.py``: RWKV-7
    with the project's schedules; without them, or another family, the graph's unrolled ops and 0)."""
    from .tuning import ScheduleParams
    from .wkv7 import splice_wkv7s
    from .wkv7_graph import Wkv7Cut, cut_wkv7s

    if not options.schedules:
        return import_graph(path, log, table=table), 0
    cuts: list[Wkv7Cut] = []
    mod = import_graph(path, log, table=table, rewrite=lambda proto: cuts.extend(cut_wkv7s(proto)))
    if cuts:
        mod = splice_wkv7s(mod, cuts, ScheduleParams(**target.schedule_data(options.weights)["params"]).vector)
        log(f"  prefill: {len(cuts)} WKV-7 recurrences cut from the graph, one kernel each")
    return mod, len(cuts)


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


def _copy_extras(onnx: Artifact, bundle: Path) -> str | None:
    """The export's reference rollout (the same model's), the trained initial state where there is
    one, and the tokenizer's vocabulary file (its name returned: the manifest's ``tokenizer_file``)."""
    shutil.copy2(onnx.path(onnx.manifest.reference), bundle / REFERENCE)
    if onnx.manifest.initial_state:
        shutil.copy2(onnx.path(onnx.manifest.initial_state), bundle / INITIAL_STATE)
    return copy_tokenizer_file(onnx.manifest.tokenizer, bundle)


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
