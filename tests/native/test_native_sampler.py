"""The sampler: the C++ one (runtime/cpp/sampler.cc, on this host and on aarch64 under qemu) draws the very
tokens the Python Draws (runtime/generation.py) draw, for many settings, seeds, vocabulary sizes and
logits with exact ties; the Python settings are validated; and the algorithm does what it says."""

from __future__ import annotations

import math

import numpy as np
import pytest

from rwkv_edge.errors import OptionError, ShapeError
from rwkv_edge.runtime.generation import Sampler

SETTINGS = [
    dict(temperature=0.0),
    dict(temperature=0.5),
    dict(temperature=1.0, seed=1),
    dict(temperature=2.0, seed=2**64 - 1),
    dict(temperature=1.0, top_p=0.1, seed=12345),
    dict(temperature=1.0, top_p=0.5, seed=3),
    dict(temperature=1.0, top_p=1.0, seed=4),
    dict(temperature=1.0, top_p=0.9, top_k=1, seed=5),
    dict(temperature=1.5, top_p=0.9, top_k=5, seed=6),
    dict(temperature=1.0, top_p=1.0, top_k=70000, seed=7),
    dict(temperature=0.0, presence_penalty=0.4, frequency_penalty=0.3, penalty_decay=0.996),
    dict(temperature=1.0, presence_penalty=0.4, frequency_penalty=0.3, penalty_decay=0.996, seed=8),
    dict(temperature=0.7, top_p=0.6, top_k=40, presence_penalty=-0.5, frequency_penalty=1.0, penalty_decay=0.5, seed=9),
]


