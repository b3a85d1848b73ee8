"""``verify`` against the compact reference rollout (reference.npz version 2): a real export passes, and
an error on a step whose logits are recorded only in top-k form still fails it, whether it is on one of the
top-k ids, on the rest of the row's mean or on its spread. A version-1 reference still verifies, every row whole."""

from __future__ import annotations

import re
import shutil
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from rwkv_edge.artifact import open_artifact
from rwkv_edge.artifact.reference import TOP_K
from rwkv_edge.artifact.builder import FULL_STEPS
from rwkv_edge.model import load_checkpoint
from rwkv_edge.runtime.registry import backend_of
from rwkv_edge.runtime.torch_backend import TorchBackend
from rwkv_edge.verify import verifier, verify_artifact

STEP = 5  # recorded in top-k form only
Edit = Callable[[np.ndarray], np.ndarray]  # a logits row (V,) -> the row changed


def quiet(_: str) -> None:
    pass


@pytest.fixture
def artifact(onnx_export, tmp_path) -> Path:
    """A copy of the session's tiny v7 ONNX export, with a prefill graph of 4 tokens (step 3: top-k form)."""
    return Path(shutil.copytree(onnx_export("v7", 4), tmp_path / "art"))


class Perturbed:
    """The artifact's backend, with its logits changed by ``edit`` at its ``at``-th step call (the rollout's
    step ``at``), or at every prefill call with ``prefill``."""

    def __init__(self, backend, edit: Edit, at: int | None = None, prefill: bool = False):
        self._backend, self._edit, self._at, self._prefill, self._calls = backend, edit, at, prefill, 0

    def __getattr__(self, name: str):
        return getattr(self._backend, name)

    def step(self, token: int, state):
        logits, state = self._backend.step(token, state)
        self._calls += 1
        return (self._edit(logits.copy()) if self._calls - 1 == self._at else logits), state

    def run_prefill_chunk(self, tokens: list[int], state):
        logits, state = self._backend.run_prefill_chunk(tokens, state)
        return (self._edit(logits.copy()) if self._prefill else logits), state


def perturbing(monkeypatch, edit: Edit, at: int | None = None, prefill: bool = False) -> None:
    """Make verify run the artifact through ``Perturbed``."""
    monkeypatch.setattr(verifier, "backend_of", lambda *a, **k: Perturbed(backend_of(*a, **k), edit, at, prefill))


def one_top_k_logit(row: np.ndarray) -> np.ndarray:
    """The 10th largest logit raised by 1e-3 std (10x the fp32 limit)."""
    row[np.argsort(-row)[9]] += 1e-3 * row.std()
    return row


def the_rest_shifted(row: np.ndarray) -> np.ndarray:
    """Every logit outside the top-k raised by 1e-3 std: the top-k unchanged, the row's mean moved."""
    row[np.argsort(-row)[TOP_K:]] += 1e-3 * row.std()
    return row


def the_rest_spread(row: np.ndarray) -> np.ndarray:
    """The logits outside the top-k spread 1% further about their own mean: the top-k and the row's mean
    unchanged (to rounding), its std moved."""
    rest = np.argsort(-row)[TOP_K:]
    row[rest] = row[rest].mean() + (row[rest] - row[rest].mean()) * 1.01
    return row


def test_a_real_export_passes_against_its_compact_reference(artifact):
    report = verify_artifact(artifact, log=quiet)
    assert report.passed, report.summary()
    assert report.n_steps == 64 and report.top1_agreement == 1.0 and report.greedy.identical
    assert any("whole rows at steps 0, 15, 31, 63; elsewhere the recorded top 64" in line for line in report.what_ran)
    assert any(line.startswith("prefill graph: 4 tokens in one call") for line in report.what_ran)
    assert max(report.errors["logits"].scaled) > 0  # onnxruntime is not bit-identical: the errors are measured


@pytest.mark.parametrize("edit", [one_top_k_logit, the_rest_shifted, the_rest_spread])
def test_an_error_on_a_top_k_step_fails(artifact, monkeypatch, edit):
    assert STEP not in FULL_STEPS
    perturbing(monkeypatch, edit, at=STEP)
    report = verify_artifact(artifact, log=quiet)
    assert not report.passed
    assert any(re.fullmatch(rf"logits: max\|Δ\|/std \S+ at step {STEP} exceeds 1e-04", f) for f in report.failures), \
        report.failures
    scaled = report.errors["logits"].scaled
    assert scaled[STEP] > 3e-4 and max(np.delete(scaled, STEP)) < 1e-4, scaled[STEP]


def test_a_swapped_top_1_on_a_top_k_step_fails_top_1(artifact, monkeypatch):
    def swap(row: np.ndarray) -> np.ndarray:
        first, second = np.argsort(-row)[:2]
        row[[first, second]] = row[[second, first]]
        return row

    perturbing(monkeypatch, swap, at=STEP)
    report = verify_artifact(artifact, greedy_tokens=0, log=quiet)
    assert report.top1.index(False) == STEP and sum(report.top1) == 63
    assert any(f.startswith("top-1 agreement 63/64") for f in report.failures), report.failures


def test_a_prefill_error_on_a_top_k_step_fails(artifact, monkeypatch):
    assert 4 - 1 not in FULL_STEPS
    perturbing(monkeypatch, lambda logits: np.stack([one_top_k_logit(r) for r in np.atleast_2d(logits)]).reshape(
        logits.shape), prefill=True)
    report = verify_artifact(artifact, greedy_tokens=0, log=quiet)
    assert any(f.startswith("prefill logits: max|Δ|/std") for f in report.failures), report.failures


def test_a_version_1_reference_verifies_with_every_row_whole(artifact, rehash):
    """An artifact built before version 2 (the logits of every step) verifies as it did."""
    opened = open_artifact(artifact)
    recorded = opened.reference()
    model, _ = load_checkpoint(opened.manifest.source["checkpoint"])
    torch_model, logits = TorchBackend(model), []
    state = torch_model.init_state()
    for token in recorded.tokens.tolist():
        row, state = torch_model.step(token, state)
        logits.append(row)
    np.savez(artifact / "reference.npz", version=np.int64(1), tokens=recorded.tokens, logits=np.stack(logits),
             greedy_prompt=recorded.greedy_prompt, greedy_tokens=recorded.greedy_tokens, **recorded.state)
    rehash(artifact)
    report = verify_artifact(artifact, log=quiet)
    assert report.passed, report.summary()
    assert any(f"whole rows at steps {', '.join(map(str, range(64)))};" in line for line in report.what_ran)
