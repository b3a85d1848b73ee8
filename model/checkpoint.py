"""Reading checkpoint files safely and checking their tensors before any model is built.

A file is read once, with ``read()`` calls, into a private in-memory copy that is hashed as it is
copied; tensors are parsed from that copy (so rewriting the file on disk cannot crash the process)
and no pickled code ever runs. Then every tensor must be a finite floating-point tensor, the
``blocks.{i}.`` layers must run from 0 without gaps, and the shapes a config reads go through ``dims``.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import pickle
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

import torch

from ..errors import CheckpointError, ShapeError, one_line

StateDict = dict[str, torch.Tensor]

FLOAT_DTYPES = (torch.float32, torch.float16, torch.bfloat16, torch.float64)
_CHUNK = 1 << 24  # bytes per read() of the copy
_HEAD = 4096  # bytes sniffed to tell the file type
_FINITE_SLICE = 1 << 24  # elements per isfinite() mask


@dataclass(frozen=True)
class Checkpoint:
    """A checkpoint's tensors under the official (BlinkDL) names, the sha256 of the exact bytes they were
    parsed from, and the ``meta`` of an mmcls/mmcv wrapper (``{"meta": {...}, "state_dict": {...}}``;
    empty for a plain state dict). A source in another layout (a Hugging Face folder, a GGUF file) is
    renamed to these tensors, and ``constants`` carries the config fields its own config sets (say a
    LayerNorm eps), which override the defaults of the model's config."""

    tensors: StateDict
    sha256: str
    meta: dict[str, Any] = field(default_factory=dict)
    layout: str = "BlinkDL"  # what the source was, for messages and `info`
    constants: dict[str, Any] = field(default_factory=dict)


def open_file(path: str | Path) -> Checkpoint:
    """Read one ``.pth``/``.bin`` or ``.safetensors`` file into a private copy, parse it without executing
    pickled code, and check it is a plain state dict of finite floating-point tensors (under whatever
    names the file uses). The file type comes from its content."""
    path = _regular_file(Path(path))
    try:
        with open(path, "rb") as f:
            size = os.fstat(f.fileno()).st_size
            head = f.read(_HEAD)
            kind = sniff(head, size, path)
            (tensors, meta), sha = _parse_private_copy(f, head, size, kind, path)
    except OSError as e:
        raise CheckpointError(f"{path}: cannot read the checkpoint: {e.strerror or e}") from None
    check_values(tensors, str(path))
    return Checkpoint(tensors, sha, meta)


# -- what kind of file is it ------------------------------------------------------------------------
def _regular_file(path: Path) -> Path:
    if path.is_dir():
        raise CheckpointError(directory_message(path))
    if not path.exists():
        raise CheckpointError(f"{path}: no such checkpoint file")
    if not path.is_file():
        raise CheckpointError(f"{path}: not a regular file; expected a .pth or .safetensors checkpoint")
    return path


def directory_message(path: Path) -> str:
    manifest = path / "manifest.json"
    if not manifest.is_file():
        return (f"{path}: is a directory, not a checkpoint file nor a Hugging Face model folder (it has no config.json); "
                "pass the .pth or .safetensors file itself, or the model folder")
    try:
        made_from = f" (this one was made from {json.loads(manifest.read_text())['source']['checkpoint']})"
    except (OSError, ValueError, KeyError, TypeError):
        made_from = ""
    return (f"{path}: is a directory, not a checkpoint file: it is an rwkv-edge artifact directory (it has "
            f"manifest.json); commands that take a checkpoint need the .pth or .safetensors file{made_from}")


