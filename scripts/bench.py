"""Decode benchmark of the bundled demo model and of RWKV-7 0.1B- and 1.5B-shape models, every backend,
on this machine's CPU or its NVIDIA GPU.

The 0.1B shape is that of RWKV-7 0.1B (12 layers x 768), the 1.5B shape that of RWKV-7 1.5B (24 layers
x 2048), both with vocab 65536, head size 64 and seeded random weights: speed depends on shapes, not
on values. Each checkpoint is made once under --work and reused while its sha256 matches the one
recorded beside it. For each model (and on a GPU each --weights choice) this prints `rwkv-edge
bench`'s table, saves bench-<model>.json (on a GPU bench-<model>-cuda-<weights>.json) in --json-dir,
and ends with a Markdown table of all rows.

On a GPU (--device cuda) each --weights choice is one bench run: the TVM bundle compiled with those
GEMV weights and PyTorch eager with its model in the same dtype; onnxruntime (fp32 exports only)
runs in the fp32 run, where its CUDA provider is installed. "x torch" compares with the PyTorch row
of the same run, so an fp16 bundle is compared with fp16 PyTorch.

    python scripts/bench.py --work ~/.cache/rwkv-edge/bench --json-dir .
    python scripts/bench.py --models 0.1b --backends torch,onnxruntime
    python scripts/bench.py --device cuda --models 0.1b,1.5b --weights fp32,fp16
    python scripts/bench.py --make-0.1b rwkv7-0.1b-shape.pth     # only write the checkpoint
    python scripts/bench.py --models 0.1b --llama-cpp LLAMA/build/bin --gguf GGUF_DIR --prefill 512

--llama-cpp and --gguf add llama.cpp's llama-bench (bench/peer.py) to the 0.1B-shape run: GGUF_DIR holds
that checkpoint (--make-0.1b) converted and quantized as docs/llamacpp.md says
(model-f32.gguf, model-q8_0.gguf, model-q4_0.gguf).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from rwkv_edge.atomic import atomic_path
from rwkv_edge.errors import RwkvEdgeError
from rwkv_edge.artifact import sha256_file
from rwkv_edge.model import DEMO_CHECKPOINT
from rwkv_edge.model.synthetic import make_checkpoint, save_checkpoint
from rwkv_edge.atomic import check_writable
from rwkv_edge.bench import BenchOptions, BenchReport, run_bench, save_report
from rwkv_edge.bench.peer import from_arguments
from rwkv_edge.bench.options import WEIGHTS
from rwkv_edge.bench.run import cuda_arch, default_work_dir

SHAPES = {  # make_checkpoint's arguments
    "0.1b": {"version": "v7", "n_layer": 12, "n_embd": 768, "vocab_size": 65536, "head_size": 64, "seed": 0},
    "0.4b": {"version": "v7", "n_layer": 24, "n_embd": 1024, "vocab_size": 65536, "head_size": 64, "seed": 0},
    "1.5b": {"version": "v7", "n_layer": 24, "n_embd": 2048, "vocab_size": 65536, "head_size": 64, "seed": 0},
}
CHECKPOINTS = {name: f"rwkv7-{name}-shape-random.pth" for name in SHAPES}
MODELS = ("demo", *SHAPES)


def make_shape(name: str, path: Path) -> Path:
    """Write the checkpoint of shape ``name`` at ``path``, or reuse the one there if it is what SHAPES[name] makes.

    Beside it, ``PATH.json`` records the arguments and the sha256 it was written with."""
    shape = SHAPES[name]
    record = path.with_name(path.name + ".json")
    if path.is_file() and record.is_file():
        saved = json.loads(record.read_text())
        if saved.get("make_checkpoint") == shape and saved.get("sha256") == sha256_file(path):
            print(f"{name}: reusing {path}")
            return path
    start = time.perf_counter()
    print(f"{name}: writing {path} ...", flush=True)
    path.parent.mkdir(parents=True, exist_ok=True)
    version, kwargs = shape["version"], {k: v for k, v in shape.items() if k != "version"}
    with atomic_path(path) as tmp:
        save_checkpoint(make_checkpoint(version, **kwargs), tmp)
    with atomic_path(record) as tmp:
        tmp.write_text(json.dumps({"make_checkpoint": shape, "sha256": sha256_file(path)}, indent=2) + "\n")
    print(f"{name}: {path.stat().st_size / 1e6:.0f} MB in {time.perf_counter() - start:.0f} s")
    return path


def markdown(reports: dict[str, BenchReport]) -> str:
    """All rows of all runs as one Markdown table, after a line with each run's bound."""
    if any(r.options.get("device", "cpu") != "cpu" for r in reports.values()):
        return _markdown_gpu(reports)
    bounds = ", ".join(f"{name} {r.bound_ms:.3f} ms/token ({r.weights['bytes_per_token'] / 1e6:.1f} MB at "
                       f"{r.bandwidth['gb_s']:.1f} GB/s)" for name, r in reports.items())
    lines = [f"Memory-bandwidth bounds: {bounds}.", "",
             "| model | backend | decode ms/token (p10-p90) | x bound | x ORT | prefill tok/s | peak RSS MiB | "
             "steady RSS MiB |",
             "|---|---|---|---|---|---|---|---|"]
    for name, report in reports.items():
        for r in report.runs:
            if not r.ok:
                lines.append(f"| {name} | {r.backend} | {r.status}: {r.reason} | | | | | |")
                continue
            d = r.decode_ms
            vs_ort = f"{r.vs_onnxruntime:.2f}" if r.vs_onnxruntime is not None else "-"
            prefill = f"{r.prefill_tok_s:.0f}" if r.prefill_tok_s is not None else "-"
            lines.append(f"| {name} | {r.backend} | {d['median']:.3f} ({d['p10']:.3f}-{d['p90']:.3f}) | "
                         f"{r.vs_bound:.2f} | {vs_ort} | {prefill} | {r.peak_rss_mib:.0f} | {r.steady_rss_mib:.0f} |")
        for p in report.peer:
            if p.ok:
                prefill = p.median_prefill_tok_s()
                lines.append(f"| {name} | llama.cpp {p.gguf_type} | {p.median_decode_ms():.3f} | | | "
                             f"{f'{prefill:.0f}' if prefill else '-'} | {p.max_rss_mib():.0f} |")
    ratios = [(name, p, backend, v) for name, report in reports.items() for p in report.peer for backend, v in p.vs.items()]
    if ratios:
        lines += ["", "| model | ours / llama.cpp | decode ms/token | prefill tok/s | peak RSS |", "|---|---|---|---|---|"]
        for name, p, backend, v in ratios:
            prefill = f"{v['prefill']:.2f}" if "prefill" in v else "-"
            lines.append(f"| {name} | {backend} {p.weights} / {p.gguf_type} | {v['decode']:.2f} | {prefill} | {v['rss']:.2f} |")
    return "\n".join(lines)


