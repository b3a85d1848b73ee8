"""Weights out of the library: every large constant of the Relax functions becomes a trailing parameter.

A bundle's library then holds code only and its weights live in ``params.safetensors``
(``artifact/files.py``), which the runtime maps instead of copying. Run after the passes that make
constants (the CPU packing pass, the GPU row GEMVs) and before fusion.

The parameter list is shared: a tensor used by several functions (``main`` and ``prefill`` share
every weight) is one parameter, found by content (shape, dtype, bytes), and every function that
uses a weight takes the whole list after its own inputs, in the same order (``num_input`` marks
where the weights start). Functions without inputs (``initial_state()``, ``interface()``) and
constants under ``LIFT_MIN_ELEMENTS`` (scalars, per-channel vectors) stay in the library.
"""

from __future__ import annotations

import hashlib

import numpy as np
import tvm
from tvm import relax
from tvm.relax.expr_functor import PyExprMutator, mutator
from tvm.relax.utils import copy_with_new_vars

LIFT_MIN_ELEMENTS = 1024  # constants at least this large become parameters (weights); smaller stay inline


@mutator
class _Lift(PyExprMutator):
    """Replaces large constants by parameter variables, one variable per distinct content."""

    def __init__(self, mod: tvm.IRModule) -> None:
        super().__init__(mod)
        self.params: list[relax.Var] = []
        self.values: list[np.ndarray] = []
        self.by_content: dict[tuple, relax.Var] = {}
        self.used = False  # whether the function being visited used a weight

    def visit_generic_const_(self, const):
        if not isinstance(const, tvm.ir.expr.Constant) or int(np.prod(const.value.shape)) < LIFT_MIN_ELEMENTS:
            return const
        array = np.ascontiguousarray(const.value.numpy())
        key = (array.shape, str(array.dtype), hashlib.sha256(array.view(np.uint8).data).digest())
        if key not in self.by_content:
            var = relax.Var(f"w{len(self.params)}", relax.TensorType(array.shape, str(array.dtype)))
            self.by_content[key] = var
            self.params.append(var)
            self.values.append(array)
        self.used = True
        return self.by_content[key]


def lift_weights(mod: tvm.IRModule) -> tuple[tvm.IRModule, list[np.ndarray]]:
    """Every large constant of every Relax function with inputs moved into shared trailing parameters.
    Returns the module and the parameters' values in order (what ``params.safetensors`` holds)."""
    lifter = _Lift(mod)
    bodies = {}
    for gvar, func in mod.functions_items():
        if isinstance(func, relax.Function) and func.params:
            lifter.used = False
            body = lifter.visit_expr(func.body)
            if lifter.used:
                bodies[gvar] = (func, body)
    lifted = lifter.builder_.get()
    for gvar, (func, body) in bodies.items():  # after the visits: the full list is known only now
        new = relax.Function(list(func.params) + lifter.params, body, func.ret_ty, func.is_pure, func.attrs)
        # each function binds its own variables (a Relax variable has one definition site)
        lifted[gvar] = copy_with_new_vars(new.with_attr("num_input", len(func.params)))
    return lifted, lifter.values