def sniff(head: bytes, size: int, path: Path) -> str:
    """The file type from its first bytes: "zip" or "pickle" (torch.save) or "safetensors"; else raise."""
    if size == 0:
        raise CheckpointError(f"{path}: is empty (0 bytes), not a checkpoint; was the download or save interrupted?")
    if head.startswith(b"PK\x03\x04"):
        return "zip"
    if len(head) >= 2 and head[0] == 0x80 and 2 <= head[1] <= 5:
        return "pickle"
    if len(head) >= 9 and head[8:9] == b"{" and 8 + int.from_bytes(head[:8], "little") <= size:
        return "safetensors"
    if _looks_like_onnx(head):
        raise CheckpointError(
            f"{path}: is an ONNX model, not a checkpoint: ONNX exports are compiled with `rwkv-edge compile`; "
            "commands that take a checkpoint need the .pth or .safetensors file it was exported from"
        )
    text = _text_start(head)
    if text is not None:
        if text.startswith("version https://git-lfs"):
            raise CheckpointError(f"{path}: is a Git LFS pointer, not the checkpoint; fetch the file with `git lfs pull`")
        first_line = text.strip().splitlines()[0][:60] if text.strip() else ""
        raise CheckpointError(f"{path}: is a text file, not a checkpoint (it starts {first_line!r}); "
                              "expected a .pth or .safetensors file")
    raise CheckpointError(f"{path}: unknown format (first bytes {head[:8].hex(' ')}); expected a PyTorch .pth "
                          "(zip or pickle, from torch.save) or a .safetensors file")


def _looks_like_onnx(head: bytes) -> bool:
    """An ONNX ModelProto: field 1 (ir_version, a small varint), then another field's tag."""
    if len(head) < 3 or head[0] != 0x08:
        return False
    ir_version, i = _varint(head, 1)
    if not 1 <= ir_version <= 100 or i >= len(head):
        return False
    field, wire_type = head[i] >> 3, head[i] & 7
    return 2 <= field <= 25 and wire_type in (0, 2)


def _varint(data: bytes, i: int) -> tuple[int, int]:
    value, shift = 0, 0
    while i < len(data) and shift < 64:
        value |= (data[i] & 0x7F) << shift
        i, shift = i + 1, shift + 7
        if not data[i - 1] & 0x80:
            return value, i
    return -1, i


def _text_start(head: bytes) -> str | None:
    """The decoded start of a text file, or None if these bytes are not text."""
    if b"\x00" in head:
        return None
    try:
        text = head.decode("utf-8")
    except UnicodeDecodeError as e:
        if e.start < len(head) - 3:  # not just a character cut at the end of the sniffed bytes
            return None
        text = head[: e.start].decode("utf-8")
    return text if all(c.isprintable() or c.isspace() for c in text) else None


# -- one read into a private copy, then parse -------------------------------------------------------
def _parse_private_copy(f: BinaryIO, head: bytes, size: int, kind: str, path: Path
                        ) -> tuple[tuple[StateDict, dict[str, Any]], str]:
    """Copy the rest of ``f`` after ``head`` into memory, hashing the same bytes, and parse the copy.

    On Linux the copy is an anonymous memfd that the tensors map; elsewhere a BytesIO.
    """
    digest = hashlib.sha256()
    fd = _memfd()
    if fd is None:
        buffer = io.BytesIO()
        _copy(f, head, buffer, digest, size, path)
        buffer.seek(0)
        return _parse(kind, buffer, path, mmap=False), digest.hexdigest()
    try:
        with os.fdopen(fd, "wb", closefd=False) as sink:
            _copy(f, head, sink, digest, size, path)
        return _parse(kind, f"/proc/self/fd/{fd}", path, mmap=True), digest.hexdigest()
    finally:
        os.close(fd)  # the tensors' mapping keeps the memory alive


def _memfd() -> int | None:
    """An anonymous in-memory file that torch and safetensors can open by path, or None if unavailable."""
    if not os.path.isdir("/proc/self/fd"):
        return None
    try:
        return os.memfd_create("rwkv-edge-checkpoint", os.MFD_CLOEXEC)
    except (AttributeError, OSError):  # not Linux, or not allowed here
        return None


def _copy(f: BinaryIO, head: bytes, sink: BinaryIO, digest, size: int, path: Path) -> None:
    chunk, n = head, 0
    while chunk:
        sink.write(chunk)
        digest.update(chunk)
        n += len(chunk)
        chunk = f.read(_CHUNK)
    if n != size:
        raise CheckpointError(f"{path}: the file changed while it was read ({n} bytes read, {size} expected; "
                              "truncated or being written?); load it again once it is complete")


