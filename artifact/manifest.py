"""manifest.json: what an artifact directory holds, where it came from, and its step contract.

A manifest is data anyone can edit, so ``parse_manifest`` checks every field it holds before any
of it is used: types, the schema and contract versions, the state spec, and above all the file
names, each of which must be a plain relative path inside the directory (no ``..``, no absolute
path, no backslash). Nothing else reads manifest.json.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path, PurePosixPath
from typing import Any

from ..architectures import ARCHITECTURES, IMAGE, LANGUAGE
from ..contract import (CONTRACT_VERSION, IMAGE_GRAPH, IMAGE_OUTPUTS, MAX_CHUNK, MAX_IMAGE_SIZE, NO_TOKENIZER,
                        StateTensor, compatible)
from ..errors import ArtifactError
from ..weights import COMPUTES, GROUP_SIZES, WEIGHT_FORMATS, Compute, WeightFormat

MANIFEST = "manifest.json"
SCHEMA = "rwkv-edge.artifact/2"  # 2: validated manifests, graph-derived token ranges, manifest sha256 pinning
REPORTS = ("parity.json", "parity.png")  # what `verify` writes beside an artifact: not part of it
DEVICES = ("cpu", "cuda", "metal")
MAX_MANIFEST_BYTES = 16 << 20
MAX_FILES = 100_000
MAX_STATE_VALUES = 1 << 28  # 1 GiB of fp32 state: far above any RWKV model (14B: 10M values)
_SHA256 = re.compile(r"^[0-9a-f]{64}$")
_ROLE = re.compile(r"^[a-z][a-z0-9_]*$")


@dataclass(frozen=True)
class Graph:
    """One role of an artifact ("step", "prefill", ...): the file that holds it, the function in it."""

    file: str | None = None  # a listed file, or a folder of listed files (a .mlpackage)
    function: str | None = None  # TVM and Core ML: the function inside the file
    chunk: int = 0  # prefill graphs: tokens per call
    all_logits: bool = False  # prefill graphs: logits of every position, not only the last
    params: str | None = None  # TVM bundles: the weights file ``function`` takes after its inputs (None: inside)
    num_params: int = 0


@dataclass(frozen=True)
class TvmBuild:
    """What a TVM bundle was built for (``compile/tvm/``)."""

    name: str  # the target's name
    triple: str  # the host's LLVM triple: what the library runs on
    tvm: dict[str, Any]  # the resolved TVM target
    linked: bool  # False: objects still to link (model.tar)
    device: str  # "cpu", "cuda", "metal"
    qemu_cpu: str | None = None  # the oldest core of the family, for emulation
    schedules: dict[str, Any] | None = None  # the tuned schedule data; None: TVM's default lowering
    kernels: dict[str, int] = field(default_factory=dict)  # kernels per schedule rule
    arch: str | None = None  # GPU targets: "sm_90", ...
    device_code: list[str] = field(default_factory=list)  # GPU targets: the device-code files
    executed: str | None = None  # GPU targets: what the build machine ran of it

    def problem(self, family: str) -> str | None:
        """What is wrong with this record (read from a manifest), or None."""
        if self.device not in DEVICES:
            return f"target.device must be one of {', '.join(DEVICES)}"
        return None


@dataclass(frozen=True)
class CoreMLBuild:
    """What a Core ML package was built for (``compile/coreml/``)."""

    name: str
    platform: str  # "iOS" or "macOS"
    deployment: str  # minimum deployment target, e.g. "iOS18"
    compute_units: str
    form: str  # "explicit" (fp32 state I/O) or "stateful" (Core ML states); "image" for an image model
    state_dtype: str
    token_dtype: str
    functions: list[str]

    def problem(self, family: str) -> str | None:
        """What is wrong with this record (read from a manifest) for a model of ``family``, or None."""
        forms, model = CORE_ML_FORMS[family]
        if self.form not in forms:
            return f"target.form must be {' or '.join(forms)} for {model} model"
        return None


CORE_ML_STEP_FORMS = ("explicit", "stateful")  # a language model's package: fp32 state I/O, or Core ML states
CORE_ML_IMAGE_FORMS = ("image",)  # an image model's: one RGB image input (compile/coreml/image.py)
CORE_ML_FORMS = {LANGUAGE: (CORE_ML_STEP_FORMS, "a language"), IMAGE: (CORE_ML_IMAGE_FORMS, "an image")}


@dataclass(frozen=True)
class ArtifactKind:
    """One value of a manifest's ``kind``: the record of what it was built for, and how its builder quantizes."""

    name: str
    build: type | None = None  # the manifest's ``target`` record (its ``problem`` checks it); None: no target
    quantized_embedding: bool = True  # int8/int4: the embedding quantized with the matrices (Core ML keeps it float)


