"""``rwkv-edge verify``: an artifact against what its PyTorch model computes.

By default against the reference rollout the artifact carries (recorded from the fp32 PyTorch model
when it was built): a board or phone with only the runtime and the artifact checks itself, with no
torch and no checkpoint. ``against_checkpoint`` runs the PyTorch model live beside it instead,
comparing every step's state as well, for any number of steps.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from ..architectures import IMAGE, LANGUAGE
from ..artifact import REPORTS, Artifact, open_artifact
from ..artifact.lock import reading
from ..artifact.manifest import KINDS
from ..bundled import source_checkpoint
from ..errors import ArtifactError, one_line
from ..runtime.backend import Backend
from ..runtime.registry import backend_of, entry_of_kind, resolve
from .report import (OutputErrors, ParityReport, compare_rollouts, compare_to_reference, greedy_against,
                     greedy_identity)
from ..weights import weight_format
from .build_check import BuildReport
from .checks import KindChecks
from .tolerances import beyond_judgement, tolerance_for, widened
from .vision import ImageParityReport, verify_image_artifact

GREEDY_PROMPT = 16  # tokens of the rollout that prompt greedy generation (as recorded at build time)


def verify_artifact(directory: str | Path, steps: int = 64, greedy_tokens: int = 128,
                    against_checkpoint: str | Path | bool = False, log: Callable[[str], None] = print,
                    executor: str | None = None, remote=None, expect_sha256: str | None = None) -> ParityReport | ImageParityReport:
    """Roll out ``steps`` tokens on the artifact, feeding back its own state, against the PyTorch
    model; check a prefill graph against the same tokens; compare greedy generation; save
    parity.json/.png in the artifact directory.

    ONNX artifacts run on onnxruntime. Core ML artifacts (a directory, or the .mlpackage in it) get
    a spec check, then run on Core ML (macOS) or coremltools' value inference (``executor``). TVM
    bundles run here, or on the device behind ``remote`` (a ``rpc_client.Remote``). A GPU bundle
    where its GPU is absent gets a ``BuildReport`` instead: built, not executed. ``against_checkpoint``:
    True for the checkpoint the manifest names, or a path. ``expect_sha256`` pins the manifest:
    anything else fails before a file is loaded. An image model's artifact is judged on its reference
    images instead (verify/vision.py; ``steps`` and ``greedy_tokens`` do not apply)."""
    from ..runtime.coreml_backend import artifact_directory

    directory = artifact_directory(directory)
    with reading(directory):  # no writer swaps another artifact in before the verdict is written
        artifact = open_artifact(directory, expect_sha256=expect_sha256, log=log)
        report = _judge(artifact, steps, greedy_tokens, against_checkpoint, log, executor, remote)
        _save(report, artifact, log)
    return report


def _judge(artifact: Artifact, steps: int, greedy_tokens: int, against_checkpoint: str | Path | bool,
           log: Callable[[str], None], executor: str | None, remote) -> ParityReport | ImageParityReport | BuildReport:
    """The verdict on an opened artifact (``verify_artifact``), not yet saved."""
    checks = kind_checks(artifact.manifest.kind)
    built = checks.unrunnable(artifact, remote)
    if built is not None:
        return built
    return JUDGES[artifact.manifest.family](artifact, steps, greedy_tokens, against_checkpoint, log, executor, remote,
                                            checks)


def kind_checks(kind: str) -> KindChecks:
    """What verify adds for an artifact of manifest kind ``kind`` (its backend entry's ``verify``)."""
    hooks = entry_of_kind(kind).verify
    return resolve(hooks)() if hooks is not None else KindChecks()


def _judge_rollout(artifact: Artifact, steps: int, greedy_tokens: int, against_checkpoint: str | Path | bool,
                   log: Callable[[str], None], executor: str | None, remote, checks: KindChecks) -> ParityReport:
    """A language model's artifact: its rollout, prefill graph and greedy generation against the PyTorch model's."""
    directory, manifest = artifact.directory, artifact.manifest
    tolerance = tolerance_for(manifest.weights, manifest.compute, manifest.kind)
    recorded = artifact.reference()
    if manifest.precision.integer and recorded.spread is not None:  # rounding flips at scale (docs/quantization.md)
        tolerance = widened(tolerance, recorded.spread)
    live = _live_reference(artifact, against_checkpoint, log) if against_checkpoint else None
    log(f"verify {directory}: {manifest.kind} {manifest.architecture}, {manifest.weights} weights, "
        f"{manifest.compute} compute; limits {tolerance.name}; against "
        + ("the PyTorch model, live" if live else "the PyTorch model's rollout recorded at build time"))
    log(f"loading the {manifest.kind} artifact ...")
    candidate = backend_of(artifact, executor=executor, remote=remote)
    log(f"  running on {candidate.runs_on}")
    log(f"rollout of {steps} steps ...")
    if live:
        tokens = _repeat(recorded.tokens.tolist(), steps)
        report = compare_rollouts(live, candidate, tokens, tolerance)
    else:
        tokens = recorded.tokens[:steps].tolist()
        report = compare_to_reference(recorded, candidate, steps, tolerance)
    report.what_ran.insert(0, candidate.runs_on)
    spread = recorded.spread if manifest.precision.integer else None
    if spread is not None and beyond_judgement(spread) and not report.passed:
        report.failures.append(
            f"this model's int8-compute rollout moves by {spread.logits:.2g} (logits) and {spread.state:.2g} (state) "
            "max|Δ|/std when every input it rounds moves by one ulp (reference.npz spread_*), so these failures may "
            "be rounding flips, not the kernels: a rollout cannot tell them apart; --compute fp32 bundles are "
            "verified to 1e-4")
    if candidate.chunk:
        _check_prefill(report, candidate, live, recorded)
    if greedy_tokens and report.n_steps == len(tokens):  # a broken candidate stopped the rollout early
        log(f"greedy generation of {greedy_tokens} tokens ...")
        report.add_greedy(greedy_identity(live, candidate, tokens[:GREEDY_PROMPT], greedy_tokens) if live
                          else greedy_against(recorded, candidate, greedy_tokens))
    checks.add(report, candidate, log)
    candidate.close()  # a remote device serves one session at a time
    return report


def _judge_images(artifact: Artifact, steps: int, greedy_tokens: int, against_checkpoint: str | Path | bool,
                  log: Callable[[str], None], executor: str | None, remote, checks: KindChecks) -> ImageParityReport:
    """An image model's artifact: its outputs on the reference images (``steps`` and ``greedy_tokens`` do not apply)."""
    return verify_image_artifact(artifact, against_checkpoint, remote, log, executor)


JUDGES = {LANGUAGE: _judge_rollout, IMAGE: _judge_images}  # family -> how its artifacts are judged


def _save(report: ParityReport | ImageParityReport | BuildReport, artifact: Artifact, log: Callable[[str], None]) -> None:
    """The report beside the artifact, naming the manifest it judged; where it cannot be written (a
    read-only artifact, say) one warning line, and the verdict stands."""
    try:
        paths = report.save(artifact.directory, artifact.manifest_sha256)
    except (OSError, ArtifactError) as e:
        reason = e.strerror if isinstance(e, OSError) and e.strerror else one_line(e)
        log(f"warning: the verdict is not saved: cannot write {artifact.directory / REPORTS[0]} ({reason})")
        return
    log(f"wrote {' and '.join(map(str, paths))} (manifest sha256 {artifact.manifest_sha256})")


def _live_reference(artifact: Artifact, checkpoint: str | Path | bool, log: Callable[[str], None]) -> Backend:
    """The PyTorch model of the checkpoint the artifact was made from (the manifest's, or ``checkpoint``)."""
    from ..model import load_checkpoint
    from ..runtime.torch_backend import TorchBackend

    source = source_checkpoint(artifact.manifest.source) if checkpoint is True else Path(checkpoint)
    if not source.exists():
        raise ArtifactError(f"source checkpoint {source} not found; give its path: --against-checkpoint PATH")
    log(f"loading {source} ...")
    model, sha = load_checkpoint(source)
    if sha != artifact.manifest.source["sha256"]:
        raise ArtifactError(f"{source} is not the checkpoint this artifact was made from (sha256 differs)")
    manifest = artifact.manifest
    if manifest.group_size:  # the artifact's numbers: the same quantizer on the same matrices (and activations)
        model.quantize_weights(weight_format(manifest.weights).bits, manifest.group_size,
                               activations=manifest.precision.integer,
                               embedding=KINDS[manifest.kind].quantized_embedding)
    return TorchBackend(model)


def _repeat(tokens: list[int], n: int) -> list[int]:
    return (tokens * (n // len(tokens) + 1))[:n]


def _check_prefill(report: ParityReport, candidate: Backend, live: Backend | None, recorded) -> None:
    """One call of the prefill graph must equal ``chunk`` single steps: of the live model (logits and
    state), or the recorded logits after that many steps."""
    chunk = candidate.chunk
    tokens = _repeat(recorded.tokens.tolist(), chunk)
    logits, state = candidate.run_prefill_chunk(tokens, candidate.init_state())
    logits = logits[-1] if logits.ndim == 2 else logits
    if live is not None:
        expected_logits, expected_state = live.prefill(tokens, live.init_state())
    elif chunk <= len(recorded.tokens):
        expected_logits, expected_state = recorded.logits.at(chunk - 1), {}
    else:
        report.what_ran.append(f"prefill graph ({chunk} tokens) not checked: the recorded rollout is shorter")
        return
    errors = {"logits": expected_logits}
    if report.tolerance.state_scaled is not None:
        errors.update(expected_state)
    worst = {}
    for name, expected in errors.items():
        e = OutputErrors()
        e.add(chunk - 1, expected, logits if name == "logits" else state[name])
        worst[name] = e.scaled[0]
    name = max(worst, key=worst.get)
    report.what_ran.append(f"prefill graph: {chunk} tokens in one call vs {chunk} steps of the reference; "
                           f"worst max|Δ|/std {worst[name]:.2e} ({name})")
    limit = report.tolerance.logits_scaled if name == "logits" else report.tolerance.state_scaled
    if limit is not None and not worst[name] <= limit:
        report.failures.append(f"prefill {name}: max|Δ|/std {worst[name]:.2e} exceeds {limit:.0e}")