def _parse(kind: str, source: str | BinaryIO, path: Path, mmap: bool) -> tuple[StateDict, dict[str, Any]]:
    """The state dict and, for an mmcv-style ``{"meta", "state_dict"}`` wrapper, its meta dict."""
    tensors = _read_safetensors(source, path) if kind == "safetensors" else _read_torch(source, path, mmap and kind == "zip")
    meta: dict[str, Any] = {}
    if isinstance(tensors, dict) and isinstance(tensors.get("state_dict"), dict):
        meta = tensors.get("meta") if isinstance(tensors.get("meta"), dict) else {}
        tensors = tensors["state_dict"]
    if not isinstance(tensors, dict) or not tensors:
        raise CheckpointError(f"{path}: not a checkpoint (expected a dict of tensors, got {type(tensors).__name__})")
    return tensors, meta


def _read_safetensors(source: str | BinaryIO, path: Path) -> StateDict:
    from safetensors import SafetensorError
    from safetensors.torch import load, load_file

    try:
        return load_file(source) if isinstance(source, str) else load(source.read())
    except (SafetensorError, OSError, ValueError) as e:
        raise CheckpointError(f"{path}: unreadable safetensors file (truncated or corrupt?): {e}") from None


def _read_torch(source: str | BinaryIO, path: Path, mmap: bool) -> StateDict:
    """With ``mmap`` (``source`` is the private copy) the tensors map it shared and writable: a model that
    quantizes its weights in place (``quantize_weights(in_place=True)``) then needs no second copy."""
    try:
        if not mmap:
            return torch.load(source, map_location="cpu", weights_only=True)
        from mmap import MAP_SHARED

        with torch.serialization.set_default_mmap_options(MAP_SHARED):
            return torch.load(source, map_location="cpu", weights_only=True, mmap=True)
    except pickle.UnpicklingError as e:
        if "weights_only" in str(e) or "Unsupported global" in str(e):
            raise CheckpointError(
                f"{path}: refusing to load: the file needs pickled Python code to load, which could run "
                "arbitrary code. Re-save it as a plain state dict of tensors (or as .safetensors)."
            ) from None
        raise CheckpointError(f"{path}: not a PyTorch checkpoint ({e})") from None
    except Exception as e:  # a damaged file fails in many places of the unpickler
        raise CheckpointError(f"{path}: not a readable PyTorch checkpoint (truncated or corrupt?): {one_line(e)}") from None


# -- the values -------------------------------------------------------------------------------------
def check_values(tensors: StateDict, source: str) -> None:
    """Raise CheckpointError unless every entry is a named, dense, finite floating-point tensor."""
    for name, t in tensors.items():
        if not isinstance(name, str) or not isinstance(t, torch.Tensor) or t.layout != torch.strided:
            raise CheckpointError(f"{source}: entry {name!r} is not a named tensor; expected a plain state dict")
    for name, t in tensors.items():
        if t.dtype not in FLOAT_DTYPES:
            raise CheckpointError(
                f"{source}: tensor {name} has dtype {t.dtype}; expected floating-point weights "
                f"({', '.join(str(d) for d in FLOAT_DTYPES)}). Is this a quantized or non-RWKV file?"
            )
    for name, t in tensors.items():
        if not _all_finite(t):
            raise CheckpointError(f"{source}: tensor {name} holds NaN or Inf values; "
                                  "the checkpoint is damaged (or training diverged)")


