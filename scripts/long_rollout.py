"""Drift over a long rollout: torch vs onnxruntime vs TVM (this machine), fp32, each on its own state.

    python scripts/long_rollout.py [--steps 20000] [--window 1000] [--work DIR] [--json OUT.json]

Exports the bundled demo model to ONNX and compiles it for x86_64-host (into --work, a temporary
directory by default), then feeds all three backends the same tokens, the project's own Python
source read as bytes (the demo model's tokenizer), one step at a time, each backend feeding back
its own state. Per window of steps it prints, against torch, the largest max|Δ|/std of the logits
and of any state tensor, and the top-1 agreement; also onnxruntime against TVM. The figures in
docs/artifacts.md come from this script.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from rwkv_edge.compile.tvm import TvmOptions, compile_tvm
from rwkv_edge.export import OnnxOptions, export_onnx
from rwkv_edge.model import DEMO_CHECKPOINT, load_model
from rwkv_edge.runtime.torch_backend import TorchBackend
from rwkv_edge.runtime.ort_backend import OrtBackend
from rwkv_edge.runtime.tvm_backend import TvmBackend

PAIRS = (("onnxruntime", "torch"), ("tvm", "torch"), ("tvm", "onnxruntime"))


def source_tokens(n: int) -> list[int]:
    """``n`` bytes of the project's own Python source, repeated if need be."""
    root = Path(__file__).resolve().parents[1]
    text = b"".join(p.read_bytes() for p in sorted(root.rglob("*.py")) if ".venv" not in p.parts)
    return list((text * (n // len(text) + 1))[:n])


def scaled(ref, cand) -> float:
    ref, cand = np.asarray(ref, np.float64), np.asarray(cand, np.float64)
    return float(np.abs(cand - ref).max() / (ref.std() or np.abs(ref).max() or 1.0))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=20_000)
    parser.add_argument("--window", type=int, default=1_000)
    parser.add_argument("--work", type=Path, help="where the export and the bundle go (default: a temporary directory)")
    parser.add_argument("--json", type=Path, help="also write every window's figures here")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as scratch:
        work = args.work or Path(scratch)
        export_onnx(DEMO_CHECKPOINT, work / "onnx", OnnxOptions(prefill_chunk=0), log=lambda _: None)
        compile_tvm(work / "onnx", work / "tvm", TvmOptions("x86_64-host"), log=lambda _: None)
        backends = {"torch": TorchBackend(load_model(DEMO_CHECKPOINT)), "onnxruntime": OrtBackend(work / "onnx"),
                    "tvm": TvmBackend(work / "tvm")}
        windows = rollout(backends, source_tokens(args.steps), args.window)
    print(f"{'steps':>13} " + " ".join(f"{f'{a} vs {b}':>36}" for a, b in PAIRS))
    print(f"{'':>13} " + " ".join(f"{'logits':>11} {'state':>11} {'top-1':>12}" for _ in PAIRS))
    for w in windows:
        cells = [f"{w[p]['logits']:>11.2e} {w[p]['state']:>11.2e} {w[p]['top1']:>12}" for p in map("/".join, PAIRS)]
        print(f"{w['start']:>6}-{w['end']:<6} " + " ".join(cells))
    if args.json:
        args.json.write_text(json.dumps({"steps": args.steps, "windows": windows}, indent=1) + "\n")
    return 0


def rollout(backends: dict, tokens: list[int], window: int) -> list[dict]:
    """Step every backend through ``tokens`` on its own state; the worst figures per window of steps."""
    states = {name: b.init_state() for name, b in backends.items()}
    windows, current, started = [], None, time.perf_counter()
    for step, token in enumerate(tokens):
        if step % window == 0:
            current = {"start": step, "end": min(step + window, len(tokens)) - 1,
                       **{"/".join(p): {"logits": 0.0, "state": 0.0, "agree": 0} for p in PAIRS}}
            windows.append(current)
        logits = {}
        for name, backend in backends.items():
            logits[name], states[name] = backend.step(token, states[name])
        for a, b in PAIRS:
            figures = current[f"{a}/{b}"]
            figures["logits"] = max(figures["logits"], scaled(logits[b], logits[a]))
            figures["state"] = max(figures["state"], max(scaled(states[b][k], states[a][k]) for k in states[b]))
            figures["agree"] += int(np.argmax(logits[a]) == np.argmax(logits[b]))
        if (step + 1) % window == 0 or step + 1 == len(tokens):
            n = current["end"] - current["start"] + 1
            for a, b in PAIRS:
                current[f"{a}/{b}"]["top1"] = f"{current[f'{a}/{b}'].pop('agree')}/{n}"
            print(f"  {step + 1} steps, {time.perf_counter() - started:.0f} s", file=sys.stderr, flush=True)
    return windows


if __name__ == "__main__":
    sys.exit(main())
