"""CPU schedules for the decode step, per fused kernel (TIR, after fusion): the first rule that
recognises a kernel schedules it, the rest keep TVM's default lowering.

A decode step is a chain of matrix-vector products over weights that do not fit in any cache, so
its speed is the speed at which it streams weights from memory. The packing rewrite (``packing.py``)
gives each projection a packed kernel; the rules here schedule them:

- fp32 GEMV (``gemv.py``): producers inlined, tiles in parallel over threads, the K loop unrolled,
  ``tile`` accumulators in vector registers, the epilogue applied to each tile as it completes;
- quantized GEMV (``quantized.py``) and int8 dot (``intdot.py``): the same nest over int8/int4 tiles;
- elementwise kernels (``elementwise.py``: the WKV state update, interpolations): every intermediate
  inlined, the output loops fused, split across threads and vectorised;
- row-wise kernels of a prefill call (``rows.py``: the layer norms, the activation rounding): one
  parallel loop over the rows, every block computed inside it;
- anything else (a decode step's norms over its one row, small reductions) keeps the default lowering.

Tile width and unroll depth are per target (``targets/tuned/*.json``, ``tuning.ScheduleParams``).
"""

from __future__ import annotations

import tvm
from tvm import tirx

from .elementwise import schedule_elementwise
from .gemv import schedule_gemv
from .intdot import schedule_intdot
from .quantized import schedule_quantized_gemv
from .rows import schedule_rows
from .tuning import ScheduleParams


@tvm.ir.transform.module_pass(opt_level=0, name="RwkvEdgeCpuSchedule")
class ApplyCpuSchedules:
    """Schedule every PrimFunc that one of the rules recognises; the rest keep the default lowering."""

    def __init__(self, params: ScheduleParams) -> None:
        self.params = params
        self.counts: dict[str, int] = {}  # rule -> kernels it scheduled

    def transform_module(self, mod: tvm.IRModule, _ctx) -> tvm.IRModule:
        scheduled = {}
        for gvar, func in mod.functions_items():
            if not isinstance(func, tirx.PrimFunc) or func.attrs.get("tirx.is_scheduled"):
                continue  # scheduled already (the GEMMs, compile/tvm/gemm.py)
            for name, rule in (("gemv", schedule_gemv), ("quantized gemv", schedule_quantized_gemv),
                               ("int8 dot", schedule_intdot),
                               ("elementwise", schedule_elementwise), ("rows", schedule_rows)):
                sch = rule(func, self.params)
                if sch is not None:
                    scheduled[gvar] = sch.mod["main"].with_attr("tirx.is_scheduled", True)
                    self.counts[name] = self.counts.get(name, 0) + 1
                    break
            else:
                self.counts["default"] = self.counts.get("default", 0) + 1
        for gvar, func in scheduled.items():
            mod[gvar] = func
        return mod
