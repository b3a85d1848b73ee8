"""Pick the GEMV tile width and K unroll of a TVM CPU target by timing the decode step on this machine.

    python scripts/tune_schedules.py ONNX_DIR [--target x86_64-host] [--tiles 16,32,64,128] [--unrolls 1,4,8]

Imports the step once, builds it for every (tile, unroll) pair, times ``--steps`` decode steps
after a warm-up (median) and writes the fastest pair with the whole table to
``targets/tuned/TARGET.json``. Only a target that runs on this machine can be timed: ARM targets
keep their derived parameters (an emulator's timings say nothing about ARM speed). Use a model
whose weights do not fit in cache (the 0.1B shape: ``scripts/bench.py`` makes one), else the
timings measure the cache, not the memory stream a real model decodes from.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
import warnings
from pathlib import Path

import numpy as np


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("onnx_dir", type=Path, help="an ONNX export (rwkv-edge export onnx --prefill-chunk 0)")
    parser.add_argument("--target", default="x86_64-host")
    parser.add_argument("--tiles", default="16,32,64,128")
    parser.add_argument("--unrolls", default="1,4,8")
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--dry-run", action="store_true", help="print the table, write nothing")
    parser.add_argument("--threads", type=int, default=os.cpu_count(),
                        help="TVM worker threads (default: every CPU; TVM's own default is the physical cores)")
    args = parser.parse_args()
    os.environ["TVM_NUM_THREADS"] = str(args.threads)  # read when TVM's thread pool starts

    import onnx
    import tvm
    from tvm import relax
    from tvm.relax.frontend.onnx import from_onnx

    from rwkv_edge.compile.schedules import ApplyCpuSchedules, ScheduleParams, pack_gemv_weights
    from rwkv_edge.manifest import initial_state, read_manifest
    from rwkv_edge.targets import get_target
    from rwkv_edge.targets.tvm import TUNED

    target = get_target(args.target)
    if target.kind != "tvm" or not target.runs_here():
        print(f"{args.target}: only a TVM target that runs on this machine can be timed", file=sys.stderr)
        return 2
    manifest = read_manifest(args.onnx_dir, kind="onnx")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        imported = from_onnx(onnx.load(str(args.onnx_dir / manifest.graphs["step"]["file"])), keep_params_in_input=False)
    state = initial_state(manifest, args.onnx_dir)
    tvm_target = tvm.target.Target(target.tvm_target())
    vector = target.schedule_data()["params"]["vector"]
    rows = []
    for tile in (int(t) for t in args.tiles.split(",")):
        for unroll in (int(u) for u in args.unrolls.split(",")):
            params = ScheduleParams(tile=tile, unroll=unroll, vector=min(vector, tile))
            with tvm_target:
                mod, _ = pack_gemv_weights(imported, params)
                mod = tvm.ir.transform.Sequential([
                    relax.transform.LegalizeOps(), relax.transform.AnnotateTIROpPattern(),
                    relax.transform.FuseOps(), relax.transform.FuseTIR(), relax.transform.DeadCodeElimination(),
                    ApplyCpuSchedules(params)])(mod)
            vm = relax.VirtualMachine(tvm.compile(mod, tvm_target), tvm.cpu())
            args_in = [tvm.runtime.tensor(np.array([1], np.int64))]
            args_in += [tvm.runtime.tensor(state[t.input_name][None]) for t in manifest.state]
            times = []
            for i in range(args.steps + 5):
                start = time.perf_counter()
                vm["main"](*args_in)
                if i >= 5:
                    times.append((time.perf_counter() - start) * 1e3)
            rows.append({"tile": tile, "unroll": unroll, "vector": params.vector, "median_ms": statistics.median(times)})
            print(f"tile {tile:4d} unroll {unroll:2d}: {rows[-1]['median_ms']:.2f} ms/token", flush=True)
    best = min(rows, key=lambda r: r["median_ms"])
    record = {"params": {"tile": best["tile"], "unroll": best["unroll"], "vector": best["vector"]},
              "source": f"timed by scripts/tune_schedules.py on {_cpu_name()} ({manifest.config.get('n_layer')} layers x "
                        f"{manifest.config.get('n_embd')}, vocab {manifest.config.get('vocab_size')}, fp32), "
                        f"median of {args.steps} decode steps, {args.threads} threads",
              "table": rows}
    print(f"best: tile {best['tile']}, unroll {best['unroll']}: {best['median_ms']:.2f} ms/token")
    if not args.dry_run:
        path = TUNED / f"{target.name}.json"
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
