"""int8/int4 weights in a Core ML package: each quantized matrix a ``constexpr_blockwise_shift_scale``
of exactly the project's quantizer's integers and fp16 scales (iOS 18 / macOS 15)."""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
from torch import nn

from ...errors import ToolError
from ...quantize import Quantized
from ...targets.coreml import quiet_coremltools

BLOCKWISE_SPEC = 9  # Core ML spec version of iOS 18 / macOS 15: constexpr_blockwise_shift_scale


def quantized_matrices(linears: Iterable[tuple[nn.Linear, Quantized]]) -> dict[bytes, Quantized]:
    """The quantizer's integers and scales of each quantized ``nn.Linear`` (``model.base.quantized_linears``),
    keyed by the fp16 bytes of its weight, the dequantized matrix: the value its Core ML const holds."""
    return {module.weight.detach().numpy().astype(np.float16).tobytes(): quantized for module, quantized in linears}


def compress_blockwise(mlmodel, matrices: dict[bytes, Quantized]):
    """Every const weight that is one of ``matrices`` (fp16) -> ``constexpr_blockwise_shift_scale`` of its
    integers and scales. ToolError if one of them is not found (the converter changed the weights)."""
    from coremltools.converters.mil import Builder as mb
    from coremltools.converters.mil.mil import types
    from coremltools.converters.mil.mil.passes.graph_pass import AbstractGraphPass
    from coremltools.models.utils import _apply_graph_pass  # coremltools' own compressors apply passes so

    replaced: set[bytes] = set()

    class Blockwise(AbstractGraphPass):
        def apply(self, prog) -> None:
            for function in prog.functions.values():
                for op in list(function.operations):
                    value = op.outputs[0].val if op.op_type == "const" else None
                    if not isinstance(value, np.ndarray) or value.ndim != 2:
                        continue
                    key = value.astype(np.float16).tobytes()
                    q = matrices.get(key)
                    if q is None or q.values.shape != value.shape:
                        continue
                    replaced.add(key)
                    data = q.values.astype(types.np_int4_dtype) if q.bits == 4 else q.values
                    with function:
                        # the const's own dtype: fp32 where a linear stays in fp32 (fp32 scales hold the fp16 ones)
                        new = mb.constexpr_blockwise_shift_scale(data=data, scale=q.scales.astype(value.dtype), before_op=op,
                                                                 name=f"{op.name}_{q.bits}bit")
                    function.replace_uses_of_var_after_op(anchor_op=op, old_var=op.outputs[0], new_var=new)
                    function.remove_ops([op])

    with quiet_coremltools():
        compressed = _apply_graph_pass(mlmodel, Blockwise(), spec_version=BLOCKWISE_SPEC)
    if len(replaced) != len(matrices):
        raise ToolError(f"coremltools changed {len(matrices) - len(replaced)} of the {len(matrices)} quantized "
                        "matrices on conversion; they cannot be stored as the quantizer's numbers")
    return compressed
