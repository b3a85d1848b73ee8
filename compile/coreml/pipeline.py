"""``compile_target``: the request checked, the checkpoint opened once, then the build of its family
(``BUILDERS``: a language model's step package, an image model's whole-image package)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from ...architectures import IMAGE, LANGUAGE, detect
from ...artifact import Manifest
from ...artifact.builder import open_source
from ...model.checkpoint import Checkpoint
from ...targets import CoreMLTarget
from .. import CompileRequest
from . import image, language
from .plan import CoreMLOptions

# a checkpoint's family -> its build: (source, out_dir, options, request, log, opened checkpoint) -> the manifest
BUILDERS: dict[str, Callable[[Path, Path, CoreMLOptions, CompileRequest, Callable[[str], None], Checkpoint], Manifest]] = {
    LANGUAGE: language.compile_request,
    IMAGE: image.compile_request,
}


def compile_target(source: Path, out_dir: Path, target: CoreMLTarget, request: CompileRequest,
                   log: Callable[[str], None] = print) -> Manifest:
    """``compile_for`` for Core ML targets (the request checked by ``check_request``: from a checkpoint only,
    as Core ML converts the PyTorch step)."""
    chunk = CoreMLOptions.prefill_chunk if request.prefill_chunk is None else request.prefill_chunk
    options = CoreMLOptions(target.name, request.stateful, request.weights, request.compute_units, request.deployment,
                            chunk, request.group_size)
    options.resolve()  # every option checked before the checkpoint loads
    opened = open_source(source, log)  # once: it says which family the checkpoint is
    return BUILDERS[detect(opened.tensors).family](source, out_dir, options, request, log, opened)