def logits_rows(vocab_size: int, rows: int, seed: int) -> np.ndarray:
    """(rows, V) float32: flat, peaked and very peaked rows, rows of exact ties (a coarse grid, all equal),
    and rows with -inf entries."""
    rng = np.random.default_rng(seed)
    out = []
    for r in range(rows):
        kind = r % 6
        if kind < 3:
            row = rng.standard_normal(vocab_size) * (1.0, 4.0, 12.0)[kind]
        elif kind == 3:
            row = np.round(rng.standard_normal(vocab_size) * 2) / 2  # many ties
        elif kind == 4:
            row = np.full(vocab_size, 0.25)  # every id tied
        else:
            row = rng.standard_normal(vocab_size) * 3
            row[rng.integers(0, vocab_size, vocab_size // 3)] = -np.inf
        out.append(row)
    return np.asarray(out, dtype=np.float32)


def cpp_draws(text_check, tmp_path, logits: np.ndarray, sampler: Sampler) -> list[int]:
    np.save(tmp_path / "logits.npy", logits)
    text_check.run("sample", tmp_path / "logits.npy", logits.shape[1], tmp_path / "ids",
                   "--temperature", repr(sampler.temperature), "--top-p", repr(sampler.top_p), "--top-k", sampler.top_k,
                   "--presence", repr(sampler.presence_penalty), "--frequency", repr(sampler.frequency_penalty),
                   "--decay", repr(sampler.penalty_decay), "--seed", sampler.seed)
    return np.fromfile(tmp_path / "ids", dtype="<i4").tolist()


@pytest.mark.parametrize("vocab_size, rows", [(256, 48), (1000, 24), (65536, 12)])
def test_cpp_draws_the_python_draws(text_check, tmp_path, vocab_size, rows):
    logits = logits_rows(vocab_size, rows, seed=vocab_size)
    for settings in SETTINGS:
        sampler = Sampler(**settings)
        draws = sampler.start(vocab_size)
        expected = [draws.draw(row) for row in logits]
        assert cpp_draws(text_check, tmp_path, logits, sampler) == expected, settings


@pytest.mark.parametrize("flag, value, message", [
    ("--temperature", "-1", "temperature must be >= 0 and finite, got -1"),
    ("--temperature", "inf", "temperature must be >= 0 and finite, got inf"),
    ("--top-p", "0", "top_p must be in (0, 1], got 0"),
    ("--top-p", "nan", "top_p must be in (0, 1], got nan"),
    ("--top-k", "-2", "top_k must be >= 0 (0: no limit), got -2"),
    ("--presence", "nan", "presence_penalty must be finite, got nan"),
    ("--frequency", "-inf", "frequency_penalty must be finite, got -inf"),
    ("--decay", "0", "penalty_decay must be in (0, 1], got 0"),
    ("--decay", "1.5", "penalty_decay must be in (0, 1], got 1.5"),
])
def test_cpp_refuses_settings_out_of_range(text_check, tmp_path, flag, value, message):
    np.save(tmp_path / "logits.npy", np.zeros((1, 8), dtype=np.float32))
    result = text_check.run("sample", tmp_path / "logits.npy", 8, tmp_path / "ids", flag, value, check=False)
    assert (result.returncode, result.stderr) == (1, f"text_check: error: {message}\n")


@pytest.mark.parametrize("bad, message", [(np.nan, "the logit of token 3 is nan"), (np.inf, "the logit of token 3 is inf")])
def test_cpp_and_python_refuse_unusable_logits(text_check, tmp_path, bad, message):
    logits = np.zeros((1, 8), dtype=np.float32)
    logits[0, 3] = bad
    np.save(tmp_path / "logits.npy", logits)
    result = text_check.run("sample", tmp_path / "logits.npy", 8, tmp_path / "ids", check=False)
    assert (result.returncode, result.stderr) == (1, f"text_check: error: {message}\n")
    with pytest.raises(ShapeError, match=message):
        Sampler().start(8).draw(logits[0])


# ---------------------------------------------------------------------------------------------
# The Python sampler


@pytest.mark.parametrize("settings, message", [
    (dict(temperature=-1.0), "temperature must be >= 0"),
    (dict(temperature=math.nan), "temperature must be a finite number"),
    (dict(temperature=math.inf), "temperature must be a finite number"),
    (dict(temperature="1"), "temperature must be a finite number"),
    (dict(top_p=0.0), r"top_p must be in \(0, 1\]"),
    (dict(top_p=1.5), r"top_p must be in \(0, 1\]"),
    (dict(top_p=math.nan), "top_p must be a finite number"),
    (dict(top_k=-1), "top_k must be an integer in"),
    (dict(top_k=2.0), "top_k must be an integer in"),
    (dict(top_k=True), "top_k must be an integer in"),
    (dict(top_k=2**31), "top_k must be an integer in"),
    (dict(seed=-1), "seed must be an integer in"),
    (dict(seed=2**64), "seed must be an integer in"),
    (dict(seed=1.0), "seed must be an integer in"),
    (dict(presence_penalty=math.nan), "presence_penalty must be a finite number"),
    (dict(frequency_penalty=-math.inf), "frequency_penalty must be a finite number"),
    (dict(penalty_decay=0.0), r"penalty_decay must be in \(0, 1\]"),
    (dict(penalty_decay=1.01), r"penalty_decay must be in \(0, 1\]"),
])
def test_python_sampler_refuses_settings_out_of_range(settings, message):
    with pytest.raises(OptionError, match=message):
        Sampler(**settings)


def test_positional_settings_stay_temperature_top_p_seed():
    assert Sampler(0.5, 0.3, 7) == Sampler(temperature=0.5, top_p=0.3, seed=7, top_k=0, presence_penalty=0.0,
                                           frequency_penalty=0.0, penalty_decay=1.0)


def test_the_generator_is_splitmix64():
    draws = Sampler(seed=0).start(4)
    # SplitMix64 from state 0: its first outputs (the reference sequence of the algorithm)
    for z in (0xE220A8397B1DCDAF, 0x6E789E6AA1B965F4, 0x06C45D188009454F):
        assert draws.uniform() == (z >> 11) * 2.0**-53
    wraps = Sampler(seed=2**64 - 1).start(4)
    wraps.uniform()
    assert wraps.rng == 0x9E3779B97F4A7C15 - 1


def test_greedy_takes_the_lowest_id_of_a_tie_and_draws_no_random_number():
    draws = Sampler(temperature=0.0, seed=5).start(5)
    assert draws.draw(np.array([0, 3, 1, 3, 3], dtype=np.float32)) == 1
    assert draws.rng == 5


@pytest.mark.parametrize("temperature", [0.3, 1.0, 3.0])
def test_top_k_1_and_a_tiny_top_p_are_greedy(temperature):
    logits = logits_rows(300, 12, seed=2)
    greedy = Sampler(temperature=0.0).start(300)
    top_k = Sampler(temperature=temperature, top_p=1.0, top_k=1, seed=1).start(300)
    tiny_p = Sampler(temperature=temperature, top_p=1e-12, seed=2).start(300)
    for row in logits:
        expected = greedy.draw(row)
        assert top_k.draw(row) == expected and tiny_p.draw(row) == expected


def test_draws_follow_the_softmax_within_the_kept_mass():
    p = np.array([0.4, 0.3, 0.2, 0.1])
    logits = np.log(p).astype(np.float32)
    # 20000 seeded draws: a frequency's standard error is at most sqrt(0.25 / 20000) = 0.0035, so atol 0.01 is
    # 2.8 of them; a wrong cut or temperature moves a frequency by 0.05 or more
    draws = Sampler(temperature=1.0, top_p=1.0, seed=11).start(4)
    counts = np.bincount([draws.draw(logits) for _ in range(20000)], minlength=4) / 20000
    np.testing.assert_allclose(counts, p, atol=0.01)
    cut = Sampler(temperature=1.0, top_p=0.65, seed=12).start(4)  # 0.4 + 0.3 >= 0.65: two ids kept
    counts = np.bincount([cut.draw(logits) for _ in range(20000)], minlength=4) / 20000
    np.testing.assert_allclose(counts, [0.4 / 0.7, 0.3 / 0.7, 0, 0], atol=0.01)
    hot = Sampler(temperature=2.0, top_p=1.0, seed=13).start(4)  # softmax(log p / 2) = sqrt(p), normalized
    counts = np.bincount([hot.draw(logits) for _ in range(20000)], minlength=4) / 20000
    np.testing.assert_allclose(counts, np.sqrt(p) / np.sqrt(p).sum(), atol=0.01)


def test_penalties_count_every_token_with_decay():
    draws = Sampler(temperature=0.0, presence_penalty=0.5, frequency_penalty=0.0, penalty_decay=0.5).start(3)
    logits = np.array([2.0, 1.9, 0.0], dtype=np.float32)
    # 0; then 0 is at 1.5 < 1.9: 1; then 0 and 1 both present: 1.5 > 1.4: 0
    assert [draws.draw(logits) for _ in range(3)] == [0, 1, 0]
    np.testing.assert_array_equal(draws.counts, [0.25 + 1, 0.5, 0])  # decayed at every token, then +1


def test_frequency_penalty_grows_with_the_count():
    draws = Sampler(temperature=0.0, frequency_penalty=1.0).start(3)
    logits = np.array([3.0, 1.5, 0.0], dtype=np.float32)
    # 0 (3), 0 (3 - 1 = 2 > 1.5), 1 (3 - 2 = 1 < 1.5), 0 (1 vs 0.5), 1 (0 vs 0.5) ...
    assert [draws.draw(logits) for _ in range(5)] == [0, 0, 1, 0, 1]
    np.testing.assert_array_equal(draws.counts, [3, 2, 0])


def test_draws_refuse_logits_of_another_shape():
    with pytest.raises(ShapeError, match=r"logits must have shape \(8,\), got \(1, 8\)"):
        Sampler().start(8).draw(np.zeros((1, 8), dtype=np.float32))
    with pytest.raises(ShapeError, match="every logit is -inf"):
        Sampler().start(2).draw(np.full(2, -np.inf, dtype=np.float32))
