"""``rwkv-edge export onnx``: checkpoint -> model.onnx (+ prefill.onnx) + manifest.json.

Stages: load the checkpoint, trace the step graph with torch.export and the onnxscript-based
exporter, clean it up (onnxscript optimizer: constant folding, redundant Reshape/Cast/Unsqueeze
removed), stamp the contract metadata, check it with ``onnx.checker`` (full check), then move the
files into place. Everything is written beside the output directory and swapped in whole when it
is complete (``artifact/writer.py``): an earlier artifact there stays intact until that moment,
and after an error or an interruption. Which graphs a checkpoint becomes is its family's exporter's
(``EXPORTERS``: ``language.py``, ``vision.py``); tracing one is ``trace.py``'s.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from ..architectures import IMAGE, LANGUAGE, detect
from ..artifact import ArtifactWriter, Manifest
from ..artifact.builder import open_source
from ..model.checkpoint import Checkpoint
from .language import export_language
from .options import OnnxOptions
from .vision import export_vision

# (checkpoint, opened, writer, options, log) -> the manifest committed; ``opened`` is the exporter's to empty
Exporter = Callable[[Path, Checkpoint, ArtifactWriter, OnnxOptions, Callable[[str], None]], Manifest]
EXPORTERS: dict[str, Exporter] = {LANGUAGE: export_language, IMAGE: export_vision}  # family -> its exporter


def export_onnx(checkpoint: str | Path, out_dir: str | Path, options: OnnxOptions = OnnxOptions(),
                log: Callable[[str], None] = print) -> Manifest:
    """Export ``checkpoint`` to ``out_dir``; returns the manifest written there."""
    checkpoint = Path(checkpoint)
    with ArtifactWriter(out_dir, log) as writer:
        opened = open_source(checkpoint, log)
        options = options.for_source(opened.stored)
        return EXPORTERS[detect(opened.tensors).family](checkpoint, opened, writer, options, log)
