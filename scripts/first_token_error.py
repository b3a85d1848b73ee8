"""Where a quantized RWKV-7's logits stray most from the fp32 model's: the first tokens (docs/quantization.md,
"The first token").

    python scripts/first_token_error.py CKPT [--bits 8] [--tokens 16]

Rolls out the same random tokens on the fp32 model and on the model with quantized weights, with and
without rounded activations and a quantized embedding, and prints max|d|/std of the logits at steps 0 and
1 and the median over the steps. Then, per layer, the head with the largest error after the per-head
GroupNorm (``ln_x``) at steps 0 and 2, with its output's RMS before the norm against the median head's:
at the first token each head's output is the rank-one ``(r . k) v``, and heads whose ``r . k`` nearly
cancels are tiny, so the weights' rounding changes them by several times themselves.
"""

from __future__ import annotations

import argparse
import copy

import numpy as np
import torch

from rwkv_edge.model import load_model
from rwkv_edge.model import v7


def rollout(model, tokens: list[int]) -> np.ndarray:
    with torch.inference_mode():
        state, out = model.init_state(), []
        for token in tokens:
            logits, state = model.step(token, state)
            out.append(logits)
    return torch.stack(out).numpy()


def norm_inputs(model, tokens: list[int]) -> list[list[torch.Tensor]]:
    """Per step, every layer's WKV output before ``ln_x`` (..., C)."""
    seen: list[torch.Tensor] = []
    original = v7.group_norm_heads

    def spy(y, norm):
        seen.append(y.detach().clone())
        return original(y, norm)

    v7.group_norm_heads = spy
    try:
        steps = []
        with torch.inference_mode():
            state = model.init_state()
            for token in tokens:
                seen.clear()
                _, state = model.step(token, state)
                steps.append(list(seen))
        return steps
    finally:
        v7.group_norm_heads = original


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checkpoint")
    parser.add_argument("--bits", type=int, default=8, choices=(8, 4))
    parser.add_argument("--tokens", type=int, default=16)
    args = parser.parse_args()
    torch.set_num_threads(1)
    fp32 = load_model(args.checkpoint)
    if fp32.version != "v7":
        raise SystemExit("this probe reads RWKV-7's ln_x inputs: give an RWKV-7 checkpoint")
    tokens = np.random.default_rng(0).integers(0, fp32.config.vocab_size, args.tokens).tolist()
    reference = rollout(fp32, tokens)
    print("| weights | activations rounded | embedding quantized | step 0 | step 1 | median | top-1 |")
    print("|---|---|---|---|---|---|---|")
    for activations in (False, True):
        for embedding in (False, True):
            model = copy.deepcopy(fp32)
            model.quantize_weights(args.bits, 32, activations=activations, embedding=embedding)
            got = rollout(model, tokens)
            scaled = np.abs(got - reference).max(axis=1) / reference.std(axis=1)
            top1 = int((got.argmax(axis=1) == reference.argmax(axis=1)).sum())
            print(f"| int{args.bits} | {activations} | {embedding} | {scaled[0]:.3f} | {scaled[1]:.3f} | "
                  f"{np.median(scaled):.3f} | {top1}/{len(tokens)} |")
    quantized = copy.deepcopy(fp32)
    quantized.quantize_weights(args.bits, 32, embedding=False)
    exact, rounded = norm_inputs(fp32, tokens[:3]), norm_inputs(quantized, tokens[:3])
    heads, size = fp32.config.n_embd // fp32.config.head_size, fp32.config.head_size
    eps = fp32.blocks[0].att.ln_x.eps
    for step in (0, 2):
        print(f"\nstep {step}: per layer, the head with the largest normalized error "
              "(ln_x's input RMS: that head, median head)")
        for layer, (a, b) in enumerate(zip(exact[step], rounded[step])):
            a, b = a.reshape(heads, size), b.reshape(heads, size)
            normalized = [(x - x.mean(-1, keepdim=True)) / torch.sqrt(x.var(-1, unbiased=False, keepdim=True) + eps)
                          for x in (a, b)]
            error = (normalized[0] - normalized[1]).abs().amax(-1)
            worst, spread = int(error.argmax()), a.std(-1)
            print(f"  layer {layer:2d} head {worst:2d}: error {error[worst]:.2f}, RMS {spread[worst]:.3f} "
                  f"(median {spread.median():.3f})")


if __name__ == "__main__":
    main()
