"""The rounding spread an int8-compute build records (artifact/builder.py ``build_reference(spread=True)``,
model/base.py ``nudged_inputs``) and the limits it widens (verify/tolerances.py ``widened``)."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

from rwkv_edge.artifact.reference import RoundingSpread
from rwkv_edge.artifact.builder import build_reference
from rwkv_edge.model import model_from_state_dict
from rwkv_edge.model.base import nudged_inputs
from rwkv_edge.model.synthetic import make_checkpoint
from rwkv_edge.verify.tolerances import INT4_INT8, SPREAD_CEILING, SPREAD_FACTOR, beyond_judgement, widened


@pytest.fixture(scope="module")
def model():
    return model_from_state_dict(make_checkpoint("v7"))


def test_a_nudge_moves_every_projection_input_by_one_ulp_and_goes_away(model):
    seen = []
    linear = model.blocks[0].att.key
    handle = linear.register_forward_pre_hook(lambda _m, args: seen.append(args[0].clone()))
    with torch.inference_mode():
        model.step(3, model.init_state())
        with nudged_inputs(model, seed=0):
            model.step(3, model.init_state())
        model.step(3, model.init_state())
    handle.remove()
    plain, nudged, after = (x.numpy() for x in seen)
    ulps = np.abs(nudged - plain) / np.spacing(np.abs(plain))
    assert np.all(ulps == 1) and 0.3 < np.mean(nudged > plain) < 0.7
    np.testing.assert_array_equal(after, plain)


def test_the_spread_is_what_rounding_does_to_a_nudge(model):
    """Without the activation rounding a one-ulp nudge moves the rollout by fp32 rounding; with it, an
    input near a rounding boundary flips to the next level and the logits move a thousand times more."""
    spreads = {}
    for activations in (False, True):
        rounded = copy.deepcopy(model)
        rounded.quantize_weights(4, 32, activations=activations)
        spreads[activations] = build_reference(rounded, "unknown", spread=True).spread
    assert spreads[False].logits < 1e-5 and spreads[False].state < 1e-5 and spreads[False].top1 == 1
    assert spreads[True].logits > 1000 * spreads[False].logits


def test_limits_widen_to_the_recorded_spread_and_no_further():
    assert widened(INT4_INT8, RoundingSpread(1e-2, 1e-3, 1.0)) is INT4_INT8  # a small model: the fixed limits
    wide = widened(INT4_INT8, RoundingSpread(0.1, 0.2, 61 / 64))
    assert wide.logits_scaled == pytest.approx(SPREAD_FACTOR * 0.1)
    assert wide.state_scaled == pytest.approx(SPREAD_FACTOR * 0.2)
    assert wide.top1 == pytest.approx(1 - SPREAD_FACTOR * 3 / 64)
    assert "rounding spread" in wide.name and wide.greedy_identical is False
    huge = widened(INT4_INT8, RoundingSpread(5.0, 5.0, 0.0))
    assert huge.logits_scaled == huge.state_scaled == SPREAD_CEILING and huge.top1 == 0


def test_a_spread_past_the_ceiling_is_beyond_a_rollouts_judgement():
    """The 1.5B-shape int8 bundle's recorded spread (1.6 logits, 0.93 state) leaves nothing to judge by; the
    0.1B int4 one's (9.1e-2, 1.7e-1) does."""
    assert beyond_judgement(RoundingSpread(1.6, 0.93, 0.875))
    assert not beyond_judgement(RoundingSpread(9.1e-2, 1.7e-1, 61 / 64))
