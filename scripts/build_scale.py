"""Wall time and peak memory of `rwkv-edge compile CKPT --target T --weights W` at the 0.1B, 0.4B and 1.5B
shapes (RWKV-7, random weights, scripts/bench.py's SHAPES), each build a process of its own.

    python scripts/build_scale.py --shapes 0.1b,0.4b --weights int4,fp32 --targets x86_64-host,raspberry-pi-5

Peak memory is the build process's maximum resident set (``wait4``'s ``ru_maxrss``: its largest moment,
the checkpoint's private copy and mapped files included), beside the checkpoint's bytes. The 1.5B shape
writes a 6 GB checkpoint and needs about 12 GB free; run it by hand, never in CI. Prints one Markdown
row per build; ``--log DIR`` keeps each build's output, ``--keep DIR`` each bundle.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench import CHECKPOINTS, SHAPES, make_shape  # noqa: E402


def build(checkpoint: Path, target: str, weights: str, out: Path, log: Path) -> tuple[float, int, int]:
    """(wall seconds, peak RSS bytes, bundle bytes) of one compile, in a process of its own."""
    command = [sys.executable, "-m", "rwkv_edge.cli.main", "compile", str(checkpoint), "--target", target,
               "--weights", weights, "-o", str(out)]
    start = time.perf_counter()
    with open(log, "w") as sink:
        process = subprocess.Popen(command, stdout=sink, stderr=subprocess.STDOUT)
        _, status, usage = os.wait4(process.pid, 0)
    wall = time.perf_counter() - start
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"{' '.join(command)} failed; its output is in {log}")
    size = sum(f.stat().st_size for f in out.rglob("*") if f.is_file())
    return wall, usage.ru_maxrss * 1024, size


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shapes", default="0.1b", help=f"comma-separated: {', '.join(SHAPES)}")
    parser.add_argument("--weights", default="int4,fp32")
    parser.add_argument("--targets", default="x86_64-host")
    parser.add_argument("--work", type=Path, default=Path("bench-work"), help="where the checkpoints are kept")
    parser.add_argument("--log", type=Path, help="keep each build's output here")
    parser.add_argument("--keep", type=Path, help="keep each bundle here, as SHAPE-WEIGHTS-TARGET (for the benches)")
    args = parser.parse_args()
    logs = args.log or Path(tempfile.mkdtemp(prefix="build-scale-"))
    logs.mkdir(parents=True, exist_ok=True)
    print("| shape | weights | target | wall | peak RSS | checkpoint | peak / checkpoint | bundle |")
    print("|---|---|---|---|---|---|---|---|")
    for shape in args.shapes.split(","):
        checkpoint = make_shape(shape, args.work / CHECKPOINTS[shape])
        for weights in args.weights.split(","):
            for target in args.targets.split(","):
                name = f"{shape}-{weights}-{target}"
                with tempfile.TemporaryDirectory(dir=args.work) as scratch:
                    out = args.keep / name if args.keep else Path(scratch) / "bundle"
                    wall, peak, size = build(checkpoint, target, weights, out, logs / f"{name}.log")
                ckpt = checkpoint.stat().st_size
                print(f"| {shape} | {weights} | {target} | {wall:.0f} s | {peak / 2**30:.2f} GiB | "
                      f"{ckpt / 2**30:.2f} GiB | {peak / ckpt:.2f}x | {size / 1e6:.0f} MB |", flush=True)


if __name__ == "__main__":
    main()
