"""Time the prefill GEMM kernel (compile/tvm/gemm.py) alone for several row-block sizes, round-robin.

    python scripts/bench_gemm.py [--target x86_64-host] [--chunk 16] [--rows 2,4,8,16] [--rounds 5]

Builds ``packed_gemm`` + ``schedule_gemm`` for the 0.1B shape's projections (768 x 768, 768 x 3072,
3072 x 768) at T = ``--chunk`` rows, checks each against numpy, then times every (rows, shape) in
turn for ``--rounds`` rounds with TVM's time_evaluator (best of 3 x 20 calls) and prints the median
per candidate with GFLOP/s and the load average. Runs on this machine's CPU: host targets only.
"""

from __future__ import annotations

import argparse
import dataclasses
import os

import numpy as np

SHAPES = [(768, 768), (768, 3072), (3072, 768)]  # (K, N) of the 0.1B shape's projections


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--target", default="x86_64-host")
    parser.add_argument("--chunk", type=int, default=16, help="rows of activations: the prefill chunk T")
    parser.add_argument("--rows", default="2,4,8,16", help="rows per register block to compare")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    os.environ["TVM_NUM_THREADS"] = str(args.threads)

    import tvm
    from tvm import te

    from rwkv_edge.compile.tvm.gemm import packed_gemm, schedule_gemm
    from rwkv_edge.compile.tvm.layout import pack_weight
    from rwkv_edge.compile.tvm.tuning import ScheduleParams
    from rwkv_edge.targets import get_target

    target = get_target(args.target)
    tvm_target = tvm.target.Target(target.tvm_target())
    base = ScheduleParams(**target.schedule_data()["params"])
    device, rng, t = tvm.cpu(), np.random.default_rng(0), args.chunk
    kernels, data = {}, {}
    for k, n in SHAPES:
        weight, x = rng.standard_normal((k, n), dtype=np.float32), rng.standard_normal((1, t, k), dtype=np.float32)
        data[k, n] = [tvm.runtime.tensor(a, device) for a in (x, pack_weight(weight, base.tile), np.zeros((1, t, n), np.float32))]
        for rows in (int(r) for r in args.rows.split(",")):
            xs, ws = te.placeholder((1, t, k), name="x"), te.placeholder((n // base.tile, k, base.tile), name="w")
            func = te.create_prim_func([xs, ws, packed_gemm(xs, ws, n)])
            kernel = tvm.compile(schedule_gemm(func, dataclasses.replace(base, rows=rows)).mod, target=tvm_target).jit()
            kernel(*data[k, n])
            np.testing.assert_allclose(data[k, n][2].numpy(), x @ weight, rtol=1e-4, atol=1e-3)
            kernels[rows, k, n] = kernel
    seconds = {key: [] for key in kernels}
    for _ in range(args.rounds):
        for (rows, k, n), kernel in kernels.items():
            timer = kernel.time_evaluator(kernel.entry_name, device, number=20, repeat=3)
            seconds[rows, k, n].append(timer(*data[k, n]).min)
    for rows in sorted({key[0] for key in kernels}):
        cells = [f"{k}x{n} {np.median(seconds[rows, k, n]) * 1e3:.3f} ms "
                 f"({2 * t * k * n / np.median(seconds[rows, k, n]) / 1e9:.0f} GFLOP/s)" for k, n in SHAPES]
        print(f"rows {rows:2d}: " + ", ".join(cells))
    print(f"T = {t}, tile {base.tile}, {args.threads} threads, load average {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