KINDS: dict[str, ArtifactKind] = {k.name: k for k in (
    ArtifactKind("onnx"),
    ArtifactKind("tvm", TvmBuild),
    ArtifactKind("coreml", CoreMLBuild, quantized_embedding=False),
)}


@dataclass
class Manifest:
    kind: str  # one of KINDS
    contract_version: str
    architecture: str
    config: dict[str, Any]
    tokenizer: str
    weights: str  # the weight format (weights.WEIGHT_FORMATS): how the weight matrices are stored
    compute: str  # "fp32", "fp16" or "int8" (int8/int4 TVM bundles: integer dot products over int8-rounded
    # activations, the rest fp32): the precision the step computes in (the state stays fp32)
    group_size: int  # int8/int4 from quantize.py: weights per scale along the input axis; 0: float weights, or
    # Core ML's own compression
    batch: int | str  # 1, or "dynamic"
    state: list[StateTensor]  # in graph input order; shapes without the batch axis
    source: dict[str, str]  # checkpoint path and sha256
    graphs: dict[str, Graph]  # role ("step", "prefill", ...) -> where it is
    tools: dict[str, str]
    files: dict[str, dict[str, Any]] = field(default_factory=dict)  # name -> sha256, bytes
    initial_state: str | None = None  # .npz of the state before the first token, where not just the fills
    tokenizer_file: str | None = None  # the tokenizer's vocabulary (World, 20B) a device tokenizes with; None: none
    # (bytes), or an artifact of rwkv-edge before the bundle carried it
    reference: str | None = None  # .npz of the PyTorch model's rollout at build time (artifact/reference.py);
    # None only while the artifact is being built
    target: TvmBuild | CoreMLBuild | None = None  # compiled artifacts: what they were built for
    schema: str = SCHEMA

    @property
    def vocab_size(self) -> int:
        return self.config["vocab_size"]

    @property
    def weight_format(self) -> WeightFormat:
        return WEIGHT_FORMATS[self.weights]

    @property
    def precision(self) -> Compute:
        """What the step computes in (``compute``)."""
        return COMPUTES[self.compute]

    @property
    def family(self) -> str:
        """``language`` (the step contract) or ``image`` (one whole-image graph, no state, no tokenizer)."""
        return ARCHITECTURES[self.architecture].family

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["state"] = [{"input": t.input_name, "output": t.output_name, **asdict(t)} for t in self.state]
        return data

    def encode(self) -> bytes:
        """The bytes of manifest.json."""
        return (json.dumps(self.to_json(), indent=2) + "\n").encode()


def parse_manifest(data: bytes, where: str | Path) -> Manifest:
    """Decode and validate manifest.json's bytes; ArtifactError naming the first problem."""
    check = _Checker(str(where))
    return check.manifest(check.decode(data))


