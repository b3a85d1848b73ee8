"""Where a prefill call's (or a decode step's, or an image's) time goes: every kernel of the compiled function timed alone.

    python scripts/profile_kernels.py ONNX_DIR [--graph prefill|step|image] [--target x86_64-host] [--threads 2]
                                      [--number 20] [--cpu-time] [--gathers] [--as-ops]

Optimises the export's prefill (or step) graph as ``compile_tvm`` does (``compile/tvm/cpu.py optimise``; an
int8/int4 export in the compute ``compile`` chooses for the target; a prefill graph's RWKV-7 recurrences
one kernel per layer, ``compile/tvm/wkv7.py``, or with ``--as-ops`` the chains the exporter unrolled;
``--gathers``: those chains, without the compiler's Gather rewrite, ``compile/tvm/slices.py``, for
comparison; an image export's graph as the image build takes it, ``compile/tvm/image.py``, or with
``--as-ops`` its Bi-WKV scans and patch convolution left as the exporter wrote them), counts the calls of each kernel
(PrimFunc), builds each distinct kernel alone (kernels equal up to their name are built once), times it
with TVM's time_evaluator on random inputs (median of 3 repeats of ``--number`` calls) and prints the
time per call by kind (GEMM, GEMV, int8 dot, elementwise, other) and the slowest kernels, beside the
whole function's time (the Relax VM, median of 5 calls). TVM 0.27's VM has no profiler; the kernels'
sum leaves out the VM's own work between them (allocation, calls). ``--cpu-time`` times the calling
thread's CPU time instead of wall time (with ``--threads 1``: the figures that stay meaningful while
other jobs load the machine; docs/tvm.md "Prefill").
"""

from __future__ import annotations

import argparse
import os
import time
from collections import Counter, defaultdict