def _all_finite(t: torch.Tensor) -> bool:
    """Whether every value is finite, checked in slices along dim 0 so each temporary mask stays small."""
    if t.dim() == 0 or t.numel() <= _FINITE_SLICE:
        return bool(t.isfinite().all())
    rows = max(1, _FINITE_SLICE // (t.numel() // t.shape[0]))
    return all(bool(part.isfinite().all()) for part in t.split(rows))


# -- the keys and shapes a config reads -------------------------------------------------------------
_LAYER_INDEX = re.compile(r"0|[1-9][0-9]*")


def n_layers(tensors: StateDict, source: str = "checkpoint", prefix: str = "blocks") -> int:
    """Number of blocks, from the ``{prefix}.{i}.`` keys; indices must be integers from 0 without gaps."""
    ids: dict[int, str] = {}
    for key in tensors:
        if key.startswith(prefix + "."):
            index = key.split(".")[1]
            if not _LAYER_INDEX.fullmatch(index):
                raise ShapeError(f"{source}: key {key} has layer index {index!r}, not an integer; "
                                 f"expected keys {prefix}.0., {prefix}.1., ...")
            ids.setdefault(int(index), key)
    n = len(ids)
    missing = next((i for i in range(n) if i not in ids), None)  # never iterates past the key count
    if missing is not None:
        after = min(i for i in ids if i > missing)
        raise ShapeError(
            f"{source}: layer {missing} is missing, but key {ids[after]} names layer {after}; expected "
            f"{prefix} numbered 0, 1, 2, ... without gaps (found layers {_some([str(i) for i in sorted(ids)])})"
        )
    return n


def dims(tensors: StateDict, key: str, rank: int, source: str = "checkpoint") -> tuple[int, ...]:
    """The shape of ``tensors[key]``, which must exist, have ``rank`` dims and no zero-sized one."""
    if key not in tensors:
        raise ShapeError(f"{source}: missing {key}; the model's configuration is read from it "
                         f"(expected a {rank}-d tensor)")
    shape = tuple(tensors[key].shape)
    if len(shape) != rank:
        raise ShapeError(f"{source}: {key} has shape {shape} ({len(shape)}-d), expected a {rank}-d tensor")
    if 0 in shape:
        raise ShapeError(f"{source}: {key} has shape {shape}, expected no zero-sized dimension")
    return shape


def heads(tensors: StateDict, key: str, n_embd: int, source: str = "checkpoint") -> tuple[int, int]:
    """(n_head, head_size) from the (H, N) tensor ``key``; H * N must equal ``n_embd``."""
    n_head, head_size = dims(tensors, key, 2, source)
    if n_head * head_size != n_embd:
        raise ShapeError(
            f"{source}: {key} has shape {(n_head, head_size)}: {n_head} heads x {head_size} = "
            f"{n_head * head_size} channels, expected (n_head, head_size) with n_head * head_size == "
            f"n_embd = {n_embd} (from emb.weight)"
        )
    return n_head, head_size


def check_tensors(tensors: StateDict, expected: dict[str, tuple[int, ...]], source: str) -> StateDict:
    """Match ``tensors`` to the ``expected`` shapes; name everything missing, unexpected or mis-shaped.

    A tensor whose shape differs only by size-1 axes (``(C,)`` against ``(1, 1, C)``) is reshaped.
    """
    missing = sorted(set(expected) - set(tensors))
    unexpected = sorted(set(tensors) - set(expected))
    problems = []
    if missing:
        problems.append(f"missing {_some(missing)}")
    if unexpected:
        problems.append(f"unexpected {_some(unexpected)}")
    matched: StateDict = {}
    for name in expected.keys() & tensors.keys():
        t, want = tensors[name], expected[name]
        if tuple(t.shape) == want:
            matched[name] = t
        elif _squeezed(tuple(t.shape)) == _squeezed(want):
            matched[name] = t.reshape(want)
        else:
            problems.append(f"{name} has shape {tuple(t.shape)}, expected {want}")
    if problems:
        raise ShapeError(f"{source}: " + "; ".join(problems))
    return matched


def _squeezed(shape: tuple[int, ...]) -> tuple[int, ...]:
    return tuple(d for d in shape if d != 1)


def _some(names: list[str], limit: int = 6) -> str:
    shown = ", ".join(names[:limit])
    return shown + (f" and {len(names) - limit} more" if len(names) > limit else "")
