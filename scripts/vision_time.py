"""The Vision-RWKV bench: latency and images/s per backend, interleaved in one process.

    python scripts/vision_time.py SOURCE [SOURCE ...] [--repeat 7] [--threads N] [--batch B]

A SOURCE is an image-model artifact (ONNX export: onnxruntime; TVM bundle; opened with
runtime.vision.open_vision) or a checkpoint (.pth / .safetensors: PyTorch at the checkpoint's
resolution, runtime/torch_vision.py). Every source runs the first reference image of the first
artifact once to warm up, then ``repeat`` rounds of one call each, the sources in turn. Prints, per
source, the median seconds per call, images/s (batch / median) and the ratio to the first source, and
the load average before and after. ``--batch`` > 1 needs sources that take a batch (checkpoints,
dynamic-batch exports); a batch-1 graph runs the images one by one. Threads: ``--threads`` for
onnxruntime and PyTorch; TVM takes TVM_NUM_THREADS from the environment (set it to the same).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from pathlib import Path

import numpy as np

from rwkv_edge.runtime.vision import open_vision

CHECKPOINTS = (".pth", ".pt", ".safetensors")


def open_source(path: Path, threads: int | None):
    """An image model with ``run(images)`` and ``runs_on``: PyTorch for a checkpoint, else the artifact's runtime."""
    if path.suffix in CHECKPOINTS:
        from rwkv_edge.runtime.torch_vision import open_vision_checkpoint

        return open_vision_checkpoint(path, threads=threads)
    return open_vision(path, threads=threads) if path.joinpath("model.onnx").exists() else open_vision(path)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("sources", nargs="+", type=Path)
    parser.add_argument("--repeat", type=int, default=7)
    parser.add_argument("--threads", type=int, help="onnxruntime and PyTorch threads (TVM: TVM_NUM_THREADS)")
    parser.add_argument("--batch", type=int, default=1, help="images per call (default 1)")
    args = parser.parse_args()
    load = os.getloadavg()[0]
    models = [open_source(s, args.threads) for s in args.sources]
    artifact = next((m for m in models if hasattr(m, "artifact")), None)
    if artifact is None:
        raise SystemExit("give at least one artifact: its reference images are what every source runs")
    image = artifact.artifact.vision_reference().images[:1]  # (1, 3, S, S)
    images = np.ascontiguousarray(np.repeat(image, args.batch, axis=0))
    times: list[list[float]] = [[] for _ in models]
    for model in models:
        model.run(images)
    for _ in range(args.repeat):
        for model, samples in zip(models, times):
            start = time.perf_counter()
            model.run(images)
            samples.append(time.perf_counter() - start)
    medians = [statistics.median(t) for t in times]
    print(json.dumps({"load_before": load, "load_after": os.getloadavg()[0], "batch": args.batch,
                      "image_size": int(image.shape[-1]), "threads": args.threads,
                      "tvm_threads": os.environ.get("TVM_NUM_THREADS"), "rows": [
                          {"source": str(s), "runs_on": m.runs_on, "median_s": t, "images_per_s": args.batch / t,
                           "ratio": t / medians[0]}
                          for s, m, t in zip(args.sources, models, medians)]}, indent=1))


if __name__ == "__main__":
    main()
