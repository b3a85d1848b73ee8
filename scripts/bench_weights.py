"""Decode speed of TVM CPU bundles of one checkpoint in fp32, int8 and int4 weights, in one run.

    python scripts/bench_weights.py CKPT [--work DIR] [--rounds 3] [--steps 64] [--threads 2]
        [--formats fp32,int8:fp32,int8:int8,int4:fp32,int4:int8]

Exports the checkpoint in each format (decode step only) and compiles each export for the host,
reusing what ``--work`` already holds, then times every bundle in turn for ``--rounds`` rounds, each
in a process of its own (``bench.workers.decode``: median of ``--steps`` decode steps after 16
warm-up steps): this machine's bandwidth drifts, so formats are compared within a round. The
bandwidth bound of each format (its weight bytes per token / the read bandwidth measured before and
after) sits beside it. A format may name the compute of int8/int4 bundles, ``int4:int8`` or
``int4:fp32`` (``TvmOptions.compute``; plain ``int4``: the target's default). Use the 0.1B shape (``scripts/bench.py --make-0.1b``): a model that fits in
cache measures the cache, not the memory stream.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
from pathlib import Path

FORMATS = ("fp32", "int8", "int4")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checkpoint", type=Path)
    parser.add_argument("--work", type=Path, default=Path.home() / ".cache/rwkv-edge/bench-weights")
    parser.add_argument("--formats", default=",".join(FORMATS))
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--steps", type=int, default=64)
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    args = parser.parse_args()

    from rwkv_edge.artifact import read_manifest
    from rwkv_edge.bench.bound import (bandwidth_buffer_bytes, bound_ms, quantized_weight_bytes_per_token,
                                       weight_bytes_per_token)
    from rwkv_edge.bench.run import measure_bandwidth
    from rwkv_edge.bench.options import DecodeSpec
    from rwkv_edge.bench.workers import decode, in_own_process
    from rwkv_edge.compile.tvm import TvmOptions, compile_tvm
    from rwkv_edge.export import OnnxOptions, export_onnx
    from rwkv_edge.model.sources import open_checkpoint
    from rwkv_edge.weights import weight_format

    formats = args.formats.split(",")
    tensors = open_checkpoint(args.checkpoint).tensors
    bundles, weight_bytes = {}, {}
    for name in formats:
        weights, _, compute = name.partition(":")
        fmt = weight_format(weights)
        onnx, bundle = args.work / f"onnx-{weights}", args.work / f"tvm-{name.replace(':', '-')}"
        if not (onnx / "manifest.json").exists():
            export_onnx(args.checkpoint, onnx, OnnxOptions(weights, prefill_chunk=0))
        if not (bundle / "manifest.json").exists():
            compile_tvm(onnx, bundle, TvmOptions("x86_64-host", compute=compute or None))
        bundles[name] = bundle
        weight_bytes[name] = (quantized_weight_bytes_per_token(tensors, fmt.bits, read_manifest(bundle).group_size)
                              if fmt.quantized else weight_bytes_per_token(tensors))
    buffer = bandwidth_buffer_bytes()
    bandwidth = measure_bandwidth(buffer, 10, args.threads)
    medians: dict[str, list[float]] = {name: [] for name in formats}
    rss: dict[str, float] = {}
    for r in range(args.rounds):
        for name in formats:
            result = in_own_process(decode, DecodeSpec("tvm", str(bundles[name]), args.threads, 16, args.steps, 0, 0, r),
                                    args.threads)
            medians[name].append(result["decode_ms"]["median"])
            rss[name] = result["peak_rss_mib"]
            print(f"round {r + 1} {name}: {medians[name][-1]:.3f} ms/token", flush=True)
    bandwidth += measure_bandwidth(buffer, 10, args.threads)
    gb_s = statistics.median(bandwidth)
    print(f"\nread bandwidth {gb_s:.1f} GB/s (median of {len(bandwidth)}, range {min(bandwidth):.1f}-{max(bandwidth):.1f}); "
          f"{args.threads} threads; load average {os.getloadavg()[0]:.2f}")
    print("| weights | MB/token | bound ms | decode ms (median of round medians; rounds) | x bound | peak RSS MiB |")
    print("|---|---|---|---|---|---|")
    for name in formats:
        bound = bound_ms(weight_bytes[name], gb_s)
        ms = statistics.median(medians[name])
        print(f"| {name} | {weight_bytes[name] / 1e6:.1f} | {bound:.2f} | {ms:.2f} ({', '.join(f'{m:.2f}' for m in medians[name])}) "
              f"| {ms / bound:.2f} | {rss[name]:.0f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
