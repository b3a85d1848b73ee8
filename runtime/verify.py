"""``rwkv-edge verify``: an exported artifact against the PyTorch model it came from."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np

from ..artifact import Artifact, Manifest, open_artifact
from ..errors import ArtifactError, OptionError
from ..model import load_checkpoint
from ..model.tokenizer import load_tokenizer
from .backend import Backend, TorchBackend
from .ort_backend import OrtBackend
from .parity import ParityReport, compare_rollouts, greedy_identity

# Text for the rollout when the artifact's tokenizer is at hand: activations of real input.
ROLLOUT_TEXT = (
    "import os\n\n\nclass Reader:\n    def __init__(self, path):\n        self.path = path\n\n"
    "    def read(self):\n        with open(self.path) as f:\n            return f.read()\n"
)


def verify_artifact(directory: str | Path, steps: int = 64, greedy_tokens: int = 128,
                    checkpoint: str | Path | None = None, log: Callable[[str], None] = print,
                    executor: str | None = None, remote=None, expect_sha256: str | None = None) -> ParityReport:
    """Roll out ``steps`` tokens on the artifact and on the PyTorch model, each on its own state;
    check the prefill graph against single steps; compare greedy generation; save parity.json/.png.

    ONNX artifacts run on onnxruntime. Core ML artifacts (a directory, or the .mlpackage in it) get
    a spec check, then run on Core ML (macOS) or coremltools' value inference (``executor``). TVM
    bundles run here, or on the device behind ``remote`` (a ``tvm_backend.Remote``: RPC server or tracker).
    A GPU bundle where its GPU is absent gets a ``BuildReport`` instead: built, not executed.
    ``expect_sha256`` pins the manifest: anything else fails before a file is loaded."""
    from .coreml_backend import artifact_directory

    artifact = open_artifact(artifact_directory(directory), expect_sha256=expect_sha256, log=log)
    directory, manifest = artifact.directory, artifact.manifest
    if remote is not None and manifest.kind != "tvm":
        raise OptionError(f"{directory}: --rpc and --tracker run TVM bundles; this is a {manifest.kind} artifact")
    if manifest.kind == "tvm" and remote is None and (why := _gpu_absent(manifest)):
        from .build_check import check_gpu_build

        build = check_gpu_build(artifact, why)
        log(f"wrote {build.save(directory)}")
        return build
    source = Path(checkpoint or manifest.source["checkpoint"])
    if not source.is_file():
        raise ArtifactError(f"source checkpoint {source} not found; pass it with --checkpoint")
    model, sha = load_checkpoint(source)
    if sha != manifest.source["sha256"]:
        raise ArtifactError(f"{source} is not the checkpoint this artifact was exported from (sha256 differs)")
    tolerance = tolerance_key(manifest)
    log(f"verify {directory}: {manifest.kind} {manifest.architecture}, {tolerance}, against {source}")
    reference = TorchBackend(model)
    if manifest.kind == "onnx":
        import onnxruntime

        candidate = OrtBackend(artifact)
        ran = f"onnxruntime {onnxruntime.__version__} CPUExecutionProvider, on this machine"
    elif manifest.kind == "tvm":
        candidate, ran = _open_tvm(artifact, remote)
    else:
        candidate, ran, spec_check = _open_coreml(artifact, executor)
        log(spec_check.summary())
    tokens = rollout_tokens(manifest.tokenizer, reference.vocab_size, steps)

    report = compare_rollouts(reference, candidate, tokens, tolerance)
    report.what_ran.insert(0, f"{ran}; reference: the PyTorch model in fp32")
    if manifest.kind == "coreml":
        report.what_ran.insert(1, spec_check.summary())
        report.failures[:0] = [f"spec: {problem}" for problem in spec_check.problems]
        report.details["ops"] = spec_check.ops
    if candidate.chunk:
        _check_prefill(report, reference, candidate, tokens)
    if greedy_tokens and report.n_steps == len(tokens):  # a broken candidate stopped the rollout early
        report.add_greedy(greedy_identity(reference, candidate, tokens[:16], greedy_tokens))
    if manifest.kind == "tvm":
        log(_time_decode(report, candidate))
    getattr(candidate, "close", lambda: None)()  # a remote device serves one session at a time
    json_path, png_path = report.save(directory)
    log(f"wrote {json_path} and {png_path}")
    return report


def _gpu_absent(manifest: Manifest) -> str | None:
    """Why a GPU bundle cannot run here (None for CPU bundles and where the GPU is present)."""
    target = manifest.target
    if target["device"] == "cpu":
        return None
    from ..targets.gpu import unavailable_reason

    return unavailable_reason(target["device"], target.get("arch"), target["triple"])


def tolerance_key(manifest: Manifest) -> str:
    """Which TOLERANCES entry an artifact is judged by: its weight compression, else its precision."""
    target = manifest.target or {}
    quantization = target.get("quantization", "none")
    if quantization != "none":
        return quantization
    return "fp16" if target.get("weights") == "fp16" else manifest.precision


def _time_decode(report: ParityReport, candidate) -> str:
    """The decode step's latency where the bundle ran (a figure from an emulator says nothing about the hardware)."""
    times = candidate.time_decode()
    median = float(np.median(times))
    report.details["decode_ms"] = {"median": median, "min": min(times), "max": max(times), "samples": times,
                                   "where": candidate.where, "method": "TVM time_evaluator, 20 x mean of 5 calls"}
    report.what_ran.append(f"decode step timed on {candidate.where}: median {median:.3f} ms "
                           f"(TVM time_evaluator, 20 x 5 calls; under an emulator this is not the hardware's speed)")
    return report.what_ran[-1]


