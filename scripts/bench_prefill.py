"""Prefill tokens/s of TVM bundles and ONNX exports in one process, round-robin, 2 threads each.

    python scripts/bench_prefill.py DIR [--tokens 64] [--rounds 5]

DIR holds onnx-16, onnx-32 (``rwkv-edge export onnx CKPT --prefill-chunk T``) and tvm-16, tvm-32
(``rwkv-edge compile DIR/onnx-T --target x86_64-host``) of one checkpoint. Modes: each bundle's
``prefill`` (T tokens per call, the remainder in steps), the T=16 bundle's ``main`` one token at a
time, and onnxruntime's prefill graphs. Prints the logits' deviation from the step-by-step run, the
tokens/s of every round with the load average, and the median per mode.
"""

import argparse
import os
import time

os.environ.setdefault("TVM_NUM_THREADS", "2")

import numpy as np

from rwkv_edge.runtime.ort_backend import OrtBackend
from rwkv_edge.runtime.tvm_backend import TvmBackend

parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
parser.add_argument("dir")
parser.add_argument("--tokens", type=int, default=64, help="prompt length (the bench's default: 64)")
parser.add_argument("--rounds", type=int, default=5)
args = parser.parse_args()
n, rounds, big = args.tokens, args.rounds, args.dir
tvm16, tvm32 = TvmBackend(f"{big}/tvm-16"), TvmBackend(f"{big}/tvm-32")
ort16, ort32 = OrtBackend(f"{big}/onnx-16", threads=2), OrtBackend(f"{big}/onnx-32", threads=2)
prompt = np.random.default_rng(0).integers(0, tvm16.vocab_size, n).tolist()

def steps(backend: TvmBackend, tokens: list[int]):
    """The prompt through ``main`` one token at a time: (logits, state) after the last."""
    state = backend.init_state()
    for token in tokens:
        logits, state = backend.step(token, state)
    return logits, state


modes = {"tvm prefill T=16": lambda: tvm16.prefill(prompt, tvm16.init_state()),
         "tvm prefill T=32": lambda: tvm32.prefill(prompt, tvm32.init_state()),
         "tvm steps": lambda: steps(tvm16, prompt),
         "ort prefill T=16": lambda: ort16.prefill(prompt, ort16.init_state()),
         "ort prefill T=32": lambda: ort32.prefill(prompt, ort32.init_state())}
out = {name: run() for name, run in modes.items()}  # warm-up, and the logits after the prompt
ref = out["tvm steps"][0]
print("max|Δ logits|/std vs tvm steps: "
      + ", ".join(f"{name} {np.abs(v[0] - ref).max() / ref.std():.1e}" for name, v in out.items()))
seconds = {name: [] for name in modes}
for r in range(rounds):
    for name, run in modes.items():
        start = time.perf_counter()
        run()
        seconds[name].append(time.perf_counter() - start)
    print(f"round {r}: " + ", ".join(f"{name} {n / seconds[name][-1]:.0f}" for name in modes)
          + f" tok/s; load {os.getloadavg()[0]:.1f}", flush=True)
for name, values in seconds.items():
    print(f"{name:17s} median {n / np.median(values):6.0f} tok/s (best {n / min(values):6.0f}) over {rounds} rounds of {n} tokens")
