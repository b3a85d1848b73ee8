"""How the official Vision-RWKV CUDA forward combines its per-chunk sums, against the paper, in float64.

    python scripts/vision_kernel_study.py [--seed 0] [--images 4] [--json OUT.json]

The official kernel (OpenGVLab/Vision-RWKV, classification/mmcls_custom/models/backbones/cuda/
wkv_cuda.cu, and cuda_new/bi_wkv_kernel.cu, which combines the chunks the same way) is re-implemented
here step by step in numpy float64, vectorised over channels: T is split into 32 chunks of
ceil(T / 32) tokens (one thread each), every chunk sums its tokens rightwards from its first token
(c, d) and leftwards as seen from just past its last token (a, b); the chunks' sums are combined
(the left-hand initialisation from the chunks before, the right-hand one from the chunk itself and
those after, minus the chunk's first token), then each thread walks its tokens, writing y and
updating a, b (multiply by e^-w, add the token) and c, d (multiply by e^w, subtract the next token).

It is compared with the paper's closed form, computed directly in O(T^2), and with a closed form of
what the kernel computes (derived in docs/vision.md), on the Bi-WKV inputs of a VRWKV-T-shaped
model (192 x 12, 224 px: T = 196, patch 16) with seeded random weights, fed random images. Then the
project's two scans (rwkv_edge.model.vision: bi_wkv and bi_wkv_kernel) are checked against the
matching one, and the whole model's logits are compared between the two modes. docs/vision.md
quotes this script's output.
"""

from __future__ import annotations

import argparse
import json

import numpy as np
import torch

from rwkv_edge.model.synthetic import make_vision_checkpoint
from rwkv_edge.model.vision import bi_wkv, bi_wkv_kernel, vision_model_from_state_dict

TOKEN_SPLIT = 32  # threads per channel along T
MIN_VALUE = -1e38
EPS = 1e-6


def kernel_forward(w: np.ndarray, u: np.ndarray, k: np.ndarray, v: np.ndarray, eps: float = EPS) -> np.ndarray:
    """The official forward kernel's arithmetic, one "thread" (chunk) after another.
    w, u: (C,); k, v: (T, C) -> y (T, C)."""
    T, C = k.shape
    n = (T + TOKEN_SPLIT - 1) // TOKEN_SPLIT  # _T
    start = [n * tid for tid in range(TOKEN_SPLIT)]  # _t
    length = [min(T - s, n) for s in start]  # _tokenLength (<= 0 for idle threads)
    # phase 1: each thread's own sums
    Sc, Sd, So1, Sa, Sb, So2 = (np.zeros((TOKEN_SPLIT, C)) for _ in range(6))
    for tid in range(TOKEN_SPLIT):
        a = b = c = d = np.zeros(C)
        o1 = o2 = np.full(C, MIN_VALUE)
        s, L = start[tid], length[tid]
        for i in range(s, s + L):
            no = np.maximum(o1, k[i] - w * (i - s))
            e1, e3 = np.exp(o1 - no), np.exp(k[i] - w * (i - s) - no)
            c, d, o1 = e1 * c + e3 * v[i], e1 * d + e3, no
            ni = 2 * s + L - 1 - i
            exp_w = s + L - ni
            no = np.maximum(o2, k[ni] - w * exp_w)
            e2, e3 = np.exp(o2 - no), np.exp(k[ni] - w * exp_w - no)
            a, b, o2 = e2 * a + e3 * v[ni], e2 * b + e3, no
        Sc[tid], Sd[tid], So1[tid], Sa[tid], Sb[tid], So2[tid] = c, d, o1, a, b, o2
    # phase 2 and 3: combine, then walk the thread's tokens
    y = np.zeros((T, C))
    for tid in range(TOKEN_SPLIT):
        s, L = start[tid], length[tid]
        if L <= 0:
            continue
        a = b = np.zeros(C)
        o2 = np.full(C, MIN_VALUE)
        for i in range(tid):  # the left-hand initialisation
            exp_w = (tid - i - 1) * n
            no = np.maximum(So2[i] - w * exp_w, o2)
            a = a * np.exp(o2 - no) + Sa[i] * np.exp(So2[i] - w * exp_w - no)
            b = b * np.exp(o2 - no) + Sb[i] * np.exp(So2[i] - w * exp_w - no)
            o2 = no
        c = d = np.zeros(C)
        o1 = np.full(C, MIN_VALUE)
        for i in range(tid, TOKEN_SPLIT):  # the right-hand initialisation
            exp_w = (i - tid) * n
            no = np.maximum(So1[i] - w * exp_w, o1)
            c = c * np.exp(o1 - no) + Sc[i] * np.exp(So1[i] - w * exp_w - no)
            d = d * np.exp(o1 - no) + Sd[i] * np.exp(So1[i] - w * exp_w - no)
            o1 = no
        c = c - np.exp(k[s] - o1) * v[s]
        d = d - np.exp(k[s] - o1)
        for i in range(s, s + L):
            no = np.maximum(np.maximum(o1, u + k[i]), o2)
            e1, e2, e3 = np.exp(o1 - no), np.exp(o2 - no), np.exp(u + k[i] - no)
            y[i] = (c * e1 + a * e2 + e3 * v[i]) / (d * e1 + b * e2 + e3 + eps)
            i2 = (i + 1) % T
            no = np.maximum(o2 - w, k[i])
            e2, e3 = np.exp(o2 - w - no), np.exp(k[i] - no)
            a, b, o2 = e2 * a + e3 * v[i], e2 * b + e3, no
            no = np.maximum(o1 + w, k[i2] + w)
            e1, e3 = np.exp(o1 + w - no), np.exp(k[i2] + w - no)
            c, d, o1 = e1 * c - e3 * v[i2], e1 * d - e3, no
    return y


