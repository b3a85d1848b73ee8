"""Prefill tokens/s of TVM bundles (and ONNX exports) in one process, round-robin: A/B comparisons.

    python scripts/bench_prefill.py DIR [DIR ...] [--tokens 128] [--rounds 5] [--threads 2] [--steps]
                                    [--llama-cpp LLAMA/build/bin --gguf FILE.gguf]

Each DIR is a TVM bundle or an ONNX export (``rwkv-edge export onnx``). Every round runs each one's
``prefill`` on the same prompt in turn (whole chunks of its T through the prefill function, the rest
one step at a time, as ``rwkv-edge bench`` does), so that load on a shared machine falls on all of
them alike. ``--steps``: also the first TVM bundle's ``main``, one token at a time. ``--llama-cpp``:
each round also runs llama.cpp's ``llama-bench -p TOKENS -n 0 -r 1`` on ``--gguf`` with the same
threads (its prompt test, in a process of its own). Prints the logits' deviation of each DIR from
the first, the tokens/s of every round with the load average, and per mode the median, the best,
the median of its per-round speed ratio to the first DIR and, with llama.cpp, to llama.cpp.
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
parser.add_argument("--llama-cpp", help="llama.cpp's build/bin (llama-bench): its prompt test in every round")
parser.add_argument("--gguf", help="the GGUF file llama-bench runs")
args = parser.parse_args()
os.environ["TVM_NUM_THREADS"] = str(args.threads)  # before TVM starts its thread pool

import numpy as np  # noqa: E402

from rwkv_edge.artifact import read_manifest  # noqa: E402
from rwkv_edge.bench.peer import parse, prefill_tok_s, run_process  # noqa: E402


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


def llama_bench() -> float:
    """Seconds of llama-bench's one prompt repetition of ``args.tokens`` tokens."""
    argv = [os.path.join(args.llama_cpp, "llama-bench"), "-m", args.gguf, "-p", str(args.tokens), "-n", "0",
            "-t", str(args.threads), "-r", "1", "-ngl", "0", "-o", "json"]
    code, stdout, stderr, _ = run_process(argv)
    if code != 0:
        raise SystemExit(f"llama-bench failed ({code}): {stderr.strip().splitlines()[-1:]}")
    return args.tokens / prefill_tok_s(parse(stdout))[0]


timed = dict(modes)
if args.llama_cpp:
    timed["llama.cpp " + os.path.basename(args.gguf)] = llama_bench
seconds = {name: [] for name in timed}
for r in range(args.rounds):
    for name, run in timed.items():
        start = time.perf_counter()
        result = run()
        seconds[name].append(result if isinstance(result, float) else time.perf_counter() - start)
    print(f"round {r}: " + ", ".join(f"{name} {args.tokens / seconds[name][-1]:.0f}" for name in timed)
          + f" tok/s; load {os.getloadavg()[0]:.1f}", flush=True)
base = np.asarray(next(iter(seconds.values())))
peer = np.asarray(seconds[list(timed)[-1]]) if args.llama_cpp else None
for name, values in seconds.items():
    values = np.asarray(values)
    versus = f", x llama.cpp {np.median(peer / values):.2f}" if peer is not None else ""
    print(f"{name}: median {args.tokens / np.median(values):6.0f} tok/s (best {args.tokens / values.min():6.0f}), "
          f"x the first {np.median(base / values):.2f}{versus}; {args.rounds} rounds of {args.tokens} tokens, "
          f"{args.threads} threads")
print(f"load average {os.getloadavg()[0]:.1f} at the end")
