"""Prefill tokens/s of TVM bundles (and ONNX exports) in one process, round-robin: A/B comparisons.

    python scripts/bench_prefill.py DIR [DIR ...] [--tokens 128] [--rounds 5] [--threads 2] [--steps]

Each DIR is a TVM bundle or an ONNX export (``rwkv-edge export onnx``). Every round runs each one's
``prefill`` on the same prompt in turn (whole chunks of its T through the prefill function, the rest
one step at a time, as ``rwkv-edge bench`` does), so that load on a shared machine falls on all of
them alike. ``--steps``: also the first TVM bundle's ``main``, one token at a time. Prints the
logits' deviation of each from the first DIR, the tokens/s of every round with the load average, and
per DIR the median, the best, and the median of its per-round time ratio to the first DIR.
"""

import argparse
import os
import time

parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
parser.add_argument("dirs", nargs="+")
parser.add_argument("--tokens", type=int, default=128, help="prompt length (default 128)")
parser.add_argument("--rounds", type=int, default=5)
parser.add_argument("--threads", type=int, default=2)
parser.add_argument("--steps", action="store_true", help="also the first TVM bundle's main, one token at a time")
args = parser.parse_args()
os.environ["TVM_NUM_THREADS"] = str(args.threads)  # before TVM starts its thread pool

import numpy as np  # noqa: E402

from rwkv_edge.artifact import read_manifest  # noqa: E402


def open_backend(directory: str):
    """A TVM bundle's or an ONNX export's backend, ``args.threads`` threads."""
    if read_manifest(directory).kind == "onnx":
        from rwkv_edge.runtime.ort_backend import OrtBackend

        return OrtBackend(directory, threads=args.threads)
    from rwkv_edge.runtime.tvm_backend import TvmBackend

    return TvmBackend(directory)


def steps(backend, tokens: list[int]):
    """The prompt through ``step`` one token at a time: (logits, state) after the last."""
    state = backend.init_state()
    for token in tokens:
        logits, state = backend.step(token, state)
    return logits, state


backends = {directory: open_backend(directory) for directory in args.dirs}
first = next(iter(backends.values()))
prompt = np.random.default_rng(0).integers(0, first.vocab_size, args.tokens).tolist()
modes = {f"{d} (T={b.chunk})": (lambda b=b: b.prefill(prompt, b.init_state())) for d, b in backends.items()}
if args.steps:
    modes[f"{args.dirs[0]} steps"] = lambda: steps(first, prompt)
out = {name: run()[0] for name, run in modes.items()}  # warm-up, and the logits after the prompt
ref = next(iter(out.values()))
print("max|Δ logits|/std vs the first: " + ", ".join(f"{name} {np.abs(v - ref).max() / ref.std():.1e}"
                                                   for name, v in out.items()))
seconds = {name: [] for name in modes}
for r in range(args.rounds):
    for name, run in modes.items():
        start = time.perf_counter()
        run()
        seconds[name].append(time.perf_counter() - start)
    print(f"round {r}: " + ", ".join(f"{name} {args.tokens / seconds[name][-1]:.0f}" for name in modes)
          + f" tok/s; load {os.getloadavg()[0]:.1f}", flush=True)
base = np.asarray(next(iter(seconds.values())))
for name, values in seconds.items():
    ratio = np.median(base / np.asarray(values))
    print(f"{name}: median {args.tokens / np.median(values):6.0f} tok/s (best {args.tokens / min(values):6.0f}), "
          f"x the first {ratio:.2f}; {args.rounds} rounds of {args.tokens} tokens, {args.threads} threads")
