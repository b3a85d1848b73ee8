"""``rwkv-edge verify``: an artifact against what its PyTorch model computes.

By default against the reference rollout the artifact carries (recorded from the fp32 PyTorch model
when it was built): a board or phone with only the runtime and the artifact checks itself, with no
torch and no checkpoint. ``against_checkpoint`` runs the PyTorch model live beside it instead,
comparing every step's state as well, for any number of steps.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np

from ..artifact import REPORTS, Artifact, Manifest, open_artifact
from ..artifact.lock import reading
from ..errors import ArtifactError, one_line
from ..runtime.backend import Backend
from ..runtime.registry import backend_of
from .report import (OutputErrors, ParityReport, compare_rollouts, compare_to_reference, greedy_against,
                     greedy_identity)
from ..weights import weight_format
from .build_check import BuildReport, check_gpu_build
from .tolerances import beyond_judgement, tolerance_for, widened
from .vision import ImageParityReport

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
    directory, manifest = artifact.directory, artifact.manifest
    if manifest.kind == "tvm" and remote is None and (why := _gpu_absent(manifest)):
        return check_gpu_build(artifact, why)
    if manifest.is_vision:
        from .vision import verify_image_artifact

        return verify_image_artifact(artifact, against_checkpoint, remote, log, executor)
    tolerance = tolerance_for(manifest.weights, manifest.compute, manifest.kind)
    recorded = artifact.reference()
    if manifest.compute == "int8" and recorded.spread is not None:  # rounding flips at scale (docs/quantization.md)
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
    spread = recorded.spread if manifest.compute == "int8" else None
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
    if manifest.kind in KIND_CHECKS:
        KIND_CHECKS[manifest.kind](report, candidate, log)
    candidate.close()  # a remote device serves one session at a time
    return report


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

    source = Path(artifact.manifest.source["checkpoint"] if checkpoint is True else checkpoint)
    if not source.is_file():
        raise ArtifactError(f"source checkpoint {source} not found; give its path: --against-checkpoint PATH")
    log(f"loading {source} ...")
    model, sha = load_checkpoint(source)
    if sha != artifact.manifest.source["sha256"]:
        raise ArtifactError(f"{source} is not the checkpoint this artifact was made from (sha256 differs)")
    manifest = artifact.manifest
    if manifest.group_size:  # the artifact's numbers: the same quantizer on the same matrices (and activations)
        model.quantize_weights(weight_format(manifest.weights).bits, manifest.group_size,
                               activations=manifest.compute == "int8", embedding=manifest.kind != "coreml")
    return TorchBackend(model)


def _gpu_absent(manifest: Manifest) -> str | None:
    """Why a GPU bundle cannot run here (None for CPU bundles and where the GPU is present)."""
    target = manifest.target
    if target.device == "cpu":
        return None
    from ..platforms import gpu_unavailable

    return gpu_unavailable(target.device, target.arch, target.triple)


def _check_coreml_spec(report: ParityReport, candidate, log: Callable[[str], None]) -> None:
    """A Core ML package's interface and ops against the contract (runs on any OS)."""
    from ..runtime.coreml_mil import MilProgram
    from .coreml_spec import check_spec

    program = MilProgram(candidate.package)
    spec_check = check_spec(candidate.manifest, program.spec, program.program)
    log(spec_check.summary())
    report.what_ran.insert(1, spec_check.summary())
    report.failures[:0] = [f"spec: {problem}" for problem in spec_check.problems]
    report.details["ops"] = spec_check.ops


def _time_decode(report: ParityReport, candidate, log: Callable[[str], None]) -> None:
    """The decode step's latency where a TVM bundle ran (a figure from an emulator says nothing about the hardware)."""
    log("timing the decode step ...")
    times = candidate.time_decode()
    median = float(np.median(times))
    report.details["decode_ms"] = {"median": median, "min": min(times), "max": max(times), "samples": times,
                                   "where": candidate.where, "method": "TVM time_evaluator, 20 x mean of 5 calls"}
    caveat = "; if that device is emulated, this is not its hardware's speed" if candidate.remote else ""
    report.what_ran.append(f"decode step timed on {candidate.where}: median {median:.3f} ms "
                           f"(TVM time_evaluator, 20 x 5 calls{caveat})")
    log(report.what_ran[-1])


KIND_CHECKS = {"coreml": _check_coreml_spec, "tvm": _time_decode}  # what a kind's report adds


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
