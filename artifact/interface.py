"""What a graph says it takes and returns, held against what its manifest says, before anything runs.

A manifest is data anyone can edit, and rehash where nobody pinned it, so no backend trusts its sizes:
each reads the facts its graph holds (an ONNX session's inputs and outputs, the ``interface()`` of a
TVM library) into a ``GraphInterface``, and ``check_interface`` names the first manifest field that
disagrees, in one ArtifactError line, before a token or an image reaches the graph. A TVM library's
interface also lists the weights its functions take after their inputs: ``map_params`` holds the
params file's header to that list (artifact/params.py).

A TVM library's ``interface()`` returns the UTF-8 bytes of a JSON object (compile/tvm/interface.py writes
it; the C++ runner reads the same):

    {"format": "rwkv-edge interface", "vocab_size": 256,           # rows of the embedding (token range)
     "functions": {"main": {"inputs": [["int64", [1]], ["float32", [1, 128]], ...],
                            "outputs": [["float32", [1, 256]], ...]}, ...},
     "weights": [["float32", [8, 128, 32]], ...]}                   # after every function's inputs
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from ..contract import IMAGE_GRAPH
from ..errors import ArtifactError
from .manifest import CoreMLBuild, Manifest

FORMAT = "rwkv-edge interface"
MAX_INTERFACE_BYTES = 16 << 20
DTYPES = ("float32", "float16", "int64", "int32", "int8", "uint8")
CALLED = ("step", "prefill", IMAGE_GRAPH)  # the graph roles that take inputs

Dim = int | str  # a size, or the name of a dynamic axis (ONNX's "batch")


@dataclass(frozen=True)
class TensorSpec:
    dtype: str  # numpy's name: "float32", "int64", ...
    shape: tuple[Dim, ...]

    def __str__(self) -> str:
        return f"{self.dtype} ({', '.join(map(str, self.shape))}{',' if len(self.shape) == 1 else ''})"


@dataclass(frozen=True)
class Signature:
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]


@dataclass(frozen=True)
class GraphInterface:
    """A graph's own account of itself: its functions by name (a TVM library's ``main``, ``prefill``),
    or by graph role for one-function files (ONNX: ``step``, ``prefill``, ``image``)."""

    functions: dict[str, Signature]
    weights: tuple[TensorSpec, ...] | None = None  # what every function takes after its inputs (TVM)
    vocab_size: int | None = None  # rows of the embedding the token indexes, where the graph says (TVM)


def parse_interface(data: bytes, where: Path | str) -> GraphInterface:
    """A TVM library's ``interface()`` bytes -> GraphInterface; ArtifactError for anything else."""
    def fail(problem: str):
        raise ArtifactError(f"{where}: its interface() {problem}: not a library made by this rwkv-edge; recompile it")

    if len(data) > MAX_INTERFACE_BYTES:
        fail(f"is {len(data)} bytes")
    try:
        value = json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError):
        fail("is not JSON")
    if not isinstance(value, dict) or value.get("format") != FORMAT:
        fail(f"is not an {FORMAT!r} object")
    functions, weights, vocab = value.get("functions"), value.get("weights"), value.get("vocab_size")
    if not isinstance(functions, dict) or not all(isinstance(f, dict) for f in functions.values()):
        fail("has no functions")
    if vocab is not None and (not isinstance(vocab, int) or isinstance(vocab, bool) or vocab <= 0):
        fail("has a vocab_size that is not a positive integer")
    try:
        return GraphInterface({name: Signature(_specs(f.get("inputs")), _specs(f.get("outputs")))
                               for name, f in functions.items()}, _specs(weights), vocab)
    except (TypeError, ValueError) as e:
        fail(f"describes a tensor badly ({e})")


def _specs(items: object) -> tuple[TensorSpec, ...]:
    if not isinstance(items, list):
        raise TypeError("expected a list of [dtype, shape]")
    specs = []
    for item in items:
        if (not isinstance(item, list) or len(item) != 2 or item[0] not in DTYPES or not isinstance(item[1], list)
                or not all(isinstance(d, int) and not isinstance(d, bool) and 0 <= d < 2**62 for d in item[1])):
            raise ValueError(f"{str(item)[:60]}")
        specs.append(TensorSpec(item[0], tuple(item[1])))
    return tuple(specs)


