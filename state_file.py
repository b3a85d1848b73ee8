"""State files, format ``rwkv-edge.state/1``: a model's recurrent state (and the logits after the last
token) saved to disk, read back by this package and by the C library alike (docs/native.md).

A safetensors file: a little-endian u64 N, N bytes of a JSON header (padded with spaces so that
8 + N is a multiple of 8), then the data. The header's ``__metadata__`` names the format, the
model's architecture and its source checkpoint's sha256; then every state tensor in the manifest's
order (shapes without the batch axis) and optionally ``logits`` last, each F32, back to back, C order.
A state file is untrusted input: the reader checks every field before it allocates anything.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from .atomic import atomic_path
from .contract import StateTensor
from .errors import ArtifactError, StateError

FORMAT = "rwkv-edge.state/1"
LOGITS = "logits"
MAX_HEADER_BYTES = 16 << 20
_F32 = np.dtype("<f4")


def save_state(path: str | Path, state: Mapping[str, np.ndarray], spec: Sequence[StateTensor], architecture: str,
               source_sha256: str, logits: np.ndarray | None = None) -> Path:
    """Write ``state`` (contract input names -> arrays of the spec's shapes) and ``logits`` (V,) where
    given to ``path``, atomically (written beside it, then renamed). StateError for a state that does
    not fit ``spec``; ArtifactError where the file cannot be written."""
    path = Path(path)
    arrays: list[tuple[str, np.ndarray]] = []
    for t in spec:
        if t.input_name not in state:
            raise StateError(f"{path}: state tensor {t.input_name} is missing")
        value = np.asarray(state[t.input_name])
        if value.shape != t.shape or value.dtype.kind not in "fiu":
            raise StateError(f"{path}: state tensor {t.input_name} is {value.dtype} {value.shape}, expected "
                             f"float32 {t.shape}")
        arrays.append((t.input_name, value))
    unexpected = sorted(set(state) - {t.input_name for t in spec})
    if unexpected:
        raise StateError(f"{path}: unexpected state tensor {unexpected[0]!r}")
    if logits is not None:
        logits = np.asarray(logits)
        if logits.ndim != 1 or logits.dtype.kind != "f":
            raise StateError(f"{path}: logits must be a float vector (V,), got {logits.dtype} {logits.shape}")
        arrays.append((LOGITS, logits))
    header: dict[str, object] = {"__metadata__": {"format": FORMAT, "architecture": architecture,
                                                  "source_sha256": source_sha256}}
    offset = 0
    for name, value in arrays:
        size = value.size * _F32.itemsize
        header[name] = {"dtype": "F32", "shape": list(value.shape), "data_offsets": [offset, offset + size]}
        offset += size
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (-(8 + len(text)) % 8)
    try:
        with atomic_path(path) as tmp, open(tmp, "wb") as f:
            f.write(len(text).to_bytes(8, "little") + text)
            for _, value in arrays:
                f.write(np.ascontiguousarray(value, dtype=_F32).tobytes())
            f.flush()
            os.fsync(f.fileno())
    except OSError as e:
        raise ArtifactError(f"cannot write {path}: {e.strerror or e}") from None
    return path


def load_state(path: str | Path, spec: Sequence[StateTensor], architecture: str, source_sha256: str,
               vocab_size: int) -> tuple[dict[str, np.ndarray], np.ndarray | None]:
    """Read a state file saved from the model of ``architecture`` and ``source_sha256``: (the state by
    contract input name, the logits (vocab_size,) or None). StateError naming the file and its first
    problem."""
    path = Path(path)

    def fail(problem: str) -> StateError:
        return StateError(f"{path}: {problem}")

    try:
        f = open(path, "rb")
    except OSError as e:
        raise fail(f"cannot read the state file ({e.strerror or e})") from None
    with f:
        size = os.fstat(f.fileno()).st_size
        prefix = f.read(8)
        if len(prefix) < 8:
            raise fail("truncated (shorter than a state file's 8-byte header length)")
        n = int.from_bytes(prefix, "little")
        if n > MAX_HEADER_BYTES:
            raise fail(f"header of {n} bytes, more than a state file's {MAX_HEADER_BYTES}: not a state file")
        if 8 + n > size:
            raise fail(f"truncated (a header of {n} bytes in a file of {size})")
        header = _header(f.read(n), fail)
        entries = _entries(header, spec, architecture, source_sha256, vocab_size, fail)
        data_bytes = sum(math.prod(shape) for _, shape in entries.values()) * _F32.itemsize
        if size - 8 - n < data_bytes:
            raise fail(f"truncated ({size - 8 - n} bytes of data, the header describes {data_bytes})")
        if size - 8 - n > data_bytes:
            raise fail(f"{size - 8 - n - data_bytes} bytes past the end of the data the header describes")
        data = f.read(data_bytes)
    if len(data) != data_bytes:
        raise fail("truncated (changed while it was read)")
    values = {name: np.frombuffer(data, _F32, math.prod(shape), begin).reshape(shape).astype(np.float32)
              for name, (begin, shape) in entries.items()}
    logits = values.pop(LOGITS, None)
    return {t.input_name: values[t.input_name] for t in spec}, logits


def _header(raw: bytes, fail) -> dict:
    def unique(pairs: list[tuple[str, object]]) -> dict:
        keys = [k for k, _ in pairs]
        if len(set(keys)) != len(keys):
            raise fail(f"the header names {next(k for k in keys if keys.count(k) > 1)!r} twice")
        return dict(pairs)

    try:
        header = json.loads(raw.decode("utf-8"), object_pairs_hook=unique)
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError):
        raise fail("the header is not JSON: not a state file") from None
    if not isinstance(header, dict):
        raise fail(f"the header is a JSON {type(header).__name__}, not an object: not a state file")
    return header


def _entries(header: dict, spec: Sequence[StateTensor], architecture: str, source_sha256: str, vocab_size: int,
             fail) -> dict[str, tuple[int, tuple[int, ...]]]:
    """name -> (data offset, shape) of every tensor, checked against the model and each other."""
    meta = header.pop("__metadata__", None)
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        found = meta.get("format") if isinstance(meta, dict) else None
        raise fail(f"format {found!r}, not {FORMAT!r}: not an rwkv-edge state file")
    if meta.get("architecture") != architecture:
        raise fail(f"saved from an {str(meta.get('architecture'))[:40]!r} model, this one is {architecture!r}")
    if meta.get("source_sha256") != source_sha256:
        raise fail(f"saved from another model (source sha256 {str(meta.get('source_sha256'))[:64]}, this model's "
                   f"is {source_sha256})")
    expected = {t.input_name: t.shape for t in spec}
    for t in spec:
        if t.input_name not in header:
            raise fail(f"holds no {t.input_name}")
    extra = sorted(set(header) - set(expected) - {LOGITS})
    if extra:
        raise fail(f"holds {extra[0][:80]!r}, which is not a state tensor of this model")
    if LOGITS in header:
        expected[LOGITS] = (vocab_size,)
    entries, spans = {}, []
    for name, shape in expected.items():
        entry = header[name]
        if not isinstance(entry, dict) or set(entry) != {"dtype", "shape", "data_offsets"}:
            raise fail(f"{name}: expected an object of dtype, shape and data_offsets")
        if entry["dtype"] != "F32":
            raise fail(f"{name} is {str(entry['dtype'])[:20]}, expected F32")
        found = entry["shape"]
        if not isinstance(found, list) or not all(type(d) is int for d in found) or tuple(found) != shape:
            raise fail(f"{name} has shape {str(found)[:80]}, this model's is {list(shape)}")
        offsets = entry["data_offsets"]
        if not isinstance(offsets, list) or len(offsets) != 2 or not all(type(o) is int for o in offsets):
            raise fail(f"{name}: data_offsets {str(offsets)[:80]} is not a pair of integers")
        if offsets[1] - offsets[0] != math.prod(shape) * _F32.itemsize:
            raise fail(f"{name}: data_offsets {offsets} do not span its {math.prod(shape)} float32 values")
        entries[name] = (offsets[0], shape)
        spans.append((offsets[0], name))
    end = 0
    for begin, name in sorted(spans):
        if begin != end:
            raise fail(f"{name}: data begins at {begin}, expected {end} (the tensors lie back to back from 0)")
        end = begin + math.prod(expected[name]) * _F32.itemsize
    return entries