def parse_files(data: bytes, where: str | Path) -> dict[str, dict[str, Any]]:
    """Only the ``files`` of a manifest of any rwkv-edge version, validated: what a writer that
    replaces the artifact may delete."""
    check = _Checker(str(where))
    value = check.decode(data)
    if not isinstance(value, dict):
        check.fail(f"expected a JSON object, got {type(value).__name__}: not a manifest")
    return check.files(check.get(value, "files", dict, "files"))


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def sha256_file(path: Path, follow_symlinks: bool = True, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    fd = os.open(path, os.O_RDONLY | (0 if follow_symlinks else getattr(os, "O_NOFOLLOW", 0)))
    with os.fdopen(fd, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def safe_name(name: object) -> bool:
    """Whether ``name`` is a plain relative path that stays inside its directory."""
    if not isinstance(name, str) or not name or len(name) > 1024 or "\\" in name or "\x00" in name:
        return False
    parts = name.split("/")
    return not PurePosixPath(name).is_absolute() and all(part not in ("", ".", "..") for part in parts)


class _Checker:
    """Validation of one manifest: each method returns the checked value or raises ArtifactError."""

    def __init__(self, where: str) -> None:
        self.where = where

    def fail(self, problem: str):
        raise ArtifactError(f"{self.where}: {problem}")

    def decode(self, data: bytes) -> object:
        if len(data) > MAX_MANIFEST_BYTES:
            self.fail(f"{len(data)} bytes, more than a manifest can hold ({MAX_MANIFEST_BYTES})")
        try:
            return json.loads(data.decode("utf-8"))
        except UnicodeDecodeError:
            self.fail("not UTF-8 text: not a manifest")
        except json.JSONDecodeError as e:
            self.fail(f"unreadable JSON ({e})")
        except RecursionError:
            self.fail("JSON nested too deeply: not a manifest")

    def get(self, data: dict, key: str, kind: type | tuple[type, ...], what: str) -> Any:
        if key not in data:
            self.fail(f"{what} is missing")
        value = data[key]
        if not isinstance(value, kind) or (isinstance(value, bool) and bool not in _tuple(kind)):
            self.fail(f"{what} has the wrong type ({type(value).__name__})")
        return value

    def positive(self, data: dict, key: str, what: str) -> int:
        value = self.get(data, key, int, what)
        if value <= 0:
            self.fail(f"{what} must be positive, got {value}")
        return value

    def manifest(self, data: object) -> Manifest:
        if not isinstance(data, dict):
            self.fail(f"expected a JSON object, got {type(data).__name__}: not a manifest")
        schema = data.get("schema")
        if schema != SCHEMA:
            self.fail(f"written by another version of rwkv-edge (schema {schema!r}, this one reads {SCHEMA!r}): "
                      "rebuild the artifact with this version")
        known = {f.name for f in fields(Manifest)}
        unknown = sorted(set(data) - known)
        if unknown:
            self.fail(f"unknown field {unknown[0]!r}")
        kind = self.get(data, "kind", str, "kind")
        if kind not in KINDS:
            self.fail(f"unknown artifact kind {kind!r}; expected one of {', '.join(KINDS)}")
        contract = self.get(data, "contract_version", str, "contract_version")
        if not compatible(contract):
            self.fail(f"step contract {contract}; this rwkv-edge runs contract {CONTRACT_VERSION}: rebuild the artifact")
        architecture = self.get(data, "architecture", str, "architecture")
        if architecture not in ARCHITECTURES:
            self.fail(f"unknown architecture {architecture!r}; expected one of {', '.join(ARCHITECTURES)}")
        config = self.get(data, "config", dict, "config")
        family = ARCHITECTURES[architecture].family
        vision = family == IMAGE
        if vision:
            self.vision_config(config)
        else:
            for key in ("vocab_size", "n_layer", "n_embd"):
                self.positive(config, key, f"config.{key}")
        weights = self.get(data, "weights", str, "weights")
        if weights not in WEIGHT_FORMATS:
            self.fail(f"unknown weight format {weights!r}; expected one of {', '.join(WEIGHT_FORMATS)}")
        group = self.get(data, "group_size", int, "group_size")
        if group not in ((0, *GROUP_SIZES) if WEIGHT_FORMATS[weights].quantized else (0,)):
            self.fail(f"group_size {group} does not fit {weights} weights")
        compute = self.get(data, "compute", str, "compute")
        if compute not in COMPUTES:
            self.fail(f"unknown compute precision {compute!r}; expected one of {', '.join(COMPUTES)}")
        batch = self.get(data, "batch", (int, str), "batch")
        if batch not in (1, "dynamic"):
            self.fail(f"batch must be 1 or \"dynamic\", got {batch!r}")
        files = self.files(self.get(data, "files", dict, "files"))
        initial, reference = data.get("initial_state"), self.get(data, "reference", str, "reference")
        vocabulary = data.get("tokenizer_file")
        for key, name in (("initial_state", initial), ("reference", reference), ("tokenizer_file", vocabulary)):
            if name is not None and not isinstance(name, str):
                self.fail(f"{key} has the wrong type ({type(name).__name__})")
            if name is not None and name not in files:
                self.fail(f"{key} {name!r} is not one of the listed files")
        tokenizer = self.get(data, "tokenizer", str, "tokenizer")
        state = self.get(data, "state", list, "state")
        if vision and (tokenizer != NO_TOKENIZER or state or initial is not None or vocabulary is not None):
            self.fail(f"an image model's artifact has tokenizer {NO_TOKENIZER!r}, an empty state, no initial_state "
                      "and no tokenizer_file")
        return Manifest(
            kind=kind, contract_version=contract, architecture=architecture, config=config,
            tokenizer=tokenizer, weights=weights, compute=compute, group_size=group,
            batch=batch,
            state=[] if vision else self.state(state, config["n_layer"]),
            source=self.source(self.get(data, "source", dict, "source")),
            graphs=self.graphs(self.get(data, "graphs", dict, "graphs"), files, IMAGE_GRAPH if vision else "step"),
            tools=self.strings(self.get(data, "tools", dict, "tools"), "tools"),
            files=files, initial_state=initial, tokenizer_file=vocabulary, reference=reference, target=self.target(data.get("target"), kind, family),
        )

    def files(self, files: dict) -> dict[str, dict[str, Any]]:
        if len(files) > MAX_FILES:
            self.fail(f"lists {len(files)} files, more than an artifact holds ({MAX_FILES})")
        for name, meta in files.items():
            if not safe_name(name):
                self.fail(f"file name {name!r} is not a relative path inside the artifact directory")
            if name == MANIFEST or name in REPORTS:
                self.fail(f"file name {name!r} is reserved")
            if not isinstance(meta, dict):
                self.fail(f"files[{name!r}] has the wrong type ({type(meta).__name__})")
            sha = self.get(meta, "sha256", str, f"files[{name!r}].sha256")
            if not _SHA256.match(sha):
                self.fail(f"files[{name!r}].sha256 is not a sha256 hex digest")
            if self.get(meta, "bytes", int, f"files[{name!r}].bytes") < 0:
                self.fail(f"files[{name!r}].bytes is negative")
        return files

    def state(self, entries: list, n_layer: int) -> list[StateTensor]:
        spec, values = [], 0
        for i, entry in enumerate(entries):
            what = f"state[{i}]"
            if not isinstance(entry, dict):
                self.fail(f"{what} has the wrong type ({type(entry).__name__})")
            layer = self.get(entry, "layer", int, f"{what}.layer")
            role = self.get(entry, "role", str, f"{what}.role")
            shape = self.get(entry, "shape", list, f"{what}.shape")
            fill = self.get(entry, "fill", (int, float), f"{what}.fill")
            if not 0 <= layer < n_layer or not _ROLE.match(role):
                self.fail(f"{what}: layer {layer} / role {role!r} outside the model's {n_layer} layers")
            if not 1 <= len(shape) <= 4 or not all(isinstance(d, int) and not isinstance(d, bool) and d > 0 for d in shape):
                self.fail(f"{what}.shape {shape} is not a list of 1 to 4 positive sizes")
            if not math.isfinite(fill):
                self.fail(f"{what}.fill is not a finite number")
            t = StateTensor(layer, role, tuple(shape), float(fill))
            if entry.get("input") != t.input_name or entry.get("output") != t.output_name:
                self.fail(f"{what}: input/output names must be {t.input_name!r} / {t.output_name!r}")
            spec.append(t)
            values += math.prod(shape)
        names = [t.input_name for t in spec]
        if len(set(names)) != len(names):
            self.fail("state lists a tensor twice")
        if {t.layer for t in spec} != set(range(n_layer)):
            self.fail(f"state does not cover the model's {n_layer} layers")
        if values > MAX_STATE_VALUES:
            self.fail(f"state of {values} values is larger than any RWKV model's")
        return spec

    def source(self, source: dict) -> dict[str, str]:
        self.get(source, "checkpoint", str, "source.checkpoint")
        if not _SHA256.match(self.get(source, "sha256", str, "source.sha256")):
            self.fail("source.sha256 is not a sha256 hex digest")
        return source

    def vision_config(self, config: dict) -> None:
        """An image model's config: positive sizes, the image a multiple of the patch, the output's name,
        and the class names (where given) one string per class."""
        for key in ("embed_dims", "depth", "patch_size", "in_channels", "image_size", "hidden_dims"):
            self.positive(config, key, f"config.{key}")
        classes = self.get(config, "num_classes", int, "config.num_classes")
        if classes < 0 or config["image_size"] % config["patch_size"]:
            self.fail("config.num_classes is negative or config.image_size is not a multiple of config.patch_size")
        if config["image_size"] > MAX_IMAGE_SIZE:
            self.fail(f"config.image_size {config['image_size']} is past the {MAX_IMAGE_SIZE} px rwkv-edge runs")
        output = self.get(config, "output", str, "config.output")
        if output != IMAGE_OUTPUTS[0 if classes else 1]:
            self.fail(f"config.output {output!r} does not fit {classes} classes ({' / '.join(IMAGE_OUTPUTS)})")
        names = config.get("class_names")
        if names is not None and (not isinstance(names, list) or len(names) != classes
                                  or not all(isinstance(n, str) for n in names)):
            self.fail(f"config.class_names must be a list of {classes} strings")

    def graphs(self, graphs: dict, files: dict, main: str = "step") -> dict[str, Graph]:
        if main not in graphs:
            self.fail(f"graphs.{main} is missing")
        typed = {}
        for role, graph in graphs.items():
            typed[role] = self.record(Graph, graph, f"graphs.{role}")
            chunk, num_params = typed[role].chunk, typed[role].num_params
            if not (1 if role == "prefill" else 0) <= chunk <= (MAX_CHUNK if role == "prefill" else 0):
                self.fail(f"graphs.{role}.chunk {chunk} is not " + (f"1 to {MAX_CHUNK} tokens" if role == "prefill" else "0"))
            if not 0 <= num_params <= MAX_FILES or (num_params > 0) != (typed[role].params is not None):
                self.fail(f"graphs.{role}.num_params {num_params} does not fit graphs.{role}.params")
            for key in ("file", "params"):
                name = getattr(typed[role], key)
                if name is not None and not is_listed(name, files):
                    self.fail(f"graphs.{role}.{key} {name!r} is not one of the listed files")
        return typed

    def record(self, kind: type, data: object, what: str):
        """``kind`` (a dataclass) from a JSON object whose fields have the annotated types."""
        if not isinstance(data, dict):
            self.fail(f"{what} has the wrong type ({type(data).__name__})")
        known = {f.name: f for f in fields(kind)}
        unknown = sorted(set(data) - set(known))
        if unknown:
            self.fail(f"{what} has an unknown field {unknown[0]!r}")
        for name, value in data.items():
            if not _matches(value, known[name].type):
                self.fail(f"{what}.{name} has the wrong type ({type(value).__name__})")
        try:
            return kind(**data)
        except TypeError:  # a required field is missing
            missing = [f.name for f in fields(kind) if f.name not in data]
            self.fail(f"{what}.{missing[0] if missing else '?'} is missing")

    def strings(self, data: dict, what: str) -> dict[str, str]:
        bad = [k for k, v in data.items() if not isinstance(v, str)]
        if bad:
            self.fail(f"{what}.{bad[0]} is not a string")
        return data

    def target(self, target: object, kind: str, family: str) -> TvmBuild | CoreMLBuild | None:
        build = KINDS[kind].build
        if build is None:
            if target is not None:
                self.fail(f"an {kind} artifact has no target")
            return None
        record = self.record(build, target, "target")
        problem = record.problem(family)
        if problem is not None:
            self.fail(problem)
        return record


def _matches(value: object, annotation: str) -> bool:
    """Whether a JSON value fits a field annotated ``annotation`` (the records' annotations are strings)."""
    kinds = {"str": str, "int": int, "bool": bool, "None": type(None)}
    allowed = tuple(kinds.get(part.split("[")[0].strip(), dict if part.strip().startswith("dict") else list)
                    for part in annotation.split("|"))
    return isinstance(value, allowed) and (not isinstance(value, bool) or bool in allowed)


def is_listed(name: object, files: dict) -> bool:
    """A listed file, or a folder of listed files (a .mlpackage)."""
    return safe_name(name) and (name in files or any(f.startswith(f"{name}/") for f in files))


def _tuple(kind: type | tuple[type, ...]) -> tuple[type, ...]:
    return kind if isinstance(kind, tuple) else (kind,)
