"""Gathers of one constant position become slices before TVM imports an ONNX graph.

The recurrences take position t of a (..., T, H, N) tensor as ``z[..., t, :, :]`` (and the shift
states the last one, ``x[..., -1, :]``), which exports as an ONNX Gather with a constant scalar index.
TVM's importer normalises a Gather's index at run time (``shape_to_tensor``, ``less``, ``take``, ``add``,
``where``: five small kernels per Gather, which Relax folds only with FoldConstant, too slow to
compile: docs/tvm.md, "Kernel calls"). A Slice with constant
bounds and a Squeeze import as a ``strided_slice`` and a reshape. The exported graph keeps its Gathers
(onnxruntime runs them as they are, and moving the slicing into the model made the exporter's clean-up
10x slower); this rewrite is the TVM compiler's own.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import helper, numpy_helper

SQUEEZE_TAKES_AXES_INPUT = 13  # opset from which Squeeze takes its axes as an input
END = np.iinfo(np.int64).max  # a Slice's end that means "to the end of the axis"


def gathers_as_slices(proto: onnx.ModelProto) -> int:
    """Rewrite every ``Gather(data, i)`` whose index is a scalar initializer into
    ``Squeeze(Slice(data, [i], [i + 1], [axis]), [axis])`` (i = -1: to the end), in place; returns how many."""
    graph = proto.graph
    opset = next((o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")), 0)
    if opset < SQUEEZE_TAKES_AXES_INPUT:
        return 0
    inputs = {value.name for value in graph.input}  # an initializer named as an input is only a default
    scalars = {init.name: int(numpy_helper.to_array(init)) for init in graph.initializer
               if not init.dims and init.data_type in (onnx.TensorProto.INT64, onnx.TensorProto.INT32)
               and init.name not in inputs}
    constants: dict[str, int] = {}  # name -> value of the 1-element int64 tensors added

    def constant(kind: str, value: int) -> str:
        name = f"rwkv_edge.slice.{kind}.{value}"
        if name not in constants:
            constants[name] = value
            graph.initializer.append(numpy_helper.from_array(np.array([value], np.int64), name))
        return name

    nodes, count = [], 0
    for node in graph.node:
        index = scalars.get(node.input[1]) if node.op_type == "Gather" and len(node.input) == 2 else None
        if index is None:
            nodes.append(node)
            continue
        axis = next((a.i for a in node.attribute if a.name == "axis"), 0)
        axes = constant("axis", axis)
        sliced = f"{node.output[0]}.slice"
        bounds = [constant("start", index), constant("end", index + 1 if index != -1 else END)]
        nodes.append(helper.make_node("Slice", [node.input[0], *bounds, axes], [sliced], name=f"{node.name}.slice"))
        nodes.append(helper.make_node("Squeeze", [sliced, axes], [node.output[0]], name=f"{node.name}.squeeze"))
        count += 1
    del graph.node[:]
    graph.node.extend(nodes)
    return count
