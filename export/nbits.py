"""Quantized weights in an ONNX graph: ``MatMul(x, W)`` <-> onnxruntime's ``com.microsoft.MatMulNBits``.

The export names the matrices it quantized (the model's linear layers: ``quantize_weights`` replaced
each by its quantization, dequantized), and ``to_matmul_nbits`` turns every ``MatMul(x, Transpose(W))``
of such a ``W`` (N, K) into MatMulNBits, whose integers and scales ``quantize`` gives back exactly
from ``W`` when the graph is saved: (N, K / group, group * bits / 8) uint8 with the zero point
2^(bits-1) implied, and the scales (N * K / group) as float32 (the fp16 values, exactly). ``unpack``
reads them back as a ``Quantized`` (the TVM compiler's weights, ``compile/tvm/params.py``).
"""

from __future__ import annotations

from collections.abc import Collection

import numpy as np

from ..quantize import Quantized, quantize

DOMAIN = "com.microsoft"
OP = "MatMulNBits"


def to_matmul_nbits(model, names: Collection[str], bits: int, group: int) -> int:
    """Rewrite, in place, every ``MatMul(x, Transpose(W))`` of an onnx_ir Model whose ``W`` is an
    initializer named in ``names`` into MatMulNBits; returns how many. The quantized initializers are
    computed when the model is saved, one matrix at a time."""
    import onnx_ir as ir

    graph = model.graph
    count = 0
    for node in list(graph):
        transpose = node.inputs[1].producer() if node.op_type == "MatMul" and node.domain in ("", "ai.onnx") else None
        weight = transpose.inputs[0] if transpose is not None and transpose.op_type == "Transpose" else None
        if weight is None or weight.name not in names or not weight.is_initializer() or len(weight.shape) != 2:
            continue
        n, k = (int(d) for d in weight.shape)
        packed, scales = _quantized_initializers(graph, weight, bits, group)
        replacement = ir.node(OP, [node.inputs[0], packed, scales], domain=DOMAIN, name=node.name,
                              attributes={"K": k, "N": n, "bits": bits, "block_size": group})
        ir.convenience.replace_nodes_and_values(graph, node, [node], [replacement], node.outputs, replacement.outputs)
        if not transpose.outputs[0].uses():
            graph.remove(transpose, safe=True)
        if not weight.uses():
            graph.initializers.pop(weight.name).const_value = None  # the lazy initializers hold it now
        count += 1
    if count and DOMAIN not in model.opset_imports:
        model.opset_imports[DOMAIN] = 1
    return count


def _quantized_initializers(graph, weight, bits: int, group: int):
    """MatMulNBits' two initializers for ``weight`` (N, K), computed from it when the graph is saved
    (``quantize`` once for both)."""
    import onnx_ir as ir

    from .cleanup import lazy_initializer

    n, k = (int(d) for d in weight.shape)
    source, cache = weight.const_value, {}

    def found() -> Quantized:
        return cache.pop("q") if "q" in cache else cache.setdefault("q", quantize(source.numpy(), bits, group))

    packed = lazy_initializer(graph, f"{weight.name}_q{bits}", (n, k // group, group * bits // 8), ir.DataType.UINT8,
                              lambda: found().packed().reshape(n, k // group, group * bits // 8))
    scales = lazy_initializer(graph, f"{weight.name}_q{bits}_scales", (n * k // group,), ir.DataType.FLOAT,
                              lambda: found().scales.astype(np.float32).reshape(-1))
    return packed, scales


def unpack(packed: np.ndarray, scales: np.ndarray, k: int, n: int, bits: int, group: int) -> Quantized:
    """MatMulNBits' initializers -> Quantized (the inverse of ``Quantized.packed``)."""
    flat = packed.reshape(n, -1)
    if bits == 4:
        flat = np.stack([flat & 0xF, flat >> 4], axis=-1).reshape(n, -1)
    values = (flat[:, :k].astype(np.int16) - (1 << (bits - 1))).astype(np.int8)
    return Quantized(values, scales.reshape(n, k // group).astype(np.float16), bits)
