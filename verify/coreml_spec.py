"""Check an .mlpackage's interface against the step contract, on any OS.

Per function: the inputs, outputs and states with their names, shapes and dtypes; the spec
version that the deployment target calls for; the ops the program uses.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

from ..artifact import Manifest
from ..targets.coreml import coreml_name

# Core ML specification version of each minimum deployment target
SPEC_VERSIONS = {"iOS16": 7, "iOS17": 8, "iOS18": 9, "macOS13": 7, "macOS14": 8, "macOS15": 9}
COMPRESSION_OPS = {"int8": "constexpr_blockwise_shift_scale", "int4": "constexpr_blockwise_shift_scale"}


@dataclass
class SpecCheck:
    problems: list[str] = field(default_factory=list)
    ops: dict[str, dict[str, int]] = field(default_factory=dict)  # function -> op type -> count

    def summary(self) -> str:
        ops = {f: sum(c.values()) for f, c in self.ops.items()}
        return ("spec check: " + ("passed" if not self.problems else f"{len(self.problems)} problems")
                + "; ops per function " + ", ".join(f"{f} {n}" for f, n in ops.items()))


def check_spec(manifest: Manifest, spec, program) -> SpecCheck:
    """Compare the package's spec (a Model protobuf) and MIL program with what ``manifest`` promises."""
    check = SpecCheck()
    target = manifest.target
    want_version = SPEC_VERSIONS[target.deployment]
    if spec.specificationVersion != want_version:
        check.problems.append(f"spec version {spec.specificationVersion}, expected {want_version} for {target.deployment}")
    if spec.WhichOneof("Type") != "mlProgram":
        check.problems.append(f"model type {spec.WhichOneof('Type')}, expected mlProgram")
    described = {f.name: f for f in spec.description.functions} or {"main": spec.description}
    if list(described) != target.functions:
        check.problems.append(f"functions {list(described)}, expected {target.functions}")
    chunks = {graph.function: graph.chunk for graph in manifest.graphs.values()}
    for function, description in described.items():
        _check_function(check, manifest, function, description, chunks.get(function))
        counts = Counter(op.op_type for op in program.functions[function].operations)
        check.ops[function] = dict(sorted(counts.items()))
        wanted_op = COMPRESSION_OPS.get(manifest.weights)
        if wanted_op and not counts.get(wanted_op):
            check.problems.append(f"{function}: no {wanted_op} op, but the weights should be {manifest.weights}")
    return check


def _check_function(check: SpecCheck, manifest: Manifest, function: str, description, chunk: int | None) -> None:
    vocab = int(manifest.config["vocab_size"])
    token = ("tokens", "INT32", [1, chunk]) if chunk else ("token", "INT32", [1])
    inputs, outputs, states = [token], [("logits", "FLOAT32", [1, vocab])], []
    for t in manifest.state:
        shape = [1, *t.shape]
        if manifest.target.form == "stateful":
            states.append((coreml_name(t.input_name), "FLOAT16", shape))
        else:
            inputs.append((coreml_name(t.input_name), "FLOAT32", shape))
            outputs.append((coreml_name(t.output_name), "FLOAT32", shape))
    for what, want, features in (("input", inputs, description.input), ("output", outputs, description.output),
                                 ("state", states, description.state)):
        got = [_feature(f, what) for f in features]
        if got != want:
            missing = [w for w in want if w not in got]
            extra = [g for g in got if g not in want]
            check.problems.append(f"{function}: {what}s differ from the contract: missing {missing}, unexpected {extra}"
                                  if missing or extra else f"{function}: {what}s are out of contract order")


def _feature(feature, what: str) -> tuple[str, str, list[int]]:
    from coremltools.proto import FeatureTypes_pb2 as ft

    array = feature.type.stateType.arrayType if what == "state" else feature.type.multiArrayType
    return feature.name, ft.ArrayFeatureType.ArrayDataType.Name(array.dataType), list(array.shape)
