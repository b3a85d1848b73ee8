"""``interface()``: the library's own account of what its functions take and return.

Added to the module after the weights are lifted and before it is built, so it describes the very
signatures the library's functions check at run time. A runtime reads it before it calls anything
and holds the manifest and the weights file to it (``artifact/interface.py`` has the format): a
tampered manifest or a weights file from another bundle is then one clear error, not a failed
``match_cast`` deep inside the VM.
"""

from __future__ import annotations

import json

import numpy as np
import tvm
from tvm import relax

from ...artifact.interface import FORMAT

FUNCTION = "interface"


def add_interface(mod: tvm.IRModule, vocab_size: int | None = None) -> tvm.IRModule:
    """``mod`` with ``interface() -> uint8 (n,)``, the UTF-8 JSON of its public functions' inputs and
    outputs, the weights every function with inputs takes after them, and ``vocab_size`` (the rows of
    the embedding the token indexes; None for image graphs)."""
    functions, weights = {}, None
    for gvar, func in mod.functions_items():
        if not isinstance(func, relax.Function) or func.attrs is None or "global_symbol" not in func.attrs:
            continue
        count = int(func.attrs["num_input"]) if "num_input" in func.attrs else len(func.params)
        params = [_spec(p.ty, f"{gvar.name_hint} parameter {p.name}") for p in func.params]
        outputs = func.ret_ty.fields if isinstance(func.ret_ty, tvm.ir.TupleType) else [func.ret_ty]
        functions[gvar.name_hint] = {"inputs": params[:count],
                                     "outputs": [_spec(t, f"{gvar.name_hint} output") for t in outputs]}
        if params[count:]:
            if weights is not None and params[count:] != weights:
                raise AssertionError(f"{gvar.name_hint} takes other weights than the other functions")
            weights = params[count:]
    record = {"format": FORMAT, "vocab_size": vocab_size, "functions": functions, "weights": weights or []}
    data = np.frombuffer(json.dumps(record, separators=(",", ":")).encode(), dtype=np.uint8)
    builder = relax.BlockBuilder(mod)
    with builder.function(FUNCTION, params=[]):
        builder.emit_func_output(relax.const(data, "uint8"))
    return builder.get()


def _spec(ty, what: str) -> list:
    """[dtype, shape] of a Relax tensor type with a static shape."""
    if not isinstance(ty, relax.TensorType) or ty.shape is None:
        raise AssertionError(f"{what} is not a tensor of static shape: {ty}")
    return [str(ty.dtype), [int(d) for d in ty.shape]]
