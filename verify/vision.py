"""``rwkv-edge verify`` of an image model's artifact: its outputs on the reference images against the
PyTorch model's.

By default against the outputs recorded when the artifact was built (reference.npz: REFERENCE_IMAGES
seeded synthetic images and the fp32 model's logits or features), so a device with the runtime alone
checks itself; ``against_checkpoint`` runs the PyTorch model live on the same images instead. Per
image: ``max|Δ|``, ``max|Δ|/std(ref)`` (verify/report.py's OutputErrors), and for logits whether the
top-1 class and the top-5 set agree. The limits (verify/tolerances.py, IMAGE_TOLERANCES) judge the
worst scaled error and the agreement fractions; parity.json is written beside the artifact.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from ..artifact import Artifact
from ..artifact.reference import VisionReference
from ..atomic import atomic_path
from ..bundled import source_checkpoint
from ..errors import ArtifactError, printable
from ..runtime.vision import open_vision
from .report import OutputErrors, Verdict, finite_or_none, sci
from .tolerances import ImageTolerance, image_tolerance_for

TOP_K = 5


@dataclass
class ImageParityReport(Verdict):
    """The verdict on an image artifact and the numbers behind it (one entry per reference image)."""

    reference: str
    candidate: str
    tolerance: ImageTolerance
    output: str  # "logits" or "features"
    errors: OutputErrors = field(default_factory=OutputErrors)
    top1: list[bool] = field(default_factory=list)  # per image; empty for features
    top5: list[bool] = field(default_factory=list)  # per image: the same set of the top min(5, classes) classes
    failures: list[str] = field(default_factory=list)
    what_ran: list[str] = field(default_factory=list)

    @property
    def worst_scaled(self) -> float:
        """The largest max|Δ|/std(ref) over the images, NaN first."""
        values = np.asarray(self.errors.scaled)
        return float(values[np.isnan(values)][0] if np.isnan(values).any() else values.max())

    def judge(self) -> None:
        """Record a failure for each limit missed."""
        t, n = self.tolerance, len(self.errors.scaled)
        if not self.worst_scaled <= t.output_scaled:  # `not <=`: NaN fails
            image = int(np.nanargmax(self.errors.scaled)) if not np.isnan(self.worst_scaled) else \
                int(np.flatnonzero(np.isnan(self.errors.scaled))[0])
            self.failures.append(f"{self.output}: max|Δ|/std {sci(self.worst_scaled)} on image {image} exceeds "
                                 f"{sci(t.output_scaled)}")
        for name, agree, limit in (("top-1", self.top1, t.top1), ("top-5", self.top5, t.top5)):
            if agree and sum(agree) / n < limit:
                self.failures.append(f"{name} agreement {sum(agree)}/{n} is below {limit:.1%}; first disagreement "
                                     f"on image {agree.index(False)}")

    def to_json(self) -> dict:
        n = len(self.errors.scaled)
        return {
            "reference": self.reference, "candidate": self.candidate, "limits": self.tolerance.name,
            "passed": self.passed, "failures": list(self.failures), "what_ran": list(self.what_ran),
            "tolerance": asdict(self.tolerance), "n_images": n,
            "top1": {"agreement": sum(self.top1) / n if self.top1 else None, "per_image": list(self.top1)},
            "top5": {"agreement": sum(self.top5) / n if self.top5 else None, "per_image": list(self.top5)},
            "outputs": {self.output: {metric: [finite_or_none(v) for v in values]
                                      for metric, values in asdict(self.errors).items()}},
        }

    def save(self, directory: str | Path, manifest_sha256: str | None = None) -> list[Path]:
        """parity.json in ``directory``, atomically, naming the manifest judged (an older parity.png
        would not show this report: removed)."""
        path = Path(directory) / "parity.json"
        with atomic_path(path) as tmp:
            record = {**self.to_json(), "manifest_sha256": manifest_sha256}
            tmp.write_text(json.dumps(record, indent=1, allow_nan=False) + "\n", encoding="utf-8")
        (Path(directory) / "parity.png").unlink(missing_ok=True)
        return [path]

    def summary(self) -> str:
        t, n = self.tolerance, len(self.errors.scaled)
        lines = [f"{'PASS' if self.passed else 'FAIL'}  {self.candidate} vs {self.reference}, {t.name}, {n} images "
                 f"(limits: max|Δ|/std {sci(t.output_scaled)}"
                 + (f"; top-1 >= {t.top1:.1%}, top-5 >= {t.top5:.1%})" if self.top1 else ")")]
        lines += [f"  - {failure}" for failure in self.failures]
        lines.append(f"  {self.output:<10} max|Δ|/std {sci(self.worst_scaled)}, max|Δ| {sci(max(self.errors.max_abs))}")
        if self.top1:
            lines.append(f"  top-1      {sum(self.top1)}/{n} images agree")
            lines.append(f"  top-5      {sum(self.top5)}/{n} images agree (same set)")
        return "\n".join(map(printable, lines))  # manifest text escaped: one line stays one line


def compare_images(reference: np.ndarray, candidate: np.ndarray, report: ImageParityReport) -> None:
    """Fill ``report`` from the outputs of both sides on the same images, (N, ...) each."""
    if candidate.shape != reference.shape:
        report.failures.append(f"{report.output}: shape {candidate.shape}, the reference has {reference.shape}")
        return
    for i, (ref, cand) in enumerate(zip(reference, candidate)):
        report.errors.add(i, ref, cand)
        if report.output == "logits":
            k = min(TOP_K, ref.size)
            report.top1.append(bool(np.argmax(ref) == np.argmax(cand)))
            report.top5.append(set(np.argsort(-ref)[:k].tolist()) == set(np.argsort(-cand)[:k].tolist()))
    report.judge()


def verify_image_artifact(artifact: Artifact, against_checkpoint: str | Path | bool = False, remote=None,
                          log: Callable[[str], None] = print, executor: str | None = None) -> ImageParityReport:
    """Run ``artifact`` (an image model's, opened and hashed) on its reference images and judge it;
    ``executor``: Core ML's (runtime/vision.py)."""
    manifest = artifact.manifest
    tolerance = image_tolerance_for(manifest.weights, manifest.compute, manifest.kind)
    recorded = artifact.vision_reference()
    log(f"verify {artifact.directory}: {manifest.kind} {manifest.architecture}, {manifest.weights} weights, "
        f"{manifest.compute} compute; limits {tolerance.name}; against "
        + ("the PyTorch model, live" if against_checkpoint else "the PyTorch model's outputs recorded at build time"))
    expected = _live(artifact, recorded, against_checkpoint, log) if against_checkpoint else recorded.output
    runner = open_vision(artifact, remote=remote, executor=executor)
    log(f"  running on {runner.runs_on}")
    try:
        got = runner.run(recorded.images)
    finally:
        runner.close()  # a remote device serves one session at a time
    report = ImageParityReport("pytorch (live)" if against_checkpoint else "pytorch (recorded)",
                               f"{manifest.kind} ({runner.runs_on})", tolerance, recorded.name)
    report.what_ran += [runner.runs_on, (f"{len(recorded.images)} reference images, "
                                         f"{recorded.images.shape[-1]} x {recorded.images.shape[-2]} px")]
    compare_images(expected, got, report)
    return report


def _live(artifact: Artifact, recorded: VisionReference, checkpoint: str | Path | bool,
          log: Callable[[str], None]) -> np.ndarray:
    """The fp32 PyTorch model of the artifact's checkpoint (the manifest's, or ``checkpoint``) on the images,
    with the artifact's quantized weights where it has them."""
    import torch

    from ..model import VisionRWKV
    from ..model.base import quantize_linears
    from ..weights import weight_format
    from ..model.sources import open_checkpoint
    from ..model.threads import image_threads, torch_threads

    source = source_checkpoint(artifact.manifest.source) if checkpoint is True else Path(checkpoint)
    if not source.is_file():
        raise ArtifactError(f"source checkpoint {source} not found; give its path: --against-checkpoint PATH")
    log(f"loading {source} ...")
    opened = open_checkpoint(source)
    if opened.sha256 != artifact.manifest.source["sha256"]:
        raise ArtifactError(f"{source} is not the checkpoint this artifact was made from (sha256 differs)")
    model = VisionRWKV.from_state_dict(opened.tensors, torch.float32, str(source), opened.meta)
    model = model.at_resolution(artifact.manifest.config["image_size"])
    fmt = weight_format(artifact.manifest.weights)
    if fmt.quantized:  # the quantizer's numbers, as the artifact holds them
        quantize_linears(model, fmt.bits, artifact.manifest.group_size)
    with torch.inference_mode(), torch_threads(image_threads(model, recorded.images.shape)):
        return model(torch.from_numpy(recorded.images)).float().numpy()
