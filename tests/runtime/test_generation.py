"""generate() on a real (tiny, seeded) PyTorch backend: every drawn token is fed before the next draw,
the end token stops generation unseen, and a generation goes on from saved (logits, state)."""

from __future__ import annotations

import pytest

from rwkv_edge.errors import OptionError, TokenError
from rwkv_edge.model import model_from_state_dict
from rwkv_edge.model.synthetic import make_checkpoint
from rwkv_edge.runtime.generation import Sampler, generate
from rwkv_edge.runtime.torch_backend import TorchBackend

PROMPT = [5, 80, 17, 200]
SAMPLED = Sampler(temperature=1.0, top_p=0.9, top_k=50, presence_penalty=0.3, frequency_penalty=0.2,
                  penalty_decay=0.99, seed=2026)


@pytest.fixture(scope="module")
def backend() -> TorchBackend:
    return TorchBackend(model_from_state_dict(make_checkpoint("v7", n_layer=2, n_embd=64, head_size=32)))


def by_hand(backend, prompt: list[int], n: int, sampler: Sampler) -> list[int]:
    """The spec's loop written out: prefill, then draw and feed."""
    draws = sampler.start(backend.vocab_size)
    logits, state = backend.prefill(prompt, backend.init_state())
    tokens = []
    for _ in range(n):
        tokens.append(draws.draw(logits))
        logits, state = backend.step(tokens[-1], state)
    return tokens


@pytest.mark.parametrize("sampler", [Sampler(temperature=0.0), SAMPLED], ids=["greedy", "sampled"])
def test_generate_draws_and_feeds_each_token(backend, sampler):
    tokens = list(generate(backend, PROMPT, 12, sampler))
    assert tokens == by_hand(backend, PROMPT, 12, sampler)
    assert list(generate(backend, PROMPT, 12, sampler)) == tokens  # the seed fixes the draws


def test_the_end_token_stops_generation_unseen(backend):
    tokens = list(generate(backend, PROMPT, 12, SAMPLED))
    end = tokens[5]
    first = tokens.index(end)
    assert list(generate(backend, PROMPT, 12, SAMPLED, end_token=end)) == tokens[:first]


def test_generation_goes_on_from_saved_logits_and_state(backend):
    greedy = Sampler(temperature=0.0)
    logits, state = backend.prefill(PROMPT, backend.init_state())
    assert list(generate(backend, [], 8, greedy, start=(logits, state))) == list(generate(backend, PROMPT, 8, greedy))
    more = [9, 10]
    assert list(generate(backend, more, 8, greedy, start=(logits, state))) == \
        list(generate(backend, PROMPT + more, 8, greedy))


def test_generate_refuses_bad_requests(backend):
    with pytest.raises(OptionError, match="the prompt must contain at least one token"):
        list(generate(backend, [], 4, Sampler()))
    with pytest.raises(OptionError, match=r"end_token 256 is outside the vocabulary \[0, 256\)"):
        list(generate(backend, PROMPT, 4, Sampler(), end_token=256))
    with pytest.raises(TokenError, match="token id 256 is outside the vocabulary"):
        list(generate(backend, [256], 4, Sampler()))


def test_generate_yields_nothing_for_zero_tokens(backend):
    assert list(generate(backend, PROMPT, 0, Sampler())) == []
