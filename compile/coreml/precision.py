"""fp16 compute with fp32 where fp16 cannot carry the numbers: the op selector of coremltools'
``FP16ComputePrecision`` (``Fp16Selector``), by default keeping the normalisations and the WKV
recurrence in fp32."""

from __future__ import annotations

from collections.abc import Callable

# Ops kept in fp32 under fp16 compute: normalisations and the reductions they decompose into.
FP32_OP_TYPES = frozenset({"layer_norm", "instance_norm", "batch_norm", "l2_norm", "reduce_mean", "reduce_sum",
                           "reduce_l2_norm", "reduce_sum_square", "square", "sqrt", "rsqrt", "pow"})


class Fp16Selector:
    """``op_selector`` of FP16ComputePrecision: True for the ops that run in fp16.

    Kept in fp32: the normalisation ops (FP32_OP_TYPES) and the ops ``region(block)`` names; by default
    the WKV recurrence, i.e. every op on a path from a ``wkv*`` state (an input, or a ``read_state``) to a
    ``wkv*`` state output (a function output, or a ``coreml_update_state``)."""

    def __init__(self, region: Callable[[object], set[int]] | None = None) -> None:
        self._region = region or _recurrence_ops
        self._fp32: dict[int, set[int]] = {}

    def __call__(self, op) -> bool:
        if op.op_type in FP32_OP_TYPES:
            return False
        block = op.enclosing_block
        if id(block) not in self._fp32:
            self._fp32[id(block)] = self._region(block)
        return id(op) not in self._fp32[id(block)]


def _recurrence_ops(block) -> set[int]:
    """ids of the ops that lie on a path from a wkv state to a wkv state output."""
    def is_wkv(name: str) -> bool:
        return "_wkv" in name  # state_3_wkv, state_out_3_wkv_num, ...

    sources = [v for name, v in block.inputs.items() if is_wkv(name)] if hasattr(block, "inputs") else []
    sinks = [v for v in block.outputs if is_wkv(v.name)]
    for op in block.operations:
        if op.op_type == "read_state" and is_wkv(op.input.name):
            sources.extend(op.outputs)
        if op.op_type == "coreml_update_state" and is_wkv(op.state.name):
            sinks.append(op.value)
    downstream, stack = set(), [op for v in sources for op in v.child_ops]
    while stack:
        op = stack.pop()
        if id(op) not in downstream:
            downstream.add(id(op))
            stack.extend(child for out in op.outputs for child in out.child_ops)
    upstream, stack = set(), [v.op for v in sinks if v.op is not None]
    while stack:
        op = stack.pop()
        if id(op) not in upstream:
            upstream.add(id(op))
            stack.extend(v.op for v in op.get_flattened_inputs() if v.op is not None)
    return downstream & upstream
