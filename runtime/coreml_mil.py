"""Evaluate an ML program from an .mlpackage op by op with coremltools' own per-op value inference.

Nothing runs Core ML models outside macOS. This is a reference evaluation of the program the
package holds (its ops, constants, casts and compressed weights, each op computed by the numpy
code coremltools uses to fold constants, compressed weights by its ``materialized_val_inference``,
the few ops it cannot evaluate by OWN_VALUE_INFERENCE): a check of the conversion, not of Apple's
runtime.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..errors import ArtifactError
from ..targets.coreml import import_coremltools, quiet_coremltools

WEIGHTS = Path("Data/com.apple.CoreML/weights")


def _silu(op) -> np.ndarray:
    x = op.x.val
    return x / (1 + np.exp(-x))


def _conv(op) -> np.ndarray:
    """2-D convolution with valid padding, one group and no dilation (image models' patch embedding)."""
    x, w = op.x.val.astype(np.float32), op.weight.val.astype(np.float32)  # (B, Cin, H, W), (Cout, Cin, kh, kw)
    plain = (op.pad_type is None or op.pad_type.val == "valid") and (op.groups is None or op.groups.val == 1)
    if x.ndim != 4 or not plain or (op.dilations is not None and any(d != 1 for d in op.dilations.val)):
        raise NotImplementedError
    sh, sw = op.strides.val if op.strides is not None else (1, 1)
    windows = np.lib.stride_tricks.sliding_window_view(x, w.shape[2:], axis=(2, 3))[:, :, ::sh, ::sw]  # (B, Cin, Ho, Wo, kh, kw)
    y = np.einsum("bchwij,ocij->bohw", windows, w)
    return y if op.bias is None else y + op.bias.val.astype(np.float32).reshape(1, -1, 1, 1)


# Ops that coremltools 9.0 gives no value inference, computed here by their MIL definitions
OWN_VALUE_INFERENCE = {"silu": _silu, "conv": _conv}


class MilProgram:
    """The functions of an .mlpackage, runnable on numpy arrays."""

    def __init__(self, package: str | Path) -> None:
        ct = import_coremltools()
        from coremltools.converters.mil.frontend.milproto.load import load

        package = Path(package)
        try:
            with quiet_coremltools():
                self.spec = ct.utils.load_spec(str(package))
                self.program = load(self.spec, self.spec.specificationVersion, str(package / WEIGHTS))
        except Exception as e:  # protobuf and coremltools raise their own types for damaged packages
            raise ArtifactError(f"{package}: coremltools cannot read the ML program: {e}") from None
        self._constants: dict[str, dict[str, np.ndarray]] = {}  # function -> decompressed weights
        for name, function in self.program.functions.items():
            _plain_bool_constants(function)
            self._constants[name] = {op.outputs[0].name: np.asarray(op.materialized_val_inference())
                                     for op in function.operations if op.op_type.startswith("constexpr_")}

    @property
    def functions(self) -> list[str]:
        return list(self.program.functions)

    def run(self, function: str, inputs: dict[str, np.ndarray],
            states: dict[str, np.ndarray] | None = None) -> dict[str, np.ndarray]:
        """The function's outputs by name. ``states`` (Core ML state name -> array) is read by
        ``read_state`` and replaced by ``coreml_update_state``, as Core ML updates states in place."""
        block = self.program.functions[function]
        env = dict(self._constants[function])
        for name, var in block.inputs.items():
            if name in inputs:
                env[name] = np.asarray(inputs[name])
            elif states is None or name not in states:
                raise ArtifactError(f"function {function!r} needs input {name!r}")
        for op in block.operations:
            if op.op_type.startswith("constexpr_"):
                continue
            env.update(zip((v.name for v in op.outputs), _evaluate(op, env, states)))
        return {v.name: env[v.name] for v in block.outputs}


def _evaluate(op, env: dict[str, np.ndarray], states: dict[str, np.ndarray] | None) -> list[np.ndarray]:
    """One op on the values in ``env``: its output values, in the dtypes the program declares."""
    from coremltools.converters.mil.mil import types

    if op.op_type == "const":
        return [op.outputs[0].val]
    if op.op_type == "read_state":
        return [states[op.input.name].copy()]
    if op.op_type == "coreml_update_state":
        states[op.state.name] = env[op.value.name].astype(states[op.state.name].dtype)
        return [env[op.value.name]]
    bound = []
    for var in op.get_flattened_inputs():
        if var.name in env and (var.op is None or var.op.op_type != "const"):
            value = var.sym_type()
            value.val = env[var.name]
            bound.append((var, var._sym_val))
            var._sym_val = value
    try:
        with np.errstate(over="ignore"):  # fp16 exp overflows to inf as on the device: sigmoid(-x) = 1 / (1 + inf) = 0
            values = OWN_VALUE_INFERENCE[op.op_type](op) if op.op_type in OWN_VALUE_INFERENCE else op.value_inference()
    except NotImplementedError:
        raise ArtifactError(f"coremltools has no value inference for op {op.op_type!r} ({op.name}); "
                            "this program can only be evaluated by Core ML on macOS") from None
    finally:
        for var, previous in bound:
            var._sym_val = previous
    values = values if isinstance(values, (tuple, list)) else [values]
    return [np.asarray(value, dtype=types.nptype_from_builtin(out.dtype)) for out, value in zip(op.outputs, values)]


def _plain_bool_constants(block) -> None:
    """numpy 2 bool scalars cannot be used as ``keepdims`` by coremltools' value inference: make them Python bools."""
    for op in block.operations:
        if op.op_type == "const":
            var = op.outputs[0]
            if isinstance(var.val, np.generic) and var.val.dtype == np.bool_:
                var._sym_val.val = bool(var.val)
