"""Quantization quality: the bundled demo model's perplexity on held-out text with fp32, int8 and int4
weights, on PyTorch, onnxruntime and any given artifact (a TVM bundle, another export); and random
v4-v7 models' logits with int8/int4 weights against fp32.

    python scripts/quality.py [--bytes 16384] [--groups 32,64,128] [--artifacts DIR ...] [--work DIR] [--json OUT]
    python scripts/quality.py --random-only

Held-out text: the demo model (model/demo/train.py) was trained on the running Python's standard
library sources with every 20th file held out for validation; this script reads the first --bytes
of exactly that held-out stream (``load_corpus()[1]``: abc.py, asyncio/mixins.py, base64.py, ...),
which the model never trained on. Tokens are bytes, so the cross-entropy is in bits per byte.

Each weight format is the PyTorch model with ``quantize_weights(bits, group)`` (what every quantized
artifact computes with), its ONNX export (``export onnx --weights``, MatMulNBits) run on onnxruntime,
and each --artifacts directory (a TVM bundle of the demo model with int8/int4 weights, say) run
through the runtime registry. PyTorch reads the whole text in one call (the sequence form); every
artifact is fed it one step at a time from the initial state, feeding back its own state. Against
the fp32 PyTorch logits of the same positions: the change in bits/byte (paired, with its standard
error), max|d|/std (std of the fp32 logits over all positions) and top-1 agreement. An artifact is
also compared with the PyTorch model with its own weights (max|d|/std): that it computes what it should.
docs/quantization.md has the method and the measured tables.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from rwkv_edge.artifact import open_artifact, sha256_file
from rwkv_edge.errors import OptionError, RwkvEdgeError
from rwkv_edge.export import OnnxOptions, export_onnx
from rwkv_edge.model import DEMO_CHECKPOINT, load_model, model_from_state_dict
from rwkv_edge.model.demo.train import load_corpus
from rwkv_edge.model.synthetic import VERSIONS, make_checkpoint
from rwkv_edge.weights import GROUP_SIZES
from rwkv_edge.runtime.registry import backend_of, entry_of_kind

BITS = {"int8": 8, "int4": 4}


@dataclass(frozen=True)
class Row:
    """One weight format on one backend, over the same tokens."""

    backend: str  # "torch", "onnxruntime", or the artifact's kind
    weights: str  # fp32, int8, int4
    group: int  # weights per scale; 0 for fp32
    bits_per_byte: float  # mean cross-entropy of the next byte, in bits
    perplexity: float  # per byte: 2 ** bits_per_byte
    vs_fp32_bits: float  # bits_per_byte - fp32 torch's, over the same positions
    vs_fp32_bits_se: float  # its standard error (of the mean of the per-position differences)
    vs_fp32_max_d_std: float  # max|logits - fp32 torch logits| / std(fp32 torch logits)
    vs_fp32_top1: float  # fraction of positions whose argmax equals fp32 torch's
    vs_own_torch_max_d_std: float | None = None  # artifacts: against the torch model with the same weights
    source: str = ""  # the artifact directory, for artifacts

    @property
    def label(self) -> str:
        return f"{self.weights} g{self.group}" if self.group else self.weights


def held_out_tokens(n: int) -> list[int]:
    """The first ``n`` bytes of the demo model's held-out validation stream."""
    _, val = load_corpus()
    if not 2 <= n <= len(val):
        raise OptionError(f"--bytes must be between 2 and {len(val)} (the held-out stream's length), got {n}")
    return val[:n].tolist()


def torch_logits(model: torch.nn.Module, tokens: list[int]) -> np.ndarray:
    """(T, V) logits of every position, from the initial state (the sequence form: one call)."""
    with torch.no_grad():
        logits, _ = model(tokens)
    return logits.numpy()


def demo_model(weights: str, group: int) -> torch.nn.Module:
    model = load_model(DEMO_CHECKPOINT)
    if weights != "fp32":
        model.quantize_weights(BITS[weights], group)
    return model


def stepped_logits(backend, tokens: list[int]) -> np.ndarray:
    """(T, V) logits of ``backend`` fed one token per step, each from the state the last step returned."""
    state, rows = backend.init_state(), []
    for token in tokens:
        logits, state = backend.step(token, state)
        rows.append(np.asarray(logits, np.float32).reshape(-1))
    return np.stack(rows)


