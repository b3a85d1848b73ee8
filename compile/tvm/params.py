"""The bundle's weights: parameters of the Relax functions, bound to where their values come from.

A bundle's library holds code only; its weights live in ``params.safetensors`` (``artifact/files.py``),
which the runtime maps instead of copying. The weights never enter the Relax module as values:

- ``bind_initializers`` turns the large initializers of an exported graph into graph inputs before
  the import (MatMulNBits nodes into MatMuls of an input that stands for the quantized matrix), so
  the imported functions take them as parameters and TVM never holds their bytes;
- each such parameter is a ``Weight`` of a ``WeightTable``: its shape and dtype, a key that says what
  it is computed from (equal keys are one weight), and how to compute its values, which the params
  writer asks for one weight at a time (``np.asarray(weight)``). The packing passes make new weights
  from old ones (``WeightTable.derive``: a packed tile layout of a matrix, a GPU GEMV's rows) without
  computing them;
- ``lift_weights``, after the packing passes and before fusion, gives every function that uses a
  weight the same shared list after its own inputs (``num_input`` marks where the weights start), so
  ``main`` and ``prefill`` share each weight; large constants still in the module (graphs imported
  with their weights, as image builds do) join the list by content.

Functions without inputs (``initial_state()``, ``interface()``) and constants under
``LIFT_MIN_ELEMENTS`` (scalars, per-channel vectors) stay in the library.
"""

from __future__ import annotations

import hashlib
import mmap
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import tvm
from tvm import relax
from tvm.relax.expr_functor import PyExprMutator, mutator
from tvm.relax.utils import copy_with_new_vars

from ...errors import ArtifactError
from ...quantize import Quantized

LIFT_MIN_ELEMENTS = 1024  # constants at least this large become parameters (weights); smaller stay inline
PREFIX = "rwkv_edge_weight_"  # the table's variables: graph input names the importer keeps as they are


@dataclass(eq=False)
class Weight:
    """One parameter of the bundle: shape, dtype, what it is made from (``key``) and how (``compute``).
    ``quantized``: for a matrix that stands for a quantization (an export's MatMulNBits), its integers
    and scales, ``bits`` and ``group`` (0 otherwise). ``np.asarray(weight)`` computes the values."""

    shape: tuple[int, ...]
    dtype: np.dtype
    key: tuple
    compute: Callable[[], np.ndarray] = field(repr=False)
    quantized: Callable[[], Quantized] | None = field(default=None, repr=False)
    bits: int = 0
    group: int = 0

    def __array__(self, dtype=None, copy=None) -> np.ndarray:
        value = self.compute()
        if value.shape != self.shape or value.dtype != self.dtype:
            raise ArtifactError(f"weight {self.key[0]} computed as {value.dtype} {value.shape}, "
                                f"expected {self.dtype} {self.shape}")
        return value if dtype is None else value.astype(dtype)

    @property
    def nbytes(self) -> int:
        return int(np.prod(self.shape, dtype=np.int64)) * self.dtype.itemsize


class WeightTable:
    """The weights of one build, one Relax variable per distinct key."""

    def __init__(self) -> None:
        self.by_name: dict[str, Weight] = {}
        self.by_key: dict[tuple, relax.Var] = {}

    def var(self, weight: Weight) -> relax.Var:
        """The variable that stands for ``weight`` (the same one for an equal key)."""
        if weight.key not in self.by_key:
            name = f"{PREFIX}{len(self.by_key)}"
            self.by_key[weight.key] = relax.Var(name, relax.TensorType(weight.shape, str(weight.dtype)))
            self.by_name[name] = weight
        return self.by_key[weight.key]

    def weight(self, expr) -> Weight | None:
        """The weight a Relax expression stands for: one of the table's variables, or a large constant."""
        if isinstance(expr, relax.Var):
            return self.by_name.get(expr.name)
        if isinstance(expr, tvm.ir.expr.Constant) and int(np.prod(expr.value.shape)) >= LIFT_MIN_ELEMENTS:
            return constant_weight(expr)
        return None

    def derive(self, how: str, source: Weight, shape: tuple[int, ...], dtype: str | np.dtype,
               compute: Callable[[], np.ndarray]) -> relax.Var:
        """The variable of a weight made from ``source`` (``how``: the transform and its settings)."""
        return self.var(Weight(tuple(int(d) for d in shape), np.dtype(dtype), (how, source.key), compute))


