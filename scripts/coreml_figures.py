"""Measure what Core ML's fp16 states and compressed weights cost, against the fp32 PyTorch model.

For the demo model and a random 2 x 128 model of every version, compile each variant, roll out
--tokens tokens on coremltools' reference evaluation of the ML program (not Apple's runtime) and on
PyTorch, each on its own state, and print a Markdown table of max|Δ|/std of the logits (first 100
steps, last 100 steps, all) and top-1 agreement; JSON goes to --out.

    python scripts/coreml_figures.py --tokens 1000 --out coreml-figures.json
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np

from rwkv_edge.compile.coreml import CoreMLOptions, compile_coreml
from rwkv_edge.model import LANGUAGE_ARCHITECTURES, DEMO_CHECKPOINT, load_model
from rwkv_edge.model.synthetic import make_checkpoint, save_checkpoint
from rwkv_edge.artifact.builder import rollout_tokens
from rwkv_edge.runtime.coreml_backend import CoreMLBackend
from rwkv_edge.runtime.torch_backend import TorchBackend
from rwkv_edge.verify import compare_rollouts

VARIANTS = {  # name -> compile options (all fp16 compute)
    "explicit fp32 state": CoreMLOptions(prefill_chunk=0),
    "stateful fp16 state": CoreMLOptions(stateful=True, prefill_chunk=0),
    "explicit, int8 weights": CoreMLOptions(weights="int8", prefill_chunk=0),
    "explicit, int4 weights": CoreMLOptions(deployment="iOS18", weights="int4", prefill_chunk=0),
}


def measure(checkpoint: Path, variant: str, n: int, work: Path) -> dict:
    out = work / variant.replace(" ", "-").replace(",", "")
    compile_coreml(checkpoint, out, VARIANTS[variant], log=lambda _: None)
    candidate = CoreMLBackend(out, executor="mil")
    reference = TorchBackend(load_model(checkpoint))
    tokens = rollout_tokens(candidate.manifest.tokenizer, candidate.vocab_size, n)
    report = compare_rollouts(reference, candidate, tokens, "fp16")
    scaled = np.asarray(report.errors["logits"].scaled)
    return {"first_100": float(scaled[:100].max()), "last_100": float(scaled[-100:].max()),
            "all": float(scaled.max()), "top1": report.top1_agreement, "steps": report.n_steps}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", type=int, default=1000)
    parser.add_argument("--out", type=Path, default=Path("coreml-figures.json"))
    parser.add_argument("--variants", nargs="*", default=list(VARIANTS), choices=list(VARIANTS))
    parser.add_argument("--models", nargs="*", default=["demo", *LANGUAGE_ARCHITECTURES], choices=["demo", *LANGUAGE_ARCHITECTURES])
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        models = {"demo (v7 4x128)": DEMO_CHECKPOINT} if "demo" in args.models else {}
        for version in (v for v in LANGUAGE_ARCHITECTURES if v in args.models):
            path = work / f"{version}.pth"
            save_checkpoint(make_checkpoint(version, time_state=version in ("v5", "v6")), path)
            models[f"{version} 2x128 random"] = path
        for model, checkpoint in models.items():
            for variant in args.variants:
                start = time.perf_counter()
                row = {"model": model, "variant": variant, **measure(checkpoint, variant, args.tokens, work / model)}
                rows.append(row)
                print(f"{model:18} {variant:24} {row['first_100']:.2e} {row['last_100']:.2e} {row['all']:.2e} "
                      f"{row['top1']:.1%} ({time.perf_counter() - start:.0f} s)", flush=True)
    args.out.write_text(json.dumps(rows, indent=2) + "\n")
    print(f"\n| model | variant | logits max|Δ|/std, steps 1-100 | last 100 | all {args.tokens} | top-1 |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['model']} | {r['variant']} | {r['first_100']:.2e} | {r['last_100']:.2e} | {r['all']:.2e} | {r['top1']:.1%} |")


if __name__ == "__main__":
    main()
