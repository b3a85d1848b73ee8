"""Time image artifacts on this machine, interleaved in one process: median seconds per image.

    python scripts/vision_time.py DIR [DIR ...] [--repeat 7] [--threads N]

Every artifact (ONNX export or TVM bundle, opened with runtime.vision.open_vision) runs its first
reference image once to warm up, then ``repeat`` rounds of one call each, the artifacts in turn;
prints the medians, their ratios to the first artifact, and the load average before and after.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from pathlib import Path

from rwkv_edge.runtime.vision import open_vision


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("artifacts", nargs="+", type=Path)
    parser.add_argument("--repeat", type=int, default=7)
    parser.add_argument("--threads", type=int, help="onnxruntime threads (TVM: TVM_NUM_THREADS)")
    args = parser.parse_args()
    load = os.getloadavg()[0]
    runners = [open_vision(a, threads=args.threads) if a.joinpath("model.onnx").exists() else open_vision(a)
               for a in args.artifacts]
    image = runners[0].artifact.vision_reference().images[:1]
    times: list[list[float]] = [[] for _ in runners]
    for runner in runners:
        runner.run(image)
    for _ in range(args.repeat):
        for runner, samples in zip(runners, times):
            start = time.perf_counter()
            runner.run(image)
            samples.append(time.perf_counter() - start)
    medians = [statistics.median(t) for t in times]
    print(json.dumps({"load_before": load, "load_after": os.getloadavg()[0], "rows": [
        {"artifact": str(a), "runs_on": r.runs_on, "median_s": m, "ratio": m / medians[0]}
        for a, r, m in zip(args.artifacts, runners, medians)]}, indent=1))


if __name__ == "__main__":
    main()