def constant_weight(const) -> Weight:
    """A Relax constant as a Weight, keyed by its content."""
    array = np.ascontiguousarray(const.value.numpy())
    digest = hashlib.sha256(array.view(np.uint8).data).hexdigest()
    return Weight(array.shape, array.dtype, ("constant", digest, array.shape, str(array.dtype)), lambda: array)


def bind_initializers(proto, directory: Path, table: WeightTable) -> int:
    """Make, in place, every initializer of an onnx ModelProto (read from ``directory``) with at least
    LIFT_MIN_ELEMENTS elements a graph input backed by a ``Weight`` of ``table``, and every MatMulNBits
    a MatMul of an input that stands for its dequantized matrix (the weight keeps the integers and
    scales). Equal tensors (by sha256) of several graphs are one weight. Returns how many weights."""
    from onnx import helper

    from ...export.nbits import DOMAIN, OP

    graph = proto.graph
    tensors = {t.name: t for t in graph.initializer}
    nbits = [node for node in graph.node if node.op_type == OP and node.domain == DOMAIN]
    quantized = {name for node in nbits for name in node.input[1:3]}
    rename = {name: table.var(_initializer_weight(tensor, directory)).name for name, tensor in tensors.items()
              if name not in quantized and int(np.prod(tensor.dims, dtype=np.int64)) >= LIFT_MIN_ELEMENTS}
    nodes = list(graph.node)
    for i, node in enumerate(nodes):
        if node.op_type == OP and node.domain == DOMAIN:
            weight = table.var(_matmul_nbits_weight(node, tensors, directory)).name
            nodes[i] = helper.make_node("MatMul", [node.input[0], weight], list(node.output), name=node.name)
    for node in nodes:
        if any(name in rename for name in node.input):
            node.input[:] = [rename.get(name, name) for name in node.input]
    del graph.node[:]
    graph.node.extend(nodes)
    used = {name for node in graph.node for name in node.input}
    kept = [_inline(t, directory) for t in graph.initializer if t.name in used]
    del graph.initializer[:]
    graph.initializer.extend(kept)
    inputs = [name for name in dict.fromkeys(n for node in graph.node for n in node.input) if name in table.by_name]
    for name in inputs:
        weight = table.by_name[name]
        dtype = helper.np_dtype_to_tensor_dtype(weight.dtype)
        graph.input.append(helper.make_tensor_value_info(name, dtype, list(weight.shape)))
    return len(inputs)


def _inline(tensor, directory: Path):
    """A small initializer with its values in the proto (read from its external data file if it has one)."""
    from onnx import numpy_helper

    if tensor.data_location != tensor.EXTERNAL:
        return tensor
    return numpy_helper.from_array(np.asarray(_initializer_weight(tensor, directory)), tensor.name)


def _matmul_nbits_weight(node, tensors: dict, directory: Path) -> Weight:
    """The (K, N) float32 matrix a MatMulNBits node multiplies by, with its integers and scales."""
    from onnx import helper

    from ...export.nbits import unpack

    attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
    k, n, bits, group = (int(attrs[name]) for name in ("K", "N", "bits", "block_size"))
    missing = [name for name in node.input[1:3] if name not in tensors]
    if missing:
        raise ArtifactError(f"{node.op_type} node {node.name!r}: no initializer {missing[0]!r}")
    packed, scales = (_initializer_weight(tensors[name], directory) for name in node.input[1:3])

    def quantized() -> Quantized:
        return unpack(np.asarray(packed), np.asarray(scales), k, n, bits, group)

    return Weight((k, n), np.dtype(np.float32), ("nbits", packed.key, scales.key, k, n, bits, group),
                  lambda: np.ascontiguousarray(quantized().dequantize().T), quantized, bits, group)


