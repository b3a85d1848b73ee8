"""Vision-RWKV artifacts end to end, timed: a seeded random checkpoint of an official shape -> ONNX ->
TVM x86_64-host and aarch64-linux (run under qemu through an RPC server) -> verify, each vs PyTorch.

    python scripts/vision_artifacts.py vrwkv-t [vrwkv-s ...] --work DIR [--json OUT.json] [--fp16]

Prints one JSON object per shape: wall seconds per stage and each artifact's parity (logits
max|d|/std, max abs, top-1 and top-5 agreement over the reference images). docs/vision.md quotes it.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

from rwkv_edge.compile.tvm import TvmOptions, compile_tvm
from rwkv_edge.export import OnnxOptions, export_onnx
from rwkv_edge.model.synthetic import VISION_SHAPES, make_vision_checkpoint, save_checkpoint
from rwkv_edge.runtime.rpc_client import Remote
from rwkv_edge.runtime.rpc_server import rpc_server
from rwkv_edge.verify import verify_artifact


def quiet(_: str) -> None:
    pass


def parity(report) -> dict:
    n = len(report.errors.scaled)
    return {"passed": report.passed, "max_scaled": report.worst_scaled, "max_abs": max(report.errors.max_abs),
            "top1": f"{sum(report.top1)}/{n}", "top5": f"{sum(report.top5)}/{n}"}


def timed(row: dict, name: str, run):
    start = time.perf_counter()
    result = run()
    row[f"{name}_s"] = round(time.perf_counter() - start, 1)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("shapes", nargs="+", choices=sorted(VISION_SHAPES))
    parser.add_argument("--work", type=Path, required=True)
    parser.add_argument("--json", type=Path)
    parser.add_argument("--fp16", action="store_true", help="also an fp16 ONNX export")
    parser.add_argument("--no-aarch64", action="store_true")
    parser.add_argument("--keep-onnx", action="store_true", help="reuse WORK/SHAPE/onnx where it is there")
    args = parser.parse_args()
    rows = {}
    for shape in args.shapes:
        work = args.work / shape
        work.mkdir(parents=True, exist_ok=True)
        row = rows[shape] = {"load_before": os.getloadavg()[0]}
        checkpoint = save_checkpoint(make_vision_checkpoint(**VISION_SHAPES[shape], seed=0), work / "model.pth")
        if not (args.keep_onnx and (work / "onnx").is_dir()):
            timed(row, "export_onnx", lambda: export_onnx(checkpoint, work / "onnx", log=quiet))
        row["onnx"] = parity(timed(row, "verify_onnx", lambda: verify_artifact(work / "onnx", log=quiet)))
        if args.fp16:
            timed(row, "export_onnx_fp16", lambda: export_onnx(checkpoint, work / "onnx16", OnnxOptions("fp16"), log=quiet))
            row["onnx_fp16"] = parity(verify_artifact(work / "onnx16", log=quiet))
        timed(row, "compile_x86", lambda: compile_tvm(work / "onnx", work / "x86", TvmOptions("x86_64-host"), log=quiet))
        row["tvm_x86"] = parity(timed(row, "verify_x86", lambda: verify_artifact(work / "x86", log=quiet)))
        if not args.no_aarch64:
            timed(row, "compile_aarch64", lambda: compile_tvm(work / "onnx", work / "arm", TvmOptions("aarch64-linux"),
                                                              log=quiet))
            with rpc_server(emulate="cortex-a53") as (host, port):
                report = timed(row, "verify_aarch64_qemu",
                               lambda: verify_artifact(work / "arm", remote=Remote(f"{host}:{port}"), log=quiet))
            row["tvm_aarch64_qemu"] = parity(report)
        row["load_after"] = os.getloadavg()[0]
        print(json.dumps({shape: row}), flush=True)
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1) + "\n")


if __name__ == "__main__":
    main()
