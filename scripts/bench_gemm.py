"""Time the prefill GEMM kernel alone for several row-block sizes, round-robin.

    python scripts/bench_gemm.py [--target x86_64-host] [--weights fp32|int8|int4] [--chunk 32]
                                 [--rows 2,4,8,16] [--shapes 768x768,768x3072,3072x768] [--rounds 5]
                                 [--streamed]

fp32: ``packed_gemm`` + ``schedule_gemm`` (compile/tvm/gemm.py); int8/int4: the int8-compute product
(compile/tvm/intdot.py ``intdot`` + ``schedule_intdot``, the target's dot instruction and its tuned tile
for the format; rows 1 = row by row). Builds the kernel for the projections' shapes (K x N; default the
0.1B shape's) at T = ``--chunk`` rows, checks each against numpy (fp32) or against rows 1 bit for bit
(int8/int4), then times every (rows, shape) in turn for ``--rounds`` rounds with TVM's time_evaluator
(best of 3 x 20 calls; the weights stay in cache) and prints the median per candidate with GFLOP/s
(GOP/s) and the load average. ``--streamed``: each call takes the next of enough copies of the
weights to fill 128 MB (more than this machine's last-level cache), as a prefill call meets its
weights, first from memory; seconds per call over one pass (wall clock). Runs on this machine's CPU:
host targets only.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import time

import numpy as np


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--target", default="x86_64-host")
    parser.add_argument("--weights", choices=["fp32", "int8", "int4"], default="fp32")
    parser.add_argument("--chunk", type=int, default=32, help="rows of activations: the prefill chunk T")
    parser.add_argument("--rows", default="2,4,8,16", help="rows per register block to compare")
    parser.add_argument("--shapes", default="768x768,768x3072,3072x768", help="K x N of the projections")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--streamed", action="store_true", help="weights from memory: rotate over 128 MB of copies")
    args = parser.parse_args()
    os.environ["TVM_NUM_THREADS"] = str(args.threads)

    import tvm

    from rwkv_edge.compile.tvm.tuning import ScheduleParams
    from rwkv_edge.targets import get_target

    target = get_target(args.target)
    tvm_target = tvm.target.Target(target.tvm_target())
    base = ScheduleParams(**target.schedule_data(args.weights)["params"])
    shapes = [tuple(int(d) for d in s.split("x")) for s in args.shapes.split(",")]
    device, rng, t = tvm.cpu(), np.random.default_rng(0), args.chunk
    build = dense_kernel if args.weights == "fp32" else dot_kernel
    kernels, data = {}, {}
    for k, n in shapes:
        reference = None
        for rows in (int(r) for r in args.rows.split(",")):
            mod, arrays, expected = build(k, n, t, rows, base, target, args.weights, rng)
            data.setdefault((k, n), [tvm.runtime.tensor(a, device) for a in arrays])
            kernel = tvm.compile(mod, target=tvm_target).jit()
            kernel(*data[k, n])
            out = data[k, n][-1].numpy()
            if expected is not None:
                np.testing.assert_allclose(out, expected, rtol=1e-4, atol=1e-3)
            elif reference is None:
                reference = out.copy()
            else:
                np.testing.assert_array_equal(out, reference)
            kernels[rows, k, n] = kernel
    copies = {key: weight_copies(arrays, 128e6, device, rng) if args.streamed else [arrays]
              for key, arrays in data.items()}
    seconds = {key: [] for key in kernels}
    for _ in range(args.rounds):
        for (rows, k, n), kernel in kernels.items():
            if args.streamed:
                start = time.perf_counter()
                for arrays in copies[k, n]:
                    kernel(*arrays)
                seconds[rows, k, n].append((time.perf_counter() - start) / len(copies[k, n]))
            else:
                timer = kernel.time_evaluator(kernel.entry_name, device, number=20, repeat=3)
                seconds[rows, k, n].append(timer(*data[k, n]).min)
    for rows in sorted({key[0] for key in kernels}):
        cells = [f"{k}x{n} {np.median(seconds[rows, k, n]) * 1e3:.3f} ms "
                 f"({2 * t * k * n / np.median(seconds[rows, k, n]) / 1e9:.0f} GFLOP/s)" for k, n in shapes]
        print(f"rows {rows:2d}: " + ", ".join(cells))
    print(f"{args.weights}, T = {t}, tile {base.tile}, {args.threads} threads, weights "
          f"{'streamed from memory' if args.streamed else 'in cache'}, load average {os.getloadavg()[0]:.1f}")


def weight_copies(arrays: list, total: float, device, rng) -> list[list]:
    """``arrays`` (a kernel's arguments) with their weights (every argument but the activations and the
    output: the ones larger than the activations) replaced by fresh copies, as many as fill ``total`` bytes."""
    import tvm

    weights = [i for i, a in enumerate(arrays[:-1]) if a.numpy().nbytes > arrays[0].numpy().nbytes]
    size = sum(arrays[i].numpy().nbytes for i in weights)
    out = []
    for _ in range(max(2, int(total // size))):
        copy = list(arrays)
        for i in weights:
            copy[i] = tvm.runtime.tensor(rng.permutation(arrays[i].numpy().reshape(-1)).reshape(arrays[i].shape), device)
        out.append(copy)
    return out


def dense_kernel(k: int, n: int, t: int, rows: int, base, target, weights: str, rng):
    """The fp32 packed GEMM: (module, [x, packed W, out], x @ W)."""
    from tvm import te

    from rwkv_edge.compile.tvm.gemm import packed_gemm, schedule_gemm
    from rwkv_edge.compile.tvm.layout import pack_weight

    weight, x = rng.standard_normal((k, n), dtype=np.float32), rng.standard_normal((1, t, k), dtype=np.float32)
    xs, ws = te.placeholder((1, t, k), name="x"), te.placeholder((n // base.tile, k, base.tile), name="w")
    func = te.create_prim_func([xs, ws, packed_gemm(xs, ws, n)])
    arrays = [x, pack_weight(weight, base.tile), np.zeros((1, t, n), np.float32)]
    return schedule_gemm(func, dataclasses.replace(base, rows=rows)).mod, arrays, x @ weight


def dot_kernel(k: int, n: int, t: int, rows: int, base, target, weights: str, rng):
    """The int8-compute product over int8/int4 weights (groups of 32): (module, [xq, dx, xsum, values,
    scales, out], None: compared across rows)."""
    from tvm import te

    from rwkv_edge.compile.tvm.intdot import intdot, pack_intdot, schedule_intdot
    from rwkv_edge.quantize import quantize

    isa, bits = target.dot_product(), 8 if weights == "int8" else 4
    if isa is None:
        raise SystemExit(f"{target.name} has no int8 dot instruction: no int8-compute GEMM to time")
    params = dataclasses.replace(base, dot=isa)
    found = quantize(rng.standard_normal((n, k)).astype(np.float32), bits, 32)
    values, scales = pack_intdot(found, params.tile, isa)
    xq = rng.integers(-127, 128, (1, t, k)).astype(np.int8)
    dx = rng.random((1, t, k // 32)).astype(np.float32)
    xsum = xq.reshape(1, t, -1, 32).astype(np.int32).sum(-1).astype(np.int32)
    holders = [te.placeholder(a.shape, str(a.dtype)) for a in (xq, dx, xsum, values, scales)]
    func = te.create_prim_func([*holders, intdot(*holders, values.shape[0] * params.tile, bits, isa)])
    sch = schedule_intdot(func, params, rows=rows)
    return sch.mod, [xq, dx, xsum, values, scales, np.zeros((1, t, n), np.float32)], None


if __name__ == "__main__":
    main()
