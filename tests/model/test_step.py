"""The step contract of every architecture: pure, batched, validated."""

from __future__ import annotations

import pytest
import torch

from rwkv_edge.errors import StateError, TokenError
from rwkv_edge.model import LANGUAGE_ARCHITECTURES, model_from_state_dict, state_from_named, state_to_named
from rwkv_edge.model.synthetic import make_checkpoint


@pytest.fixture(scope="module", params=list(LANGUAGE_ARCHITECTURES))
def model(request):
    return model_from_state_dict(make_checkpoint(request.param))


def test_step_does_not_modify_its_input_state(model):
    state = model.init_state()
    before = {k: v.clone() for k, v in state_to_named(state).items()}
    model.step(7, state)
    for name, value in state_to_named(state).items():
        assert torch.equal(value, before[name]), name


def test_state_is_fp32_and_named_per_layer(model):
    spec = model.state_spec()
    _, state = model.step(1, model.init_state())
    named = state_to_named(state)
    assert list(named) == [t.input_name for t in spec]
    assert all(v.dtype == torch.float32 for v in named.values())
    assert state_from_named(named, spec) == state


def test_batched_forward_equals_each_sequence(model):
    tokens = torch.randint(0, model.config.vocab_size, (3, 9), generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        batched, state = model.forward(tokens, model.init_state((3,)))
        for b in range(3):
            single, single_state = model.forward(tokens[b])
            torch.testing.assert_close(batched[b], single, rtol=0, atol=1e-5)
            for name, value in state_to_named(single_state).items():
                torch.testing.assert_close(state_to_named(state)[name][b], value, rtol=0, atol=1e-5)


def test_forward_continues_from_a_given_state(model):
    tokens = list(range(10, 22))
    with torch.inference_mode():
        whole, _ = model.forward(tokens)
        _, mid = model.forward(tokens[:5])
        rest, _ = model.forward(tokens[5:], mid)
    torch.testing.assert_close(rest, whole[5:], rtol=0, atol=1e-5)


@pytest.mark.parametrize("token", [-1, 256, 10**6])
def test_token_out_of_range(model, token):
    with pytest.raises(TokenError, match=f"token id {token} is outside the vocabulary"):
        model.step(token, model.init_state())


def test_state_of_wrong_shape(model):
    state = model.init_state()
    state[1]["att_shift"] = torch.zeros(5)
    with pytest.raises(StateError, match=r"state\.1\.att_shift has shape \(5,\)"):
        model.step(0, state)


def test_state_with_missing_layer(model):
    with pytest.raises(StateError, match="list of 2 layer dicts"):
        model.step(0, model.init_state()[:1])