def _open_tvm(artifact: Artifact, remote):
    import tvm

    from .tvm_backend import TvmBackend

    candidate = TvmBackend(artifact, remote)
    return candidate, f"TVM {tvm.__version__} Relax VM on {candidate.where}"


def _open_coreml(artifact: Artifact, executor: str | None):
    from .coreml_backend import CoreMLBackend, describe_executor
    from .coreml_mil import MilProgram
    from .coreml_spec import check_spec

    candidate = CoreMLBackend(artifact, executor)
    program = MilProgram(candidate.package)
    return candidate, describe_executor(candidate.executor), check_spec(artifact.manifest, program.spec, program.program)


def rollout_tokens(tokenizer: str, vocab_size: int, n: int) -> list[int]:
    """``n`` tokens of ROLLOUT_TEXT (repeated) where the tokenizer is bundled, else seeded random ids."""
    if tokenizer in ("bytes", "world"):
        ids = load_tokenizer(tokenizer).encode(ROLLOUT_TEXT)
        return (ids * (n // len(ids) + 1))[:n]
    return np.random.default_rng(0).integers(0, vocab_size, n).tolist()


def _check_prefill(report: ParityReport, reference: Backend, candidate: Backend, tokens: list[int]) -> None:
    """One call of the prefill graph must equal T single steps of the reference."""
    chunk = candidate.chunk
    tokens = (tokens * (chunk // len(tokens) + 1))[:chunk]
    ref_logits, ref_state = reference.prefill(tokens, reference.init_state())
    logits, state = candidate.run_prefill_chunk(tokens, candidate.init_state())
    logits = logits[-1] if logits.ndim == 2 else logits
    worst = {"logits": _scaled(ref_logits, logits)}
    if report.tolerance.state_scaled is not None:
        worst.update({name: _scaled(value, state[name]) for name, value in ref_state.items()})
    name = max(worst, key=worst.get)
    report.what_ran.append(f"prefill graph: {chunk} tokens in one call vs {chunk} steps of the reference; "
                           f"worst max|Δ|/std {worst[name]:.2e} ({name})")
    limit = report.tolerance.logits_scaled if name == "logits" else report.tolerance.state_scaled
    if limit is not None and worst[name] > limit:
        report.failures.append(f"prefill {name}: max|Δ|/std {worst[name]:.2e} exceeds {limit:.0e}")


def _scaled(ref: np.ndarray, cand: np.ndarray) -> float:
    ref, cand = np.asarray(ref, np.float64), np.asarray(cand, np.float64)
    return float(np.abs(cand - ref).max() / (ref.std() or np.abs(ref).max() or 1.0))