def _markdown_gpu(reports: dict[str, BenchReport]) -> str:
    """The GPU table: each row with its weights' dtype and its own bound; x torch within its run."""
    first = next(iter(reports.values()))
    gpu = first.machine.get("gpu", {})
    bandwidths = ", ".join(f"{name} {r.bandwidth['gb_s']:.0f} GB/s read / {r.bandwidth['copy_gb_s']:.0f} GB/s copied"
                           for name, r in reports.items() if "copy_gb_s" in r.bandwidth)
    lines = [f"GPU: {gpu.get('name', '?')} ({gpu.get('arch', '?')}); memory bandwidth measured in each run "
             f"(torch.amax read; device-to-device copy, bytes read + written): {bandwidths}. "
             "Bound: the weight bytes a row reads per token at that read bandwidth; x torch: against the PyTorch "
             "row of the same run (same weights dtype).", "",
             "| model | backend | weights | decode ms/token (p10-p90) | bound ms/token | x bound | x torch | "
             "prefill tok/s | peak RSS MiB | steady RSS MiB |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for name, report in reports.items():
        model = name.split(" ")[0]
        for r in report.runs:
            if not r.ok:
                lines.append(f"| {model} | {r.backend} | {r.weights} | {r.status}: {r.reason} | | | | | | |")
                continue
            d = r.decode_ms
            vs_torch = f"{r.vs_torch:.2f}" if r.vs_torch is not None else "-"
            prefill = f"{r.prefill_tok_s:.0f}" if r.prefill_tok_s is not None else "-"
            lines.append(f"| {model} | {r.backend} | {r.weights} | {d['median']:.3f} ({d['p10']:.3f}-{d['p90']:.3f}) | "
                         f"{r.bound_ms:.4g} | {r.vs_bound:.2f} | {vs_torch} | {prefill} | {r.peak_rss_mib:.0f} | "
                         f"{r.steady_rss_mib:.0f} |")
    return "\n".join(lines)


def _csv(text: str) -> list[str]:
    return [item.strip() for item in text.split(",") if item.strip()]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="demo,0.1b", help=f"comma-separated: {', '.join(MODELS)} (default demo,0.1b)")
    parser.add_argument("--backends", default="torch,onnxruntime,tvm")
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu",
                        help="cuda: every row on this machine's NVIDIA GPU (default cpu)")
    parser.add_argument("--weights", default="fp32",
                        help="with --device cuda, comma-separated: fp32, fp16; one bench run each (default fp32)")
    parser.add_argument("--target", help="the TVM row's target (default: x86_64-host, or the GPU's newest CUDA target)")
    parser.add_argument("--steps", type=int, default=128)
    parser.add_argument("--warmup", type=int, default=16)
    parser.add_argument("--prefill", type=int, default=64)
    parser.add_argument("--threads", type=int, help="per backend (default: every usable core)")
    parser.add_argument("--work", type=Path, default=default_work_dir(),
                        help="the model checkpoints, exports and compiled bundles (default ~/.cache/rwkv-edge/bench)")
    parser.add_argument("--json-dir", type=Path, default=Path("."), help="where bench-<model>.json go (default .)")
    parser.add_argument("--rebuild", action="store_true", help="export and compile again")
    parser.add_argument("--llama-cpp", type=Path, metavar="BIN_DIR", help="llama.cpp's build/bin: llama-bench beside the 0.1b run")
    parser.add_argument("--gguf", action="append", metavar="DIR|FORMAT=FILE",
                        help="with --llama-cpp: the 0.1B-shape checkpoint as GGUF (a folder of model-f32/q8_0/q4_0.gguf)")
    for name in SHAPES:
        parser.add_argument(f"--make-{name}", type=Path, metavar="PATH", dest=f"make_{name.replace('.', '')}",
                            help=f"only write the {name.upper()}-shape checkpoint to PATH, then exit")
    args = parser.parse_args()
    try:
        made = [(name, getattr(args, f"make_{name.replace('.', '')}")) for name in SHAPES]
        if any(path for _, path in made):
            for name, path in made:
                if path:
                    make_shape(name, path)
            return 0
        models, weights = _csv(args.models), _csv(args.weights)
        unknown = [m for m in models if m not in MODELS]
        if unknown or not models:
            parser.error(f"unknown model {unknown[0] if unknown else '(none)'!r}; choose {', '.join(MODELS)}")
        if not weights or any(w not in WEIGHTS for w in weights) or len(set(weights)) != len(weights):
            parser.error(f"--weights {args.weights!r}: a comma-separated list of {', '.join(WEIGHTS)}, each once")
        if args.device == "cuda":
            cuda_arch()  # a machine without a GPU fails here, before any checkpoint is written
        peer = from_arguments(args.llama_cpp, args.gguf or []) if args.llama_cpp or args.gguf else None
        if peer is not None and "0.1b" not in models:
            parser.error("--llama-cpp runs beside the 0.1b model: add 0.1b to --models")
        runs = {}  # (model, weights) -> options
        for name in models:
            for w in weights:
                backends = [b for b in _csv(args.backends) if w == "fp32" or b != "onnxruntime"]  # ORT: fp32 exports
                if backends:
                    runs[name, w] = BenchOptions(
                        tuple(backends), args.steps, args.warmup, args.prefill, threads=args.threads,
                        rebuild=args.rebuild, device=args.device, tvm_target=args.target, weights=w)
        if not runs:
            parser.error("nothing to run: onnxruntime runs fp32 exports only (add fp32 to --weights, or another backend)")
        paths = {key: args.json_dir / _report_name(*key, args.device) for key in runs}
        for path in paths.values():
            check_writable(path)
        reports = {}
        for (name, w), options in runs.items():
            checkpoint = DEMO_CHECKPOINT if name == "demo" else make_shape(name, args.work / CHECKPOINTS[name])
            label = name if args.device == "cpu" else f"{name} {w}"
            reports[label] = report = run_bench(checkpoint, options, work=args.work,
                                                peer=peer if name == "0.1b" else None)
            print(f"\n{report.table()}\n")
            print(f"wrote {save_report(report, paths[name, w])} (bench took {report.wall_s:.0f} s)\n", flush=True)
    except RwkvEdgeError as e:
        print(f"bench.py: error: {e}", file=sys.stderr)
        return 1
    print(markdown(reports))
    return 1 if any(r.failed for r in reports.values()) else 0


def _report_name(model: str, weights: str, device: str) -> str:
    return f"bench-{model}.json" if device == "cpu" else f"bench-{model}-{device}-{weights}.json"


if __name__ == "__main__":
    sys.exit(main())
