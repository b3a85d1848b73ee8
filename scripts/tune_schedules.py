"""Pick the GEMV tile width and K unroll of a TVM CPU target by timing the decode step on this machine.

    python scripts/tune_schedules.py ONNX_DIR [--target x86_64-host] [--tiles 16,32,64,128] [--unrolls 1,4,8]

Imports the step once and builds it as ``compile`` does (``compile/tvm/cpu.py optimise``: an int8/int4 export
in the compute ``compile`` would choose, or ``--compute``) for every (tile, unroll) pair, then times all
of them in turn for ``--rounds`` rounds of ``--steps`` decode steps (the machine's bandwidth drifts: each
candidate is judged by the median over rounds of its time relative to the fastest candidate of that
round) and writes the fastest pair with the whole table to ``targets/tuned/TARGET.json`` (an int8/int4
export: under the format's key, beside fp32's record). Every build stays loaded: its weights (about
0.7 GB fp32, 0.3 GB int4 on the 0.1B shape) per candidate. int8 compute uses the unroll only in the
GEMVs that stay fp32; its tiles must be multiples of the dot instruction's lanes (16 for AVX-512 VNNI).
Only a target that runs on this machine can be timed: ARM targets keep their derived parameters (an
emulator's timings say nothing about ARM speed). Use a model whose weights do not fit in cache (the
0.1B shape: ``scripts/bench.py`` makes one), else the timings measure the cache, not the memory stream
a real model decodes from.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

import numpy as np


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("onnx_dir", type=Path, help="an ONNX export (rwkv-edge export onnx --prefill-chunk 0)")
    parser.add_argument("--target", default="x86_64-host")
    parser.add_argument("--tiles", default="16,32,64,128")
    parser.add_argument("--unrolls", default="1,4,8")
    parser.add_argument("--steps", type=int, default=20, help="decode steps per candidate and round")
    parser.add_argument("--rounds", type=int, default=5, help="rounds over all candidates")
    parser.add_argument("--compute", choices=["int8", "fp32"],
                        help="int8/int4 exports: what the quantized GEMVs compute in (default: as compile chooses)")
    parser.add_argument("--dry-run", action="store_true", help="print the table, write nothing")
    parser.add_argument("--threads", type=int, default=os.cpu_count(),
                        help="TVM worker threads (default: every CPU; TVM's own default is the physical cores)")
    args = parser.parse_args()
    os.environ["TVM_NUM_THREADS"] = str(args.threads)  # read when TVM's thread pool starts

    import tvm
    from tvm import relax

    from rwkv_edge.artifact import open_artifact
    from rwkv_edge.compile.tvm import TvmOptions
    from rwkv_edge.targets.compute import resolve_compute
    from rwkv_edge.compile.tvm.cpu import optimise
    from rwkv_edge.compile.tvm.importer import import_graph
    from rwkv_edge.targets import TvmTarget, get_target
    from rwkv_edge.targets.tvm import TUNED

    target = get_target(args.target)
    if not isinstance(target, TvmTarget) or not target.runs_here():
        print(f"{args.target}: only a TVM CPU target that runs on this machine can be timed "
              "(GPU targets use rules, not tuned data)", file=sys.stderr)
        return 2
    artifact = open_artifact(args.onnx_dir, kind="onnx")
    manifest = artifact.manifest
    compute = resolve_compute(target, args.compute, manifest.weights)
    options = TvmOptions(target=target.name, weights=manifest.weights, group_size=manifest.group_size, compute=compute)
    tiles = [int(t) for t in args.tiles.split(",")]
    if compute == "int8":  # a tile the dot instruction cannot fill leaves the GEMVs unscheduled: a meaningless time
        from rwkv_edge.compile.tvm.intdot import DOT_ISAS

        lanes = DOT_ISAS[target.dot_product()].lanes
        if any(tile % lanes for tile in tiles):
            print(f"--tiles {args.tiles}: int8 compute on {target.name} needs multiples of {lanes} "
                  f"({target.dot_product()} lanes)", file=sys.stderr)
            return 2
    imported = import_graph(artifact.graph("step"), print)
    state = artifact.initial_state()
    tvm_target = tvm.target.Target(target.tvm_target())
    built = {}
    for tile in tiles:
        for unroll in (int(u) for u in args.unrolls.split(",")):  # the build as compile makes it, but for tile and unroll
            mod, _, weights = optimise(imported, target, options, lambda line: None, candidate={"tile": tile, "unroll": unroll})
            vm = relax.VirtualMachine(tvm.compile(mod, tvm_target), tvm.cpu())
            built[(tile, unroll)] = (vm, [tvm.runtime.tensor(w) for w in weights])
            print(f"built tile {tile} unroll {unroll}", flush=True)
    inputs = [tvm.runtime.tensor(np.array([1], np.int64))]
    inputs += [tvm.runtime.tensor(state[t.input_name][None]) for t in manifest.state]
    # round-robin: this machine's memory bandwidth drifts by up to 1.5x within a minute, so every
    # candidate is timed in every round and judged by the median of its per-round medians
    rounds: dict[tuple[int, int], list[float]] = {candidate: [] for candidate in built}
    for _ in range(args.rounds):
        for candidate, (vm, weights) in built.items():
            times = []
            for i in range(args.steps + 3):
                start = time.perf_counter()
                vm["main"](*inputs, *weights)
                if i >= 3:
                    times.append((time.perf_counter() - start) * 1e3)
            rounds[candidate].append(statistics.median(times))
    table = []
    fastest = [min(medians[r] for medians in rounds.values()) for r in range(args.rounds)]
    for (tile, unroll), medians in rounds.items():
        ratio = statistics.median(m / f for m, f in zip(medians, fastest))  # vs the best of the same round
        table.append({"tile": tile, "unroll": unroll, "median_ms": statistics.median(medians),
                      "x_round_best": round(ratio, 4), "round_medians_ms": [round(m, 3) for m in medians]})
        print(f"tile {tile:4d} unroll {unroll:2d}: {ratio:.3f} x the round's best, "
              f"median {table[-1]['median_ms']:.2f} ms/token (rounds {', '.join(f'{m:.1f}' for m in medians)})",
              flush=True)
    best = min(table, key=lambda r: r["x_round_best"])
    tuned = target.schedule_data(manifest.weights)["params"]  # vector and the GEMM's rows: not tuned here
    record = {"params": {**tuned, "tile": best["tile"], "unroll": best["unroll"]},
              "source": f"timed by scripts/tune_schedules.py on {_cpu_name()} ({manifest.config.get('n_layer')} layers x "
                        f"{manifest.config.get('n_embd')}, vocab {manifest.config.get('vocab_size')}, {manifest.weights} "
                        f"weights, {compute} compute), fastest relative to each round's best, median over {args.rounds} "
                        f"round-robin rounds of the median of {args.steps} decode steps, {args.threads} threads",
              "table": table}
    print(f"best: tile {best['tile']}, unroll {best['unroll']}: {best['median_ms']:.2f} ms/token")
    if not args.dry_run:
        path = TUNED / f"{target.name}.json"
        saved = json.loads(path.read_text()) if path.exists() else {}
        if manifest.weights == "fp32":  # the top level; the quantized formats' records stay
            record = {**saved, **record}  # the GEMM rows' note and the int8/int4 records stay
        else:  # beside fp32's record, under the format's name
            record = {**saved, manifest.weights: record}
        path.write_text(json.dumps(record, indent=2) + "\n")
        print(f"wrote {path}")
    return 0


def _cpu_name() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return "unknown CPU"


if __name__ == "__main__":
    sys.exit(main())
