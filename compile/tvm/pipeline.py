"""``compile_tvm``: the export step (or the export given), the checks of the export against the options,
then the build of the export's family (``BUILDERS``: the step bundle of a language model, the
whole-image bundle of an image model)."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from pathlib import Path

from ...architectures import IMAGE, LANGUAGE
from ...artifact import ArtifactWriter, Manifest
from ...errors import OptionError
from ...targets import GpuTarget, TvmTarget, get_target
from ...weights import check_weights, weight_format
from .. import CompileRequest
from .image import build_image_bundle
from .language import build_language_bundle
from .link import find_linker
from ...targets.compute import resolve_compute
from .options import PREFILL_CHUNK, TvmOptions
from .source import OnnxExport, open_export

# an export's family -> its build: (export, writer, target, options, linker, log) -> the committed manifest
BUILDERS: dict[str, Callable[[OnnxExport, ArtifactWriter, TvmTarget | GpuTarget, TvmOptions, Callable | None,
                              Callable[[str], None]], Manifest]] = {
    LANGUAGE: build_language_bundle,
    IMAGE: build_image_bundle,
}


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
    linker = find_linker(target)
    with ArtifactWriter(out_dir, log, reads=[source]) as writer:
        chunk = PREFILL_CHUNK if options.prefill_chunk is None else options.prefill_chunk
        export = open_export(source, writer.scratch / "onnx", target, options, 0 if gpu else chunk, log)
        options = _check_exportable(export.artifact.manifest, export.artifact.directory, options)
        check_weights(options.weights, target.weight_formats, f"a {target.name} bundle")
        options = dataclasses.replace(options, compute=resolve_compute(target, options.compute, options.weights))
        return BUILDERS[export.artifact.manifest.family](export, writer, target, options, linker, log)


def compile_target(source: Path, out_dir: Path, target: TvmTarget | GpuTarget, request: CompileRequest,
                   log: Callable[[str], None] = print) -> Manifest:
    """``compile_for`` for TVM targets (the request checked by ``check_request``): ``compile_tvm``."""
    options = TvmOptions(target.name, schedules=request.schedules, weights=request.weights, group_size=request.group_size,
                         prefill_chunk=request.prefill_chunk, compute=request.compute)
    return compile_tvm(source, out_dir, options, log)


def _check_exportable(manifest: Manifest, directory: Path, options: TvmOptions) -> TvmOptions:
    """``options`` with the export's weight format and group size, if the export can become that bundle.

    TVM bundles compile fp32, int8 and int4 batch-1 exports: the schedules accumulate in the export's
    dtype (fp16 GEMV sums measured 6.5e-2 max|Δ|/std on the demo's state, over the fp16 limit) and pack
    one-row GEMVs. An int8/int4 bundle (CPU or GPU) takes its integers from an export in that format (the
    PyTorch reference of the export has the same quantized weights). GPU bundles store fp16 weights with
    --weights fp16, from the fp32 export."""
    half = manifest.weight_format.compute.half
    if half or manifest.batch != 1:
        what = f"{manifest.weights} weights" if half else f"batch {manifest.batch}"
        raise OptionError(f"{directory}: an export with {what}; TVM bundles compile fp32, int8 or int4 batch-1 exports "
                          f"(`rwkv-edge export onnx` without --weights fp16 / --dynamic-batch, or give the checkpoint)")
    weights = options.weights or manifest.weights
    quantized = weight_format(weights).quantized or manifest.weight_format.quantized
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
