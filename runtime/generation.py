"""Sampling text from any backend: greedy, temperature, top-k, top-p (nucleus), and presence and
frequency penalties with decay.

The draws are those of the C runtime (runtime/cpp/sampler.cc) for the same settings, seed and logits:
a SplitMix64 generator, probabilities exp((l - max) / temperature) in float64, ids in a stable order
by probability, cumulative sums in that order. np.exp and the C library's exp may differ in the last
bit, so the two could part only where a uniform lands within rounding of a boundary.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

from ..errors import OptionError, ShapeError
from .backend import Backend, NamedState, check_token_ids

_MASK = (1 << 64) - 1
_GOLDEN = 0x9E3779B97F4A7C15
_MIX1 = 0xBF58476D1CE4E5B9
_MIX2 = 0x94D049BB133111EB
_INT32_MAX = 2**31 - 1  # top_k travels to the C runtime as an int32


def _real(name: str, value: object) -> float:
    """``value`` as a finite float, or OptionError naming ``name``."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value):
        raise OptionError(f"{name} must be a finite number, got {value!r}")
    return float(value)


def _integer(name: str, value: object, high: int) -> int:
    """``value`` as an int in [0, high], or OptionError naming ``name``."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or not 0 <= value <= high:
        raise OptionError(f"{name} must be an integer in [0, {high}], got {value!r}")
    return int(value)


@dataclass(frozen=True)
class Sampler:
    """How tokens are drawn from logits; ``start`` gives the draws of one generation.

    temperature 0 is greedy (argmax, the lowest id on ties); otherwise softmax(logits / temperature)
    cut to the ``top_k`` most likely ids (0: no limit), then to the fewest holding ``top_p`` of their
    mass. Each id generated so far has ``presence_penalty`` plus ``frequency_penalty`` times its
    count subtracted from its logit; every count is multiplied by ``penalty_decay`` at each token.
    """

    temperature: float = 1.0
    top_p: float = 0.85
    seed: int = 0
    top_k: int = 0
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    penalty_decay: float = 1.0

    def __post_init__(self) -> None:
        if _real("temperature", self.temperature) < 0:
            raise OptionError(f"temperature must be >= 0, got {self.temperature}")
        if not 0 < _real("top_p", self.top_p) <= 1:
            raise OptionError(f"top_p must be in (0, 1], got {self.top_p}")
        _integer("seed", self.seed, _MASK)
        _integer("top_k", self.top_k, _INT32_MAX)
        _real("presence_penalty", self.presence_penalty)
        _real("frequency_penalty", self.frequency_penalty)
        if not 0 < _real("penalty_decay", self.penalty_decay) <= 1:
            raise OptionError(f"penalty_decay must be in (0, 1], got {self.penalty_decay}")

    def start(self, vocab_size: int) -> Draws:
        """Fresh draws over ``vocab_size`` ids: the generator at ``seed``, every count 0."""
        return Draws(self, vocab_size)


class Draws:
    """The state of one generation's draws: the SplitMix64 generator and the (decayed) counts."""

    def __init__(self, sampler: Sampler, vocab_size: int) -> None:
        self.sampler = sampler
        self.vocab_size = _integer("vocab_size", vocab_size, _INT32_MAX)
        if self.vocab_size < 1:
            raise OptionError("vocab_size must be >= 1, got 0")
        self.rng = int(sampler.seed)
        self.counts = np.zeros(vocab_size, dtype=np.float64)  # (V,)

    def uniform(self) -> float:
        """The next SplitMix64 output's top 53 bits as a float in [0, 1)."""
        self.rng = (self.rng + _GOLDEN) & _MASK
        z = self.rng
        z = ((z ^ (z >> 30)) * _MIX1) & _MASK
        z = ((z ^ (z >> 27)) * _MIX2) & _MASK
        z ^= z >> 31
        return (z >> 11) * 2.0**-53

    def draw(self, logits: np.ndarray) -> int:
        """A token id from logits (V,); counts it for the penalties."""
        s = self.sampler
        logits = np.asarray(logits)
        if logits.shape != (self.vocab_size,):
            raise ShapeError(f"logits must have shape ({self.vocab_size},), got {logits.shape}")
        l = logits.astype(np.float64)
        if s.presence_penalty != 0 or s.frequency_penalty != 0:
            l = l - np.where(self.counts > 0, float(s.presence_penalty), 0.0)
            l = l - self.counts * float(s.frequency_penalty)
        bad = np.isnan(l) | (l == np.inf)
        if bad.any():
            i = int(np.argmax(bad))
            raise ShapeError(f"the logit of token {i} is {l[i]}: the model's output is not usable")
        best = int(np.argmax(l))  # the lowest id on ties
        if l[best] == -np.inf:
            raise ShapeError("every logit is -inf: the model's output is not usable")
        token = best if s.temperature == 0 else self._nucleus(l)
        if s.penalty_decay != 1:
            self.counts *= float(s.penalty_decay)
        self.counts[token] += 1
        return token

    def _nucleus(self, l: np.ndarray) -> int:
        """Temperature, top-k and top-p draw from penalized logits l (V,) float64."""
        s = self.sampler
        p = np.exp((l - l.max()) / float(s.temperature))
        order = np.argsort(-p, kind="stable")  # probability descending, ties by id
        if s.top_k > 0:
            order = order[:s.top_k]
        c = np.cumsum(p[order])  # sequential, in that order
        keep = min(int(np.searchsorted(c, float(s.top_p) * c[-1], side="left")) + 1, len(order))
        r = self.uniform() * c[keep - 1]
        j = int(np.searchsorted(c[:keep], r, side="right"))  # the first c_j > r
        return int(order[min(j, keep - 1)])


def generate(backend: Backend, prompt: list[int], n: int, sampler: Sampler,
             start: tuple[np.ndarray, NamedState] | None = None, end_token: int | None = None) -> Iterator[int]:
    """Prefill ``prompt`` then yield up to ``n`` drawn token ids, each fed before the next is drawn.

    ``start`` = (logits, state) goes on from there (a loaded state file): the prompt, which may then
    be empty, is fed on top of it. Generation stops before ``end_token`` (not yielded). The last token
    is not fed: nothing would use the state after it.
    """
    if not prompt and start is None:
        raise OptionError("the prompt must contain at least one token (or start from a saved state)")
    if end_token is not None and not 0 <= end_token < backend.vocab_size:
        raise OptionError(f"end_token {end_token} is outside the vocabulary [0, {backend.vocab_size})")
    if prompt:
        check_token_ids(prompt, backend.vocab_size)
    draws = sampler.start(backend.vocab_size)
    if start is None:
        logits, state = backend.prefill(prompt, backend.init_state())
    elif prompt:
        logits, state = backend.prefill(prompt, start[1])
    else:
        logits, state = start
    for i in range(n):
        token = draws.draw(logits)
        if token == end_token:
            return
        yield token
        if i + 1 < n:
            logits, state = backend.step(token, state)
