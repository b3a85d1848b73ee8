"""reference.npz: the compact rollout (version 2) round-trips, a version-1 file (every logit) is still read,
and every array is held to its shape, dtype and id range on load: a tampered one is one ArtifactError line."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from rwkv_edge.artifact.reference import (TOP_K, RecordedLogits, Reference, RoundingSpread, TopLogits,
                                          VisionReference, load_reference)
from rwkv_edge.contract import StateTensor
from rwkv_edge.errors import ArtifactError
from rwkv_edge.artifact.builder import FULL_STEPS

T, V = 64, 256
SPEC = [StateTensor(0, "wkv", (2, 4, 4))]
SPREAD = RoundingSpread(0.1, 0.2, 0.9375).arrays()  # what an int8-compute build records


@pytest.fixture
def logits() -> np.ndarray:
    """(T, V) float32 logits with a tie for the largest value at step 5 (ids 7 and 3)."""
    values = np.random.default_rng(0).normal(size=(T, V)).astype(np.float32)
    values[5, [7, 3]] = 9.0
    return values


@pytest.fixture
def saved(logits, tmp_path) -> Path:
    """A version-2 reference.npz of ``logits``."""
    reference = Reference(np.arange(T, dtype=np.int64), RecordedLogits.of(logits, FULL_STEPS),
                          {"state_out.0.wkv": np.ones((2, 4, 4), np.float32)}, np.arange(16, dtype=np.int64),
                          np.arange(128, dtype=np.int64) % V)
    reference.save(tmp_path / "reference.npz")
    return tmp_path / "reference.npz"


def rewritten(path: Path, **arrays: np.ndarray) -> Path:
    """``path`` saved again with ``arrays`` in place of its own (None: left out)."""
    with np.load(path) as saved:
        kept = {name: saved[name] for name in saved.files}
    kept.update(arrays)
    np.savez(path, **{name: value for name, value in kept.items() if value is not None})
    return path


def test_a_compact_reference_round_trips(saved, logits):
    loaded = load_reference(saved, SPEC, V)
    recorded = loaded.logits
    assert recorded.steps.tolist() == list(FULL_STEPS) and recorded.top_ids.shape == (T, TOP_K)
    for step in range(T):
        row = recorded.at(step)
        if step in FULL_STEPS:
            np.testing.assert_array_equal(row, logits[step])
            continue
        assert isinstance(row, TopLogits) and row.shape == (V,)
        np.testing.assert_array_equal(row.values, np.sort(logits[step])[::-1][:TOP_K])
        np.testing.assert_array_equal(logits[step][row.ids], row.values)
        assert row.ids[0] == np.argmax(logits[step])  # top-1 as numpy's argmax: the lower id of a tie
        assert row.mean == logits[step].astype(np.float64).mean() and row.std == logits[step].astype(np.float64).std()
    assert recorded.at(5).ids[:2].tolist() == [3, 7]
    np.testing.assert_array_equal(loaded.state["state_out.0.wkv"], np.ones((2, 4, 4)))
    assert loaded.greedy_tokens.tolist() == (np.arange(128) % V).tolist()


def test_the_compact_form_is_a_fraction_of_a_large_vocabulary(tmp_path):
    """With the World vocabulary (65536): 1.1 MB of logits instead of 16.8 MB (docs/onnx-contract.md)."""
    logits = np.random.default_rng(1).normal(size=(T, 65536)).astype(np.float32)
    reference = Reference(np.arange(T, dtype=np.int64), RecordedLogits.of(logits, FULL_STEPS), {},
                          np.arange(16, dtype=np.int64), np.arange(128, dtype=np.int64))
    reference.save(tmp_path / "reference.npz")
    assert (tmp_path / "reference.npz").stat().st_size < 1.2e6 < logits.nbytes / 13
    assert load_reference(tmp_path / "reference.npz", [], 65536).logits.at(7).ids[0] == np.argmax(logits[7])


def test_an_int8_compute_reference_carries_its_rounding_spread(saved):
    """The spread is three plain numbers beside the rollout, read back as written; a float reference has none."""
    assert load_reference(saved, SPEC, V).spread is None
    spread = load_reference(rewritten(saved, **SPREAD), SPEC, V).spread
    assert spread == RoundingSpread(0.1, 0.2, 0.9375)


def test_a_version_1_reference_is_read_with_every_row_whole(saved, logits):
    path = rewritten(saved, version=np.int64(1), logits=logits,
                     **{name: None for name in ("logits_steps", "logits_full", "logits_top_ids", "logits_top",
                                                "logits_mean", "logits_std")})
    recorded = load_reference(path, SPEC, V).logits
    assert recorded.steps.tolist() == list(range(T))
    for step in range(T):
        np.testing.assert_array_equal(recorded.at(step), logits[step])


@pytest.mark.parametrize("arrays, message", [
    ({"logits_top_ids": np.full((T, TOP_K), V)}, r"logits_top_ids must be token ids in \[0, 256\); they run from 256"),
    ({"logits_top_ids": np.full((T, TOP_K), -1)}, r"logits_top_ids must be token ids in \[0, 256\); they run from -1"),
    ({"logits_top_ids": np.zeros((T - 1, TOP_K), np.int64)}, r"logits_top_ids must be \(64, K\) .* int64 \(63, 64\)"),
    ({"logits_top_ids": np.zeros((T, V + 1), np.int64)}, r"with 1 <= K <= 256; it is int64 \(64, 257\)"),
    ({"logits_top_ids": np.zeros(T, np.int64)}, r"logits_top_ids must be \(64, K\) .* int64 \(64,\)"),
    ({"logits_top_ids": np.zeros((T, TOP_K), np.float32)}, r"logits_top_ids must be integer; it is float32"),
    ({"logits_top_ids": np.zeros((T, TOP_K), np.int64)}, "logits_top_ids repeats an id within a step"),
    ({"logits_top": np.zeros((T, TOP_K - 1), np.float32)}, r"logits_top must be float \(64, 64\); it is float32 \(64, 63\)"),
    ({"logits_top": np.tile(np.arange(TOP_K, dtype=np.float32), (T, 1))}, "logits_top must be in descending order"),
    ({"logits_steps": np.array([0, 64])}, r"logits_steps must be 1 to 64 distinct ascending steps in \[0, 64\)"),
    ({"logits_steps": np.array([15, 0])}, "logits_steps must be 1 to 64 distinct ascending steps"),
    ({"logits_steps": np.zeros(0, np.int64)}, r"logits_steps must be .*; it is int64 \(0,\)"),
    ({"logits_full": np.zeros((3, V), np.float32)}, r"logits_full must be float \(4, 256\); it is float32 \(3, 256\)"),
    ({"logits_std": -np.ones(T)}, "logits_std holds a negative or NaN value"),
    ({"logits_mean": np.zeros(T, np.int64)}, r"logits_mean must be float \(64,\); it is int64"),
    ({"tokens": np.full(T, V)}, r"tokens must be a 1-D array of token ids in \[0, 256\); it is int64 \(64,\) from 256"),
    ({"greedy_prompt": np.zeros((4, 4), np.int64)}, r"greedy_prompt must be a 1-D array .* int64 \(4, 4\)"),
    ({"state_out.0.wkv": np.zeros((2, 4, 4), np.int32)}, r"state_out.0.wkv must be float \(2, 4, 4\); it is int32"),
    ({"logits_top_ids": None}, "holds no logits_top_ids"),
    ({"version": np.int64(3)}, "reference version 3, this rwkv-edge reads 1 and 2: rebuild the artifact"),
    ({"version": np.array(["2"])}, r"reference version <U1 \(1,\), this rwkv-edge reads 1 and 2"),
    ({"version": None}, "reference version none, this rwkv-edge reads 1 and 2"),
    ({"spread_logits": np.float64(0.1)}, "holds spread_logits but not spread_state"),
    ({**SPREAD, "spread_state": np.float64(-1)}, "spread_state must be one finite number >= 0; it is -1.0"),
    ({**SPREAD, "spread_logits": np.float64(np.nan)}, "spread_logits must be one finite number >= 0; it is nan"),
    ({**SPREAD, "spread_top1": np.ones(2)}, r"spread_top1 must be one finite number >= 0; it is float64 \(2,\)"),
    ({**SPREAD, "spread_top1": np.float64(1.5)}, "spread_top1 is a fraction of steps, at most 1; it is 1.5"),
])
def test_a_tampered_reference_is_one_line(saved, arrays, message):
    with pytest.raises(ArtifactError, match=message) as raised:
        load_reference(rewritten(saved, **arrays), SPEC, V)
    assert "\n" not in str(raised.value)


def test_vision_references_keep_version_1(tmp_path):
    VisionReference(np.zeros((1, 3, 4, 4), np.float32), np.zeros((1, 10), np.float32), "logits").save(tmp_path / "v.npz")
    with np.load(tmp_path / "v.npz") as saved:
        assert saved["version"] == 1 and sorted(saved.files) == ["images", "logits", "version"]
