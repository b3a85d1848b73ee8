"""``rwkv-edge compile`` of an image model's ONNX export: the whole-image graph -> a TVM CPU bundle.

What differs from the language models' step bundle (compile/tvm/language.py; the import, optimisation,
build, link and params pieces this reuses): one function, ``main(images (1, 3, H, W) float32,
weights...) -> logits (1, classes)`` (or features), no state, no prefill, no vocabulary. On CPU
targets with the project's schedules (``cpu_image_module``):

- each layer's Bi-WKV (two doubling scans, ~250 graph nodes) is cut out of the ONNX graph
  (``bi_wkv_graph.py``) and computed by one O(T) kernel (``bi_wkv.py``);
- the patch convolution becomes a matmul over the patches (``patches.py``);
- the projections of all T tokens, and that matmul, get the project's packed GEMMs (``gemm.py``); the
  Q-shift, mixes and gates get the CPU schedules' elementwise rule (``schedules.py``); norms and the
  head are TVM's default lowering.

Nothing is fused (``FUSE``): with the scans as graph ops, fusion made them the epilogue of the k/v
GEMMs, whose schedule inlines its producers, and each doubling step's two reads recomputed the steps
before it (VRWKV-T: 9.05 s per image instead of 0.51 s); with the kernel, fusing the rest measured
slower than not (0.056 s vs 0.047 s). VRWKV-T at 224 px, one thread: 0.030 s per image against
onnxruntime's 0.053 s (the build before the kernel: 0.116 s; docs/vision.md, "The bench"). GPU targets
take the graph as it is.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from ... import __version__
from ...artifact import ArtifactWriter, Graph, Manifest
from ...artifact.files import LIBRARY, OBJECTS, PARAMS, REFERENCE
from ...artifact.params import save_params
from ...contract import IMAGE_GRAPH
from ...errors import OptionError
from ...artifact.builder import report_commit, stage
from ...targets import GpuTarget, TvmTarget
from ...weights import weight_format
from .cpu import build
from .gpu import build_gpu
from .importer import import_graph
from .link import export_library
from .options import TvmOptions
from .record import target_record
from .source import OnnxExport
from .tuning import ScheduleParams

if TYPE_CHECKING:
    import tvm


FUSE = False  # one kernel per op (the module docstring says why)


def cpu_image_module(path: Path, target: TvmTarget, options: TvmOptions,
                     log: Callable[[str], None]) -> tuple[tvm.IRModule, dict[str, int]]:
    """The image graph at ``path`` in Relax as the CPU build takes it: with the project's schedules, each
    Bi-WKV one kernel (``bi_wkv.py``) and the patch convolution a matmul (``patches.py``); returns the
    module and those counts."""
    from .bi_wkv import splice_bi_wkvs
    from .bi_wkv_graph import BiWkvCut, cut_bi_wkvs
    from .patches import patches_as_matmul

    if not options.schedules:
        return import_graph(path, log), {}
    cuts: list[BiWkvCut] = []
    mod = import_graph(path, log, rewrite=lambda proto: cuts.extend(cut_bi_wkvs(proto)))
    vector = ScheduleParams(**target.schedule_data(options.weights)["params"]).vector
    mod = splice_bi_wkvs(mod, cuts, vector)
    mod, patches = patches_as_matmul(mod)
    log(f"  Bi-WKV: {len(cuts)} cut from the graph, one kernel each; patch convolution: {patches} matmul")
    return mod, {"bi-wkv kernels": len(cuts), "patch matmul": patches}


def build_image_bundle(export: OnnxExport, writer: ArtifactWriter, target: TvmTarget | GpuTarget, options: TvmOptions,
                       linker: Callable | None, log: Callable[[str], None]) -> Manifest:
    """Build ``export``'s image graph for ``target`` into ``writer`` and commit it (``linker``:
    ``link.find_linker``'s)."""
    import tvm

    onnx = export.artifact
    if not weight_format(options.weights).full_precision:
        raise OptionError(f"image models compile with fp32 weights, not {options.weights}")
    log(f"target {target.name}: {target.tvm_target()}, image graph {onnx.manifest.config['image_size']} px, "
        f"schedules {'on' if options.schedules else 'off (TVM default lowering)'}")
    if isinstance(target, GpuTarget):
        mod = import_graph(onnx.graph(IMAGE_GRAPH), log)
        executable, counts, params = build_gpu(mod, target, options.weights, writer.dir, log, image=True)
    else:
        mod, kernels = cpu_image_module(onnx.graph(IMAGE_GRAPH), target, options, log)
        executable, counts, params = build(mod, target, options, log, fuse=FUSE)
        counts = {**kernels, **counts}
    library = LIBRARY if linker is not None else OBJECTS
    with stage(log, f"link {library}"):
        export_library(executable, writer.dir / library, linker)
    with stage(log, f"write {PARAMS}: {len(params)} weights, {sum(v.nbytes for v in params) / 1e6:.1f} MB"):
        save_params(params, writer.dir / PARAMS)
    shutil.copy2(onnx.path(onnx.manifest.reference), writer.dir / REFERENCE)
    m = onnx.manifest
    manifest = Manifest(
        kind="tvm", contract_version=m.contract_version, architecture=m.architecture, config=m.config,
        tokenizer=m.tokenizer, weights=options.weights, compute="fp32", group_size=0, batch=1, state=[],
        source=m.source, graphs={IMAGE_GRAPH: Graph(library, function="main", params=PARAMS, num_params=len(params))},
        tools={**m.tools, "rwkv_edge": __version__, "tvm": tvm.__version__}, reference=REFERENCE,
        target=target_record(target, options, library, counts),
    )
    report_commit(log, writer, manifest, writer.commit(manifest))
    return manifest
