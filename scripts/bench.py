"""Decode benchmark of the bundled demo model and of a 0.1B-shape RWKV-7, every backend on this machine.

The 0.1B shape is that of RWKV-7 0.1B (12 layers x 768, vocab 65536) with seeded random weights:
speed depends on shapes, not on values. The checkpoint is made once under --work and reused while
its sha256 matches the one recorded beside it. For each model this prints `rwkv-edge bench`'s table,
saves bench-<model>.json in --json-dir, and ends with a Markdown table of all rows.

    python scripts/bench.py --work ~/.cache/rwkv-edge/bench --json-dir .
    python scripts/bench.py --models 0.1b --backends torch,onnxruntime
    python scripts/bench.py --make-0.1b rwkv7-0.1b-shape.pth     # only write the checkpoint
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from rwkv_edge.atomic import atomic_path
from rwkv_edge.errors import RwkvEdgeError
from rwkv_edge.manifest import sha256_file
from rwkv_edge.model import DEMO_CHECKPOINT
from rwkv_edge.model.synthetic import make_checkpoint, save_checkpoint
from rwkv_edge.runtime.bench import (BenchOptions, BenchReport, check_output, default_work_dir, run_bench,
                                     save_report)

SHAPE_01B = {"version": "v7", "n_layer": 12, "n_embd": 768, "vocab_size": 65536, "head_size": 64, "seed": 0}
CHECKPOINT_01B = "rwkv7-0.1b-shape-random.pth"


def make_01b(path: Path) -> Path:
    """Write the 0.1B-shape checkpoint at ``path``, or reuse the one there if it is what SHAPE_01B makes.

    Beside it, ``PATH.json`` records the arguments and the sha256 it was written with."""
    record = path.with_name(path.name + ".json")
    if path.is_file() and record.is_file():
        saved = json.loads(record.read_text())
        if saved.get("make_checkpoint") == SHAPE_01B and saved.get("sha256") == sha256_file(path):
            print(f"0.1b: reusing {path}")
            return path
    start = time.perf_counter()
    print(f"0.1b: writing {path} ...", flush=True)
    path.parent.mkdir(parents=True, exist_ok=True)
    version, kwargs = SHAPE_01B["version"], {k: v for k, v in SHAPE_01B.items() if k != "version"}
    with atomic_path(path) as tmp:
        save_checkpoint(make_checkpoint(version, **kwargs), tmp)
    with atomic_path(record) as tmp:
        tmp.write_text(json.dumps({"make_checkpoint": SHAPE_01B, "sha256": sha256_file(path)}, indent=2) + "\n")
    print(f"0.1b: {path.stat().st_size / 1e6:.0f} MB in {time.perf_counter() - start:.0f} s")
    return path


def markdown(reports: dict[str, BenchReport]) -> str:
    """All rows of all models as one Markdown table, after a line with each model's bound."""
    bounds = ", ".join(f"{name} {r.bound_ms:.3f} ms/token ({r.weights['bytes_per_token'] / 1e6:.1f} MB at "
                       f"{r.bandwidth['gb_s']:.1f} GB/s)" for name, r in reports.items())
    lines = [f"Memory-bandwidth bounds: {bounds}.", "",
             "| model | backend | decode ms/token (p10-p90) | x bound | x ORT | prefill tok/s | peak RSS MiB |",
             "|---|---|---|---|---|---|---|"]
    for name, report in reports.items():
        for r in report.runs:
            if not r.ok:
                lines.append(f"| {name} | {r.backend} | {r.status}: {r.reason} | | | | |")
                continue
            d = r.decode_ms
            vs_ort = f"{r.vs_onnxruntime:.2f}" if r.vs_onnxruntime is not None else "-"
            prefill = f"{r.prefill_tok_s:.0f}" if r.prefill_tok_s is not None else "-"
            lines.append(f"| {name} | {r.backend} | {d['median']:.3f} ({d['p10']:.3f}-{d['p90']:.3f}) | "
                         f"{r.vs_bound:.2f} | {vs_ort} | {prefill} | {r.peak_rss_mib:.0f} |")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="demo,0.1b", help="comma-separated: demo, 0.1b (default both)")
    parser.add_argument("--backends", default="torch,onnxruntime,tvm")
    parser.add_argument("--steps", type=int, default=128)
    parser.add_argument("--warmup", type=int, default=16)
    parser.add_argument("--prefill", type=int, default=64)
    parser.add_argument("--threads", type=int, help="per backend (default: every usable core)")
    parser.add_argument("--work", type=Path, default=default_work_dir(),
                        help="the 0.1B checkpoint, exports and compiled bundles (default ~/.cache/rwkv-edge/bench)")
    parser.add_argument("--json-dir", type=Path, default=Path("."), help="where bench-<model>.json go (default .)")
    parser.add_argument("--rebuild", action="store_true", help="export and compile again")
    parser.add_argument("--make-0.1b", type=Path, metavar="PATH", dest="make_01b",
                        help="only write the 0.1B-shape checkpoint to PATH, then exit")
    args = parser.parse_args()
    try:
        if args.make_01b:
            make_01b(args.make_01b)
            return 0
        models = [m.strip() for m in args.models.split(",") if m.strip()]
        unknown = [m for m in models if m not in ("demo", "0.1b")]
        if unknown or not models:
            parser.error(f"unknown model {unknown[0] if unknown else '(none)'!r}; choose demo, 0.1b")
        options = BenchOptions(tuple(b.strip() for b in args.backends.split(",") if b.strip()), args.steps,
                               args.warmup, args.prefill, threads=args.threads, rebuild=args.rebuild)
        for name in models:
            check_output(args.json_dir / f"bench-{name}.json")
        reports = {}
        for name in models:
            checkpoint = DEMO_CHECKPOINT if name == "demo" else make_01b(args.work / CHECKPOINT_01B)
            reports[name] = report = run_bench(checkpoint, options, work=args.work)
            print(f"\n{report.table()}\n")
            print(f"wrote {save_report(report, args.json_dir / f'bench-{name}.json')} "
                  f"(bench took {report.wall_s:.0f} s)\n", flush=True)
    except RwkvEdgeError as e:
        print(f"bench.py: error: {e}", file=sys.stderr)
        return 1
    print(markdown(reports))
    return 1 if any(r.failed for r in reports.values()) else 0


if __name__ == "__main__":
    sys.exit(main())
