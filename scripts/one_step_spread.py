"""How far one int8-compute step moves when started from the reference's own state (teacher-forced), beside
how far a whole rollout drifts: the yardstick a per-step verify would judge a bundle by.

    python scripts/one_step_spread.py CKPT [--weights int8|int4] [--group 32] [--steps 24]

Quantizes the checkpoint's model as an int8-compute bundle's reference does (weights, then every
projection's input rounded per group to int8 levels), rolls it over ``--steps`` tokens of the reference
text and prints, per step, max|d|/std of the logits (and the worst state tensor) for:

- ``rollout``: the rollout again with every rounded input nudged by one fp32 ulp (``build_reference``'s
  rounding spread, which verify widens its limits by), the state carried on;
- ``one-step``: the same nudge for one step only, from the reference's state before that step
  (two seeds);
- ``unrounded``: one step from the reference's state with the activation rounding left out, as a
  kernel that forgot it would compute.

One torch thread; the model is held once (a 1.5B shape takes about 7 GB).
"""

from __future__ import annotations

import argparse

import numpy as np
import torch
from torch import nn

from rwkv_edge.artifact.builder import rollout_tokens, tokenizer_name
from rwkv_edge.model import model_from_checkpoint
from rwkv_edge.model.base import nudged_inputs, round_activations
from rwkv_edge.model.sources import open_checkpoint
from rwkv_edge.model.state import state_to_named
from rwkv_edge.weights import weight_format


def moved(a: torch.Tensor, b: torch.Tensor) -> float:
    """max|a - b| / std(b)."""
    a, b = a.double().numpy(), b.double().numpy()
    return float(np.abs(a - b).max() / (b.std() or 1.0))


def moved_state(a, b) -> float:
    """The worst state tensor's max|a - b| / std(b)."""
    a, b = state_to_named(a, prefix="s"), state_to_named(b, prefix="s")
    return max(moved(a[k], b[k]) for k in b)


def row(name: str, figures: list[float]) -> None:
    print(f"{name:<22}" + " ".join(f"{x:5.2f}" for x in figures))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("checkpoint")
    parser.add_argument("--weights", choices=["int8", "int4"], default="int8")
    parser.add_argument("--group", type=int, default=32)
    parser.add_argument("--steps", type=int, default=24)
    args = parser.parse_args()
    torch.set_num_threads(1)

    model = model_from_checkpoint(open_checkpoint(args.checkpoint))
    model.quantize_weights(weight_format(args.weights).bits, args.group, in_place=True)
    rounding = {"on": True}
    for m in model.modules():
        if isinstance(m, nn.Linear):
            m.register_forward_pre_hook(
                lambda _m, inputs: (round_activations(inputs[0], args.group),) if rounding["on"] else None)
    tokens = rollout_tokens(tokenizer_name(model), model.config.vocab_size, args.steps)

    with torch.inference_mode():
        state, states, logits = model.init_state(), [], []
        for token in tokens:
            states.append(state)
            out, state = model.step(token, state)
            logits.append(out)
        states.append(state)
        print(f"{args.checkpoint}: {args.weights} weights, groups of {args.group}, activations rounded; "
              f"max|d|/std per step, steps 0..{len(tokens) - 1}")
        with nudged_inputs(model, seed=0):
            drift, nudged_state = [], model.init_state()
            for i, token in enumerate(tokens):
                out, nudged_state = model.step(token, nudged_state)
                drift.append(moved(out, logits[i]))
        row("rollout logits", drift)
        for seed in (0, 1):
            with nudged_inputs(model, seed=seed):
                one = [model.step(token, states[i]) for i, token in enumerate(tokens)]
            row(f"one-step logits ({seed})", [moved(out, logits[i]) for i, (out, _) in enumerate(one)])
            row(f"one-step state ({seed})", [moved_state(s, states[i + 1]) for i, (_, s) in enumerate(one)])
        rounding["on"] = False
        plain = [model.step(token, states[i]) for i, token in enumerate(tokens)]
        row("unrounded logits", [moved(out, logits[i]) for i, (out, _) in enumerate(plain)])
        row("unrounded state", [moved_state(s, states[i + 1]) for i, (_, s) in enumerate(plain)])


if __name__ == "__main__":
    main()
