"""Quantized weights in an ONNX graph: ``MatMul(x, W)`` <-> onnxruntime's ``com.microsoft.MatMulNBits``.

The model's projections were replaced by their quantization before the export (``quantize_weights``),
so every such ``W`` (K, N) is exactly a dequantized matrix; ``quantized_exactly`` recovers its integers
and scales, which MatMulNBits stores as (N, K / group, group * bits / 8) uint8 with the zero point
2^(bits-1) implied and the scales (N * K / group) as float32 (the fp16 values, exactly).
"""

from __future__ import annotations

import numpy as np

from ..quantize import Quantized, quantized_exactly

DOMAIN = "com.microsoft"
OP = "MatMulNBits"


def to_matmul_nbits(model, bits: int, group: int) -> int:
    """Rewrite, in place, every ``MatMul`` of an onnx ModelProto whose constant right operand is a
    quantized matrix into MatMulNBits; returns how many."""
    from onnx import helper, numpy_helper

    graph = model.graph
    weights = {w.name: w for w in graph.initializer}
    uses = _uses(graph)
    count, nodes, dropped = 0, [], set()
    for node in graph.node:
        w = weights.get(node.input[1]) if node.op_type == "MatMul" and len(node.input) == 2 else None
        found = quantized_exactly(numpy_helper.to_array(w).T, bits, group) if w is not None and len(w.dims) == 2 else None
        if found is None:
            nodes.append(node)
            continue
        count += 1
        n, k = found.values.shape
        packed = found.packed().reshape(n, k // group, group * bits // 8)
        name = f"{w.name}_q{bits}"
        graph.initializer.extend([numpy_helper.from_array(packed, name),
                                  numpy_helper.from_array(found.scales.astype(np.float32).reshape(-1), f"{name}_scales")])
        nodes.append(helper.make_node(OP, [node.input[0], name, f"{name}_scales"], list(node.output), name=node.name,
                                      domain=DOMAIN, K=k, N=n, bits=bits, block_size=group))
        uses[w.name] -= 1
        if uses[w.name] == 0:
            dropped.add(w.name)
    kept = [w for w in graph.initializer if w.name not in dropped]
    del graph.node[:], graph.initializer[:]
    graph.node.extend(nodes)
    graph.initializer.extend(kept)
    if count and not any(o.domain == DOMAIN for o in model.opset_import):
        model.opset_import.append(helper.make_opsetid(DOMAIN, 1))
    return count


def from_matmul_nbits(model) -> int:
    """Rewrite, in place, every MatMulNBits back into ``MatMul`` with the dequantized matrix (exact: the
    quantization is recovered from it by ``quantized_exactly``); returns how many. For compilers that
    read plain ONNX and quantize themselves (TVM)."""
    from onnx import helper, numpy_helper

    graph = model.graph
    weights = {w.name: w for w in graph.initializer}
    count, nodes = 0, []
    for node in graph.node:
        if node.op_type != OP or node.domain != DOMAIN:
            nodes.append(node)
            continue
        count += 1
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        packed, scales = (numpy_helper.to_array(weights[name]) for name in node.input[1:3])
        matrix = unpack(packed, scales, attrs["K"], attrs["N"], attrs["bits"], attrs["block_size"]).dequantize()
        name = f"{node.input[1]}_dequantized"
        graph.initializer.append(numpy_helper.from_array(np.ascontiguousarray(matrix.T), name))
        nodes.append(helper.make_node("MatMul", [node.input[0], name], list(node.output), name=node.name))
    del graph.node[:]
    graph.node.extend(nodes)
    used = {i for node in graph.node for i in node.input}
    kept = [w for w in graph.initializer if w.name in used]
    del graph.initializer[:]
    graph.initializer.extend(kept)
    return count


def unpack(packed: np.ndarray, scales: np.ndarray, k: int, n: int, bits: int, group: int) -> Quantized:
    """MatMulNBits' initializers -> Quantized (the inverse of ``Quantized.packed``)."""
    flat = packed.reshape(n, -1)
    if bits == 4:
        flat = np.stack([flat & 0xF, flat >> 4], axis=-1).reshape(n, -1)
    values = (flat[:, :k].astype(np.int16) - (1 << (bits - 1))).astype(np.int8)
    return Quantized(values, scales.reshape(n, k // group).astype(np.float16), bits)


def _uses(graph) -> dict[str, int]:
    counts: dict[str, int] = {}
    for node in graph.node:
        for name in node.input:
            counts[name] = counts.get(name, 0) + 1
    return counts
