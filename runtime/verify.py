"""``rwkv-edge verify``: an exported artifact against the PyTorch model it came from."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np

from ..errors import ArtifactError
from ..manifest import check_hashes, read_manifest, sha256_file
from ..model import load_model
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
                    checkpoint: str | Path | None = None, log: Callable[[str], None] = print) -> ParityReport:
    """Roll out ``steps`` tokens on the artifact and on the PyTorch model, each on its own state;
    check the prefill graph against single steps; compare greedy generation; save parity.json/.png."""
    directory = Path(directory)
    manifest = read_manifest(directory, kind="onnx")
    check_hashes(manifest, directory)
    source = Path(checkpoint or manifest.source["checkpoint"])
    if not source.is_file():
        raise ArtifactError(f"source checkpoint {source} not found; pass it with --checkpoint")
    if sha256_file(source) != manifest.source["sha256"]:
        raise ArtifactError(f"{source} is not the checkpoint this artifact was exported from (sha256 differs)")
    log(f"verify {directory}: {manifest.architecture}, {manifest.precision}, against {source}")
    reference, candidate = TorchBackend(load_model(source)), OrtBackend(directory)
    tokens = rollout_tokens(manifest.tokenizer, reference.vocab_size, steps)

    report = compare_rollouts(reference, candidate, tokens, manifest.precision)
    import onnxruntime

    report.what_ran.insert(0, f"onnxruntime {onnxruntime.__version__} CPUExecutionProvider, on this machine; "
                              "reference: the PyTorch model in fp32")
    if candidate.prefill_session is not None:
        _check_prefill(report, reference, candidate, tokens)
    if greedy_tokens and report.n_steps == len(tokens):  # a broken candidate stopped the rollout early
        report.add_greedy(greedy_identity(reference, candidate, tokens[:16], greedy_tokens))
    json_path, png_path = report.save(directory)
    log(f"wrote {json_path} and {png_path}")
    return report


def rollout_tokens(tokenizer: str, vocab_size: int, n: int) -> list[int]:
    """``n`` tokens of ROLLOUT_TEXT (repeated) where the tokenizer is bundled, else seeded random ids."""
    if tokenizer in ("bytes", "world"):
        ids = load_tokenizer(tokenizer).encode(ROLLOUT_TEXT)
        return (ids * (n // len(ids) + 1))[:n]
    return np.random.default_rng(0).integers(0, vocab_size, n).tolist()


def _check_prefill(report: ParityReport, reference: Backend, candidate: OrtBackend, tokens: list[int]) -> None:
    """One call of the prefill graph must equal T single steps of the reference."""
    chunk = candidate.chunk
    tokens = (tokens * (chunk // len(tokens) + 1))[:chunk]
    ref_logits, ref_state = reference.prefill(tokens, reference.init_state())
    logits, state = candidate.run_prefill_chunk(tokens, candidate.init_state())
    logits = logits[-1] if logits.ndim == 2 else logits
    worst = {"logits": _scaled(ref_logits, logits)}
    worst.update({name: _scaled(value, state[name]) for name, value in ref_state.items()})
    name = max(worst, key=worst.get)
    report.what_ran.append(f"prefill graph: {chunk} tokens in one call vs {chunk} steps of the reference; "
                           f"worst max|Δ|/std {worst[name]:.2e} ({name})")
    limit = report.tolerance.logits_scaled if name == "logits" else report.tolerance.state_scaled
    if worst[name] > limit:
        report.failures.append(f"prefill {name}: max|Δ|/std {worst[name]:.2e} exceeds {limit:.0e}")


def _scaled(ref: np.ndarray, cand: np.ndarray) -> float:
    ref, cand = np.asarray(ref, np.float64), np.asarray(cand, np.float64)
    return float(np.abs(cand - ref).max() / (ref.std() or np.abs(ref).max() or 1.0))