def bits_per_token(logits: np.ndarray, tokens: list[int]) -> np.ndarray:
    """(T-1,) cross-entropy of each next token under the logits before it, in bits."""
    x = logits[:-1].astype(np.float64)  # (T-1, V)
    x -= x.max(axis=1, keepdims=True)
    log_z = np.log(np.exp(x).sum(axis=1))
    target = np.asarray(tokens[1:])
    return (log_z - x[np.arange(len(target)), target]) / math.log(2)


def max_d_std(reference: np.ndarray, candidate: np.ndarray) -> float:
    reference = reference.astype(np.float64)
    return float(np.abs(candidate.astype(np.float64) - reference).max() / reference.std())


def top1(reference: np.ndarray, candidate: np.ndarray) -> float:
    return float((reference.argmax(-1) == candidate.argmax(-1)).mean())


def row(backend: str, weights: str, group: int, logits: np.ndarray, tokens: list[int], fp32: np.ndarray,
        own: np.ndarray | None = None, source: str = "") -> Row:
    bits = bits_per_token(logits, tokens)
    change = bits - bits_per_token(fp32, tokens)  # paired: the same positions
    return Row(backend, weights, group, float(bits.mean()), float(2 ** bits.mean()), float(change.mean()),
               float(change.std(ddof=1) / math.sqrt(len(change))), max_d_std(fp32, logits), top1(fp32, logits),
               None if own is None else max_d_std(own, logits), source)


def demo_rows(tokens: list[int], formats: list[tuple[str, int]], artifacts: list[Path], work: Path, threads: int,
              log=print) -> list[Row]:
    """Torch and onnxruntime per format, then every artifact; all against fp32 torch."""
    torch_out = {}
    for weights, group in formats:
        start = time.perf_counter()
        torch_out[weights, group] = torch_logits(demo_model(weights, group), tokens)
        log(f"torch {weights} g{group}: {time.perf_counter() - start:.0f} s")
    fp32 = torch_out["fp32", 0]
    rows = [row("torch", w, g, logits, tokens, fp32) for (w, g), logits in torch_out.items()]
    for weights, group in formats:
        out = work / f"onnx-{weights}-g{group}"
        export_onnx(DEMO_CHECKPOINT, out, OnnxOptions(weights, prefill_chunk=0, group_size=group or None),
                    log=lambda _: None)
        rows.append(_artifact_row(out, tokens, fp32, torch_out, threads, log))
    rows += [_artifact_row(directory, tokens, fp32, torch_out, threads, log) for directory in artifacts]
    return rows


def _artifact_row(directory: Path, tokens: list[int], fp32: np.ndarray,
                  torch_out: dict[tuple[str, int], np.ndarray], threads: int, log) -> Row:
    artifact = open_artifact(directory)
    m = artifact.manifest
    if m.source.get("sha256") != sha256_file(DEMO_CHECKPOINT):
        raise OptionError(f"{directory}: not an artifact of the bundled demo model (its source sha256 differs)")
    key = (m.weights, m.group_size if m.weights in BITS else 0)
    if key not in torch_out:
        raise OptionError(f"{directory}: {m.weights} weights in groups of {m.group_size}; add that group to --groups")
    backend = backend_of(artifact, threads=threads if "threads" in entry_of_kind(m.kind).options else None)
    start = time.perf_counter()
    try:
        logits = stepped_logits(backend, tokens)
    finally:
        backend.close()
    name = "onnxruntime" if m.kind == "onnx" else m.kind
    log(f"{name} {m.weights} g{key[1]} ({directory}): {time.perf_counter() - start:.0f} s")
    return row(name, m.weights, key[1], logits, tokens, fp32, torch_out[key], str(directory))


