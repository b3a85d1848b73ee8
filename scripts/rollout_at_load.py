"""The reference rollout's time on an idle and on a busy machine: torch's default threads against the
threads the pipeline picks (rwkv_edge/model/threads.py).

    python scripts/rollout_at_load.py [CHECKPOINT] [--load 4] [--repeats 3]

Times ``build_reference`` (64 single-token steps, then a 16-token prompt and 128 greedy tokens) of
CHECKPOINT (default: the bundled demo model) in this process, first idle, then with ``--load``
busy-loop processes of its own running; in each condition old (every step on torch's default
intra-op threads, as before model/threads.py) and new (``threads_for``'s choice) alternate,
``--repeats`` times each. Prints the medians, old / new, and loaded / idle.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch

from rwkv_edge.artifact.builder import build_reference, tokenizer_name
from rwkv_edge.model import DEMO_CHECKPOINT, RWKVModel, load_model
from rwkv_edge.model.threads import parameter_count, threads_for


@contextmanager
def busy(n: int) -> Iterator[None]:
    """``n`` processes spinning a Python loop for the block's length, ended one by one after it."""
    spinners = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(n)]
    try:
        time.sleep(1.0)  # let the scheduler spread them
        yield
    finally:
        for p in spinners:
            p.terminate()
        for p in spinners:
            p.wait()


def rollout_s(model: RWKVModel, tokenizer: str, threads: int | None) -> float:
    """Seconds of one reference rollout on ``threads`` intra-op threads (None: the pipeline's choice)."""
    start = time.perf_counter()
    build_reference(model, tokenizer, threads)
    return time.perf_counter() - start


def measure(model: RWKVModel, tokenizer: str, default: int, repeats: int) -> dict[str, float]:
    """Median seconds of old (``default`` threads) and new, alternating, ``repeats`` each."""
    times: dict[str, list[float]] = {"old": [], "new": []}
    for _ in range(repeats):
        times["old"].append(rollout_s(model, tokenizer, default))
        times["new"].append(rollout_s(model, tokenizer, None))
    return {k: float(np.median(v)) for k, v in times.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("checkpoint", nargs="?", type=Path, default=DEMO_CHECKPOINT)
    parser.add_argument("--load", type=int, default=4, help="busy-loop processes in the loaded condition (default 4)")
    parser.add_argument("--repeats", type=int, default=3, help="rollouts per behaviour and condition (default 3)")
    args = parser.parse_args()
    default = torch.get_num_threads()  # torch's own choice in this process, before anything sets it
    model = load_model(args.checkpoint)
    tokenizer = tokenizer_name(model)
    chosen = threads_for(parameter_count(model)) or default
    print(f"{args.checkpoint}: {parameter_count(model):,} parameters; old: {default} threads (torch's default), "
          f"new: {chosen}; {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.2f}")
    rollout_s(model, tokenizer, None)  # warm-up: first calls allocate
    results = {"idle": measure(model, tokenizer, default, args.repeats)}
    with busy(args.load):
        results[f"load {args.load}"] = measure(model, tokenizer, default, args.repeats)
        loaded_average = os.getloadavg()[0]
    print(f"median of {args.repeats} rollouts (s); load average at the end of the loaded runs {loaded_average:.2f}")
    print(f"{'condition':<10} {'old':>9} {'new':>9} {'old/new':>8}")
    for condition, t in results.items():
        print(f"{condition:<10} {t['old']:9.2f} {t['new']:9.2f} {t['old'] / t['new']:8.1f}")
    idle, loaded = results["idle"], results[f"load {args.load}"]
    print(f"loaded / idle: old {loaded['old'] / idle['old']:.1f}x, new {loaded['new'] / idle['new']:.1f}x")


if __name__ == "__main__":
    main()
