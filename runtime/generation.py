"""Sampling text from any backend: greedy, temperature and nucleus (top-p)."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

from ..errors import OptionError
from .backend import Backend, check_token_ids


@dataclass(frozen=True)
class Sampler:
    """temperature 0 means greedy (argmax); otherwise softmax(logits / temperature) cut to top_p."""

    temperature: float = 1.0
    top_p: float = 0.85
    seed: int = 0

    def __post_init__(self) -> None:
        if self.temperature < 0:
            raise OptionError(f"temperature must be >= 0, got {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise OptionError(f"top_p must be in (0, 1], got {self.top_p}")


def sample(logits: np.ndarray, sampler: Sampler, rng: np.random.Generator) -> int:
    """One token id from logits (V,)."""
    if sampler.temperature == 0:
        return int(np.argmax(logits))
    z = logits.astype(np.float64) / sampler.temperature
    p = np.exp(z - z.max())
    p /= p.sum()
    order = np.argsort(-p)
    keep = np.cumsum(p[order]) - p[order] < sampler.top_p  # smallest prefix with mass >= top_p
    kept = order[keep]
    return int(rng.choice(kept, p=p[kept] / p[kept].sum()))


def generate(backend: Backend, prompt: list[int], n: int, sampler: Sampler) -> Iterator[int]:
    """Prefill ``prompt`` then yield ``n`` sampled token ids."""
    if not prompt:
        raise OptionError("the prompt must contain at least one token")
    check_token_ids(prompt, backend.vocab_size)
    rng = np.random.default_rng(sampler.seed)
    logits, state = backend.prefill(prompt, backend.init_state())
    for i in range(n):
        token = sample(logits, sampler, rng)
        yield token
        if i + 1 < n:
            logits, state = backend.step(token, state)