def random_rows(versions: tuple[str, ...], groups: list[int], steps: int, log=print) -> list[dict]:
    """Per version: a seeded random model (2 layers x 128, vocab 256), ``steps`` random tokens; int8 and
    int4 logits against fp32 (both PyTorch)."""
    rows = []
    tokens = np.random.default_rng(0).integers(0, 256, steps).tolist()
    for version in versions:
        tensors = make_checkpoint(version, n_layer=2, n_embd=128, vocab_size=256, head_size=64, seed=0)
        fp32 = torch_logits(model_from_state_dict(tensors), tokens)
        for weights in BITS:
            for group in groups:
                model = model_from_state_dict(tensors)
                try:
                    model.quantize_weights(BITS[weights], group)
                except OptionError:  # v5 and v6 FFNs are 3.5 x 128 = 448 wide: 128 does not divide it
                    continue
                logits = torch_logits(model, tokens)
                rows.append({"version": version, "weights": weights, "group": group,
                             "max_d_std": max_d_std(fp32, logits), "top1": top1(fp32, logits)})
        log(f"random {version}: done")
    return rows


def markdown_demo(rows: list[Row]) -> str:
    lines = ["| backend | weights | bits/byte | perplexity | bits/byte - fp32 (± s.e.) | max\\|d\\|/std vs fp32 | "
             "top-1 vs fp32 | max\\|d\\|/std vs torch, same weights |",
             "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        own = f"{r.vs_own_torch_max_d_std:.2e}" if r.vs_own_torch_max_d_std is not None else "-"
        lines.append(f"| {r.backend} | {r.label} | {r.bits_per_byte:.4f} | {r.perplexity:.4f} | "
                     f"{r.vs_fp32_bits:+.4f} (± {r.vs_fp32_bits_se:.4f}) | {r.vs_fp32_max_d_std:.4f} | "
                     f"{100 * r.vs_fp32_top1:.2f}% | {own} |")
    return "\n".join(lines)


def markdown_random(rows: list[dict]) -> str:
    lines = ["| version | weights | group | max\\|d\\|/std vs fp32 | top-1 vs fp32 |", "|---|---|---|---|---|"]
    lines += [f"| {r['version']} | {r['weights']} | {r['group']} | {r['max_d_std']:.4f} | {100 * r['top1']:.1f}% |"
              for r in rows]
    return "\n".join(lines)


def _groups(text: str) -> list[int]:
    try:
        groups = [int(g) for g in text.split(",") if g.strip()]
    except ValueError:
        raise OptionError(f"--groups: comma-separated integers, got {text!r}") from None
    bad = [g for g in groups if g not in GROUP_SIZES]
    if bad or not groups:
        raise OptionError(f"--groups: each one of {', '.join(map(str, GROUP_SIZES))}, got {text!r}")
    return groups


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--bytes", type=int, default=16384, help="held-out bytes to score (default 16384)")
    parser.add_argument("--groups", default="32,64", help="int8/int4 group sizes (default 32,64)")
    parser.add_argument("--artifacts", type=Path, nargs="*", default=[],
                        help="artifact directories of the demo model to score too (TVM bundles, exports)")
    parser.add_argument("--random-steps", type=int, default=64, help="random tokens per random model (default 64)")
    parser.add_argument("--random-only", action="store_true", help="only the random v4-v7 table")
    parser.add_argument("--work", type=Path, help="where the ONNX exports go (default: a temporary directory)")
    parser.add_argument("--json", type=Path, help="also write every figure here")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch and onnxruntime threads (default 1: on a shared machine 2 threads ran 20x slower)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    try:
        groups = _groups(args.groups)
        result: dict = {"bytes": args.bytes, "groups": groups}
        if not args.random_only:
            tokens = held_out_tokens(args.bytes)
            formats = [("fp32", 0)] + [(w, g) for w in BITS for g in groups]
            with tempfile.TemporaryDirectory() as scratch:
                rows = demo_rows(tokens, formats, args.artifacts, args.work or Path(scratch), args.threads,
                                 lambda s: print(s, flush=True))
            result["demo"] = [asdict(r) for r in rows]
            print(f"\nDemo model, first {args.bytes} bytes of the held-out standard-library files:\n")
            print(markdown_demo(rows))
        random = random_rows(VERSIONS, groups, args.random_steps, lambda s: print(s, flush=True))
        result["random"] = random
        print(f"\nRandom models (2 layers x 128, vocab 256, seed 0), {args.random_steps} random tokens, PyTorch:\n")
        print(markdown_random(random))
    except RwkvEdgeError as e:
        print(f"quality.py: error: {e}", file=sys.stderr)
        return 1
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