def _initializer_weight(tensor, directory: Path) -> Weight:
    """A Weight over one initializer's bytes: the raw data held by the proto, or a mapping of its
    external data file, which must be a file of ``directory`` named without a path."""
    from onnx import helper, numpy_helper

    dtype = helper.tensor_dtype_to_np_dtype(tensor.data_type)
    shape = tuple(int(d) for d in tensor.dims)
    if tensor.data_location == tensor.EXTERNAL:
        info = {e.key: e.value for e in tensor.external_data}
        location = info.get("location", "")
        if not location or Path(location).name != location or location in (".", ".."):
            raise ArtifactError(f"initializer {tensor.name}: external data {location!r} is not a file beside the graph")
        offset, length = int(info.get("offset", 0)), int(info.get("length", -1))
        size = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
        path = directory / location
        if length != size or offset < 0 or not path.is_file() or offset + size > path.stat().st_size:
            raise ArtifactError(f"initializer {tensor.name}: its external data does not fit {location}")
        digest = _sha256_file_range(path, offset, size)

        def compute(path=path, offset=offset) -> np.ndarray:
            return np.array(np.memmap(path, dtype=dtype, mode="r", offset=offset, shape=shape))
    elif tensor.raw_data:
        raw = tensor.raw_data
        if len(raw) != int(np.prod(shape, dtype=np.int64)) * dtype.itemsize:
            raise ArtifactError(f"initializer {tensor.name}: {len(raw)} bytes for {dtype} {list(shape)}")
        digest = hashlib.sha256(raw).hexdigest()

        def compute(raw=raw) -> np.ndarray:
            return np.frombuffer(raw, dtype=dtype).reshape(shape)
    else:
        array = numpy_helper.to_array(tensor)
        digest = hashlib.sha256(np.ascontiguousarray(array).view(np.uint8).data).hexdigest()

        def compute(array=array) -> np.ndarray:
            return array
    return Weight(shape, dtype, ("initializer", digest, shape, str(dtype)), compute)


def _sha256_file_range(path: Path, offset: int, size: int) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as mapped:
        for start in range(offset, offset + size, 64 << 20):
            digest.update(mapped[start:min(start + (64 << 20), offset + size)])
    return digest.hexdigest()


@mutator
class _Bind(PyExprMutator):
    """Replaces the table's variables and large constants by one shared variable per weight."""

    def __init__(self, mod: tvm.IRModule, table: WeightTable) -> None:
        super().__init__(mod)
        self.table = table
        self.order: list[tuple] = []  # weight keys in order of first use
        self.used = False  # whether the function being visited used a weight

    def _shared(self, weight: Weight) -> relax.Var:
        var = self.table.var(weight)
        if weight.key not in self.order:
            self.order.append(weight.key)
        self.used = True
        return var

    def visit_generic_const_(self, const):
        weight = self.table.weight(const)
        return const if weight is None else self._shared(weight)

    def visit_var_(self, var):
        weight = self.table.weight(var)
        return var if weight is None else self._shared(weight)

    def visit_dataflow_var_(self, var):
        return self.visit_var_(var)


def lift_weights(mod: tvm.IRModule, table: WeightTable | None = None) -> tuple[tvm.IRModule, list[Weight]]:
    """Every weight of every Relax function with inputs (the table's parameters, and large constants)
    made one shared trailing parameter list. Returns the module and the weights in order (what
    ``params.safetensors`` holds, ``np.asarray`` of each)."""
    table = table or WeightTable()
    binder = _Bind(mod, table)
    bodies = {}
    for gvar, func in mod.functions_items():
        if isinstance(func, relax.Function) and func.params:
            binder.used = False
            body = binder.visit_expr(func.body)
            own = [p for p in func.params if table.weight(p) is None]
            if binder.used or len(own) != len(func.params):
                bodies[gvar] = (func, own, body)
    lifted = binder.builder_.get()
    weights = [table.by_name[table.by_key[key].name] for key in binder.order]
    params = [relax.Var(f"w{i}", relax.TensorType(w.shape, str(w.dtype))) for i, w in enumerate(weights)]
    rename = {table.by_key[key].name: param for key, param in zip(binder.order, params)}
    for gvar, (func, own, body) in bodies.items():  # after the visits: the full list is known only now
        body = _Rename(rename).visit_expr(body)
        new = relax.Function(own + params, body, func.ret_ty, func.is_pure, func.attrs)
        # each function binds its own variables (a Relax variable has one definition site)
        lifted[gvar] = copy_with_new_vars(new.with_attr("num_input", len(own)))
    return lifted, weights


@mutator
class _Rename(PyExprMutator):
    """The table's variables by the shared parameters ``w0, w1, ...``."""

    def __init__(self, rename: dict[str, relax.Var]) -> None:
        super().__init__()
        self.rename = rename

    def visit_var_(self, var):
        return self.rename.get(var.name, var)