def check_interface(manifest: Manifest, graph: GraphInterface, where: Path | str) -> None:
    """ArtifactError naming the manifest field that disagrees with what ``graph`` says it computes:
    the token range, the state, the prefill chunk and its logits, the image size, the output, the
    number of weights. Only graph roles the manifest lists are held to it."""
    if graph.vocab_size is not None and graph.vocab_size != manifest.vocab_size:
        raise ArtifactError(f"{where}: its embedding has {graph.vocab_size} rows, the manifest says vocab_size "
                            f"{manifest.vocab_size}")
    for role, entry in manifest.graphs.items():
        if role not in CALLED:
            continue
        name = entry.function or role
        found = graph.functions.get(name)
        if found is None:
            raise ArtifactError(f"{where}: has no function {name!r}, which the manifest's graphs.{role} names")
        for side, got, want in (("input", found.inputs, _inputs(manifest, role)),
                                ("output", found.outputs, _outputs(manifest, role))):
            _compare(where, name, side, got, want, manifest.batch)
        if graph.weights is not None and len(graph.weights) != entry.num_params:
            raise ArtifactError(f"{where}: its functions take {len(graph.weights)} weights, the manifest's "
                                f"graphs.{role}.num_params says {entry.num_params}: the library belongs to another bundle")


def _compare(where, name: str, side: str, got: tuple[TensorSpec, ...], want: list[tuple[TensorSpec, str]],
             batch: int | str) -> None:
    if len(got) != len(want):
        raise ArtifactError(f"{where}: {name} has {len(got)} {side}s, the manifest implies {len(want)}: "
                            "it belongs to another model")
    for i, (have, (expected, field)) in enumerate(zip(got, want)):
        if not _fits(have, expected, batch):
            raise ArtifactError(f"{where}: {name}'s {side} {i} is {have}, the manifest implies {expected} ({field})")


def _fits(have: TensorSpec, expected: TensorSpec, batch: int | str) -> bool:
    """Equal, but for a batch axis the manifest declares dynamic (any name or size there)."""
    if have.dtype != expected.dtype or len(have.shape) != len(expected.shape):
        return False
    return all(h == e or (i == 0 and batch == "dynamic") for i, (h, e) in enumerate(zip(have.shape, expected.shape)))


def _inputs(m: Manifest, role: str) -> list[tuple[TensorSpec, str]]:
    """What the graph of ``role`` must take by the manifest, each with the field that says so."""
    b = 1 if m.batch == 1 else "batch"
    if role == IMAGE_GRAPH:
        c, s = m.config["in_channels"], m.config["image_size"]
        return [(TensorSpec("float32", (b, c, s, s)), "config.in_channels, config.image_size")]
    token = m.target.token_dtype if isinstance(m.target, CoreMLBuild) else "int64"  # Core ML: "int32"
    first = (TensorSpec(token, (b, m.graphs[role].chunk)), f"graphs.{role}.chunk") if role == "prefill" else \
        (TensorSpec(token, (b,)), "a step takes one token")
    return [first, *((TensorSpec(_state_dtype(m), (b, *t.shape)), f"state {t.input_name}") for t in m.state)]


def _outputs(m: Manifest, role: str) -> list[tuple[TensorSpec, str]]:
    b = 1 if m.batch == 1 else "batch"
    if role == IMAGE_GRAPH:
        c = m.config
        if c["output"] == "logits":
            return [(TensorSpec("float32", (b, c["num_classes"])), "config.num_classes")]
        grid = c["image_size"] // c["patch_size"]
        return [(TensorSpec("float32", (b, c["embed_dims"], grid, grid)), "config.embed_dims, config.image_size")]
    graph = m.graphs[role]
    logits = (TensorSpec("float32", (b, graph.chunk, m.vocab_size)), f"graphs.{role}.all_logits, config.vocab_size") \
        if graph.all_logits else (TensorSpec("float32", (b, m.vocab_size)), "config.vocab_size")
    stateful = isinstance(m.target, CoreMLBuild) and m.target.form == "stateful"  # states updated in place
    return [logits, *(() if stateful else ((TensorSpec("float32", (b, *t.shape)), f"state {t.output_name}") for t in m.state))]


def _state_dtype(m: Manifest) -> str:
    """fp32 at the contract's interface; a stateful Core ML package keeps its states in its state_dtype."""
    stateful = isinstance(m.target, CoreMLBuild) and m.target.form == "stateful"
    return {"fp16": "float16", "fp32": "float32"}.get(m.target.state_dtype, m.target.state_dtype) if stateful else "float32"
