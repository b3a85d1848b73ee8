"""The CPU build of a Relax module: weights packed and lifted, fused, the project's CPU schedules
(``schedules.py``) with the target's tuned parameters, and ``tvm.compile`` for the target."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from ...artifact.builder import stage
from ...targets import TvmTarget
from ...weights import weight_format
from .gather_warnings import without_gather_warnings
from .options import TvmOptions

if TYPE_CHECKING:
    from .params import WeightTable


def build(mod, target: TvmTarget, options: TvmOptions, log: Callable[[str], None], fuse: bool = True,
           vocab_size: int | None = None, table: WeightTable | None = None):
    """Optimise, add ``interface()`` (``vocab_size``: the embedding's rows; None for an image graph), build."""
    import tvm

    from .interface import add_interface

    mod, counts, weights = optimise(mod, target, options, log, fuse, table=table)
    with stage(log, f"build for {target.triple}"):
        executable = tvm.compile(add_interface(mod, vocab_size), tvm.target.Target(target.tvm_target()))
    return executable, counts, weights


def optimise(mod, target: TvmTarget, options: TvmOptions, log: Callable[[str], None], fuse: bool = True,
             candidate: dict[str, int] | None = None, table: WeightTable | None = None):
    """``mod`` as the CPU build compiles it: weights packed and lifted, fused (unless ``fuse`` is False:
    one kernel per op), scheduled; returns the module, the kernel counts and the weights (``Weight``s,
    ``np.asarray`` computes each; ``scripts/profile_kernels.py`` times its kernels). ``table``: the
    weights ``import_graph`` bound (None: a module with constant weights). ``candidate``: schedule
    parameters in place of the target's tuned ones, e.g. {"tile": 64, "unroll": 8}
    (``scripts/tune_schedules.py`` times them)."""
    import tvm
    from tvm import relax

    from .gemm import ScheduleGemms, pack_gemm_weights
    from .packing import pack_gemv_weights
    from .params import WeightTable, lift_weights
    from .schedules import ApplyCpuSchedules
    from .tuning import ScheduleParams

    tvm_target = tvm.target.Target(target.tvm_target())
    tuned = target.schedule_data(options.weights)["params"]
    params = ScheduleParams(**{**tuned, **(candidate or {})},
                            dot=target.dot_product() if options.integer_compute else "")
    counts: dict[str, int] = {}
    table = table or WeightTable()
    with tvm_target, stage(log, "optimise: pack weights, lift them, fuse, schedule"), without_gather_warnings():
        if options.schedules:
            bits = weight_format(options.weights).bits
            mod, counts["packed gemm"] = pack_gemm_weights(mod, table, params, bits, options.group_size or 0)
            mod, gemvs = pack_gemv_weights(mod, table, params, bits, options.group_size or 0)
            counts.update(gemvs)
        mod, weights = lift_weights(mod, table)
        fusion = [relax.transform.FuseOps(), relax.transform.FuseTIR()] if fuse else []
        mod = tvm.ir.transform.Sequential([
            relax.transform.LegalizeOps(), relax.transform.AnnotateTIROpPattern(), *fusion, relax.transform.DeadCodeElimination(),
        ])(mod)
        if options.schedules:
            gemms = ScheduleGemms(params)
            mod = gemms(mod)
            counts["gemm kernels"] = gemms.count
            schedule = ApplyCpuSchedules(params)
            mod = schedule(mod)
            counts.update({f"{rule} kernels": n for rule, n in schedule.counts.items()})
    log("  " + ", ".join(f"{k}: {v}" for k, v in counts.items()) if counts else "  TVM default lowering")
    return mod, counts, weights