def closed_form(w: np.ndarray, u: np.ndarray, k: np.ndarray, v: np.ndarray, kernel: bool = False) -> np.ndarray:
    """The paper's Bi-WKV summed directly (O(T^2)); with ``kernel``, the kernel's weights instead:
    distance |t - i| to the right and across chunks to the left, plus (1 - e^w) e^{k_i + (t - i) w} for
    the tokens i of t's chunk with chunk start < i <= t.  w, u: (C,); k, v: (T, C) -> (T, C)."""
    T = k.shape[0]
    t, i = np.arange(T)[:, None], np.arange(T)[None, :]
    dist = np.abs(t - i).astype(np.float64)[..., None]  # (T, T, 1)
    if not kernel:
        logit = np.where((t == i)[..., None], u + k[None], -(dist - 1) * w + k[None])  # (T, T, C)
        weight = np.exp(logit - logit.max(1, keepdims=True))
        return (weight * v[None]).sum(1) / weight.sum(1)
    n = (T + TOKEN_SPLIT - 1) // TOKEN_SPLIT
    chunk_start = (t // n) * n
    left = np.where((i >= chunk_start)[..., None], -(dist - 1) * w, -dist * w) + k[None]
    weight = np.where((i < t)[..., None], np.exp(left), 0.0)
    weight = weight + np.where((i > t)[..., None], np.exp(-dist * w + k[None]), 0.0)
    weight = weight + np.where(((i > chunk_start) & (i <= t))[..., None], (1 - np.exp(w)) * np.exp(dist * w + k[None]), 0.0)
    weight = weight + np.where((t == i)[..., None], np.exp(u + k[None]), 0.0)
    return (weight * v[None]).sum(1) / weight.sum(1)


def recorded_inputs(seed: int, images: int) -> tuple[torch.nn.Module, torch.Tensor, list[tuple[np.ndarray, ...]]]:
    """A VRWKV-T-shaped random model (float64), its images, and (w, u, k, v) of every Bi-WKV call."""
    tensors = make_vision_checkpoint(embed_dims=192, depth=12, patch_size=16, grid=14, num_classes=1000, seed=seed)
    model = vision_model_from_state_dict(tensors, dtype=torch.float64)
    x = torch.randn(images, 3, 224, 224, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    calls = []

    def record(w, u, k, v):
        calls.extend((w.numpy(), u.numpy(), k[b].numpy(), v[b].numpy()) for b in range(k.shape[0]))
        return bi_wkv(w, u, k, v)

    for layer in model.layers:
        layer.att.wkv = record
    with torch.no_grad():
        model(x)
    return model, x, calls


def stats(a: np.ndarray, b: np.ndarray) -> dict[str, float]:
    d = np.abs(a - b)
    return {"max_abs": float(d.max()), "max_abs_over_std": float(d.max() / b.std())}


def worst(rows: list[dict[str, float]]) -> dict[str, float]:
    return {key: max(r[key] for r in rows) for key in rows[0]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--images", type=int, default=4)
    parser.add_argument("--json", help="write the figures here")
    args = parser.parse_args()
    model, images, calls = recorded_inputs(args.seed, args.images)
    w_all = np.concatenate([c[0] for c in calls])
    print(f"{len(calls)} Bi-WKV calls (12 layers x {args.images} images), T = {calls[0][2].shape[0]}, "
          f"C = {calls[0][2].shape[1]}; w = spatial_decay / T in [{w_all.min():.4f}, {w_all.max():.4f}]")
    rows: dict[str, list[dict[str, float]]] = {name: [] for name in (
        "kernel vs paper", "kernel (EPS 0) vs paper", "kernel vs its closed form (EPS 0)",
        "bi_wkv vs paper", "bi_wkv_kernel vs kernel")}
    for w, u, k, v in calls:
        paper, kernel = closed_form(w, u, k, v), kernel_forward(w, u, k, v)
        kernel_no_eps = kernel_forward(w, u, k, v, eps=0.0)
        tw, tu, tk, tv = (torch.from_numpy(a) for a in (w, u, k, v))
        rows["kernel vs paper"].append(stats(kernel, paper))
        rows["kernel (EPS 0) vs paper"].append(stats(kernel_no_eps, paper))
        rows["kernel vs its closed form (EPS 0)"].append(stats(kernel_no_eps, closed_form(w, u, k, v, kernel=True)))
        rows["bi_wkv vs paper"].append(stats(bi_wkv(tw, tu, tk, tv).numpy(), paper))
        rows["bi_wkv_kernel vs kernel"].append(stats(bi_wkv_kernel(tw, tu, tk, tv).numpy(), kernel))
    report = {name: worst(r) for name, r in rows.items()}
    for name, figures in report.items():
        print(f"{name:<36} max|d| {figures['max_abs']:.3e}   max|d|/std {figures['max_abs_over_std']:.3e}")
    with torch.no_grad():
        paper_logits = model(images)
        for layer in model.layers:
            layer.att.wkv = bi_wkv_kernel
        kernel_logits = model(images)
    logits = stats(kernel_logits.numpy(), paper_logits.numpy())
    logits["top1_agreement"] = float((kernel_logits.argmax(1) == paper_logits.argmax(1)).double().mean())
    report["model logits, kernel vs paper"] = logits
    print(f"{'model logits, kernel vs paper':<36} max|d| {logits['max_abs']:.3e}   "
          f"max|d|/std {logits['max_abs_over_std']:.3e}   top-1 agreement {logits['top1_agreement']:.2f}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(report, f, indent=2)


if __name__ == "__main__":
    main()