import numpy as np


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("onnx_dir")
    parser.add_argument("--graph", choices=["prefill", "step", "image"], default="prefill")
    parser.add_argument("--target", default="x86_64-host")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--number", type=int, default=20, help="calls per timing")
    parser.add_argument("--top", type=int, default=12, help="slowest kernels to list")
    parser.add_argument("--cpu-time", action="store_true", help="the calling thread's CPU time, not wall time")
    parser.add_argument("--gathers", action="store_true",
                        help="import the position Gathers as they are (compile/tvm/slices.py not applied), for comparison")
    parser.add_argument("--as-ops", action="store_true",
                        help="the recurrences as exported: an image's Bi-WKV scans and patch convolution (no "
                             "compile/tvm/bi_wkv.py, patches.py), a prefill graph's WKV-7 chains (no compile/tvm/wkv7.py)")
    args = parser.parse_args()
    os.environ["TVM_NUM_THREADS"] = str(args.threads)

    import tvm
    import tvm_ffi
    from tvm import relax

    from rwkv_edge.artifact import open_artifact
    from rwkv_edge.compile.tvm import TvmOptions
    from rwkv_edge.targets.compute import resolve_compute
    from rwkv_edge.compile.tvm.cpu import optimise
    from rwkv_edge.compile.tvm.gather_warnings import without_gather_warnings
    from rwkv_edge.compile.tvm.gemm import GEMM_BLOCK
    from rwkv_edge.compile.tvm.gemv import GEMV_BLOCK
    from rwkv_edge.compile.tvm.image import cpu_image_module
    from rwkv_edge.compile.tvm.importer import import_graph
    from rwkv_edge.compile.tvm.intdot import IGEMV_BLOCK
    from rwkv_edge.compile.tvm.language import prefill_module
    from rwkv_edge.compile.tvm.params import WeightTable
    from rwkv_edge.targets import get_target

    onnx = open_artifact(args.onnx_dir, kind="onnx")
    image = args.graph == "image"
    chunk = onnx.manifest.graphs["prefill"].chunk if args.graph == "prefill" else 1
    target = get_target(args.target)
    tvm_target = tvm.target.Target(target.tvm_target())
    weights = onnx.manifest.weights
    options = TvmOptions(args.target, weights=weights, group_size=onnx.manifest.group_size or None,
                         compute=resolve_compute(target, None, weights))
    table = None if image else WeightTable()  # language exports' weights as parameters (MatMulNBits too)
    with without_gather_warnings():
        if image and not args.as_ops:
            graph = cpu_image_module(onnx.graph(args.graph), target, options, print)[0]
        elif args.graph == "prefill" and not (args.as_ops or args.gathers):
            graph = prefill_module(onnx.graph(args.graph), target, options, table, print)[0]
        else:
            graph = import_graph(onnx.graph(args.graph), print, slices=not args.gathers, table=table)
        mod, counts, weights = optimise(graph, target, options, print, fuse=not image, table=table)  # images: unfused

    calls: Counter = Counter()

    def visit(expr) -> None:
        if isinstance(expr, relax.Call) and expr.op.same_as(tvm.ir.Op.get("relax.call_tir")):
            calls[expr.args[0].name_hint] += 1

    relax.analysis.post_order_visit(mod["main"], visit)
    device = tvm.cpu()
    rng = np.random.default_rng(0)
    built: dict[int, float] = {}  # structural hash -> seconds per call
    rows = []
    for name, n in calls.items():
        func = mod[name]
        key = tvm_ffi.structural_hash(func.without_attr("global_symbol"))
        if key not in built:
            kernel = tvm.compile(tvm.IRModule({"main": func.with_attr("global_symbol", "main")}), tvm_target).jit()
            inputs = []
            for param in func.params:
                shape, dtype = [int(d) for d in param.ty.shape], str(param.ty.dtype)
                data = np.zeros(shape, dtype) if "int" in dtype else rng.uniform(-1, 1, shape).astype(dtype)
                inputs.append(tvm.runtime.tensor(data, device))
            if args.cpu_time:
                built[key] = float(np.median([time_per_call(lambda: kernel(*inputs), args.number, time.thread_time)
                                              for _ in range(3)]))
            else:
                timer = kernel.time_evaluator(kernel.entry_name, device, number=args.number, repeat=3)
                built[key] = float(np.median(timer(*inputs).results))
        kind = ("gemm" if has_block(func, GEMM_BLOCK) else "gemv" if has_block(func, GEMV_BLOCK) else
                "int8 dot" if has_block(func, IGEMV_BLOCK) else
                "scheduled" if func.attrs.get("tirx.is_scheduled") else "default lowering")
        rows.append((built[key] * n, name, n, kind))

    with without_gather_warnings():
        executable = tvm.compile(mod, tvm_target)
    vm = relax.VirtualMachine(executable, device)
    if image:
        inputs = [tvm.runtime.tensor(onnx.vision_reference().images[:1].astype(np.float32), device)]
    else:
        state = onnx.initial_state()
        shape = (1, chunk) if args.graph == "prefill" else (1,)
        inputs = [tvm.runtime.tensor(rng.integers(0, onnx.manifest.vocab_size, shape).astype(np.int64), device)]
        inputs += [tvm.runtime.tensor(np.asarray(state[t.input_name], np.float32)[None], device) for t in onnx.manifest.state]
    params = [tvm.runtime.tensor(np.asarray(w), device) for w in weights]
    clock = time.thread_time if args.cpu_time else time.perf_counter
    whole = [time_per_call(lambda: vm["main"](*inputs, *params), 1, clock) for _ in range(5)]
    whole_ms = float(np.median(whole)) * 1e3

    total = sum(r[0] for r in rows) * 1e3
    what = f"image, {onnx.manifest.config['image_size']} px" if image else f"{args.graph}, T = {chunk}"
    rate = f"{1e3 / whole_ms:.1f} images/s" if image else f"{chunk / whole_ms * 1e3:.0f} tok/s"
    print(f"\n{what}, {options.compute} compute, {args.threads} threads, {args.target}, {'CPU' if args.cpu_time else 'wall'} time: whole function {whole_ms:.2f} ms "
          f"({rate}); kernels timed alone sum to {total:.2f} ms; "
          f"{sum(calls.values())} calls of {len(calls)} kernels ({len(built)} distinct)")
    by_kind = defaultdict(lambda: [0.0, 0])
    for seconds, _, n, kind in rows:
        by_kind[kind][0] += seconds * 1e3
        by_kind[kind][1] += n
    for kind, (ms, n) in sorted(by_kind.items(), key=lambda kv: -kv[1][0]):
        print(f"  {kind:17s} {ms:8.2f} ms  {ms / total:5.1%}  {n:5d} calls")
    print(f"slowest {args.top}:")
    for seconds, name, n, kind in sorted(rows, reverse=True)[:args.top]:
        print(f"  {seconds * 1e3:8.3f} ms  {n:4d} x  {kind:17s} {name}")
    print(f"load average {os.getloadavg()[0]:.1f}")


def time_per_call(call, number: int, clock) -> float:
    """Seconds per call of ``call`` by ``clock`` over ``number`` calls, after one untimed call."""
    call()
    start = clock()
    for _ in range(number):
        call()
    return (clock() - start) / number


def has_block(func, name: str) -> bool:
    """Whether ``func`` has a block ``name`` (or, scheduled, its update block ``name_update``)."""
    from tvm import s_tir

    sch = s_tir.Schedule(func)
    for candidate in (name, f"{name}_update"):
        try:
            sch.get_sblock(candidate)
            return True
        except (RuntimeError, ValueError):
            continue
    return False


if __name__ == "__main__":
    main()
