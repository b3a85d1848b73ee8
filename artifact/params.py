"""``params.safetensors``: a TVM bundle's weights, laid out so that a runtime maps them instead of copying.

The file is a valid safetensors file (any safetensors reader loads it) with one extra property:
every tensor starts on a 64-byte boundary, the alignment TVM's kernels assume
(``tvm.runtime.from_dlpack`` refuses less, as ``kAllocAlignment``). So:

- 8 bytes: the header's length N (little-endian u64), with 8 + N a multiple of 64 (the JSON
  header is padded with spaces, which safetensors allows);
- the JSON header: ``__metadata__`` ({"format": "rwkv-edge params", "alignment": "64"}), the
  weights ``w0``, ``w1``, ... in the order the library's functions take them, and between them
  ``pad.<i>`` entries (U8, fewer than 64 bytes) that fill the gaps (safetensors forbids holes);
- the data: ``w<i>`` at a multiple of 64 bytes from the data's start, which is itself a multiple
  of 64 from the file's start. The file ends with the last tensor.

A mapping of the file starts on a page boundary, so each tensor's address is 64-byte aligned.
"""

from __future__ import annotations

import json
import math
import struct
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from ..errors import ArtifactError
from .interface import TensorSpec

ALIGNMENT = 64  # bytes: TVM's kAllocAlignment
FORMAT = "rwkv-edge params"
DTYPES = {"F32": np.float32, "F16": np.float16, "I8": np.int8, "U8": np.uint8}  # what bundles store
MAX_HEADER_BYTES = 16 << 20
MAX_RANK = 8  # dimensions of one weight


def save_params(values: Sequence, path: Path) -> None:
    """The weights in the library's parameter order as ``w0``, ``w1``, ..., each 64-byte aligned.
    ``values``: arrays, or objects with ``shape``, ``dtype`` and ``__array__`` (``compile/tvm/params.py``'s
    ``Weight``), whose values are asked for one at a time, as the file is written."""
    codes = {np.dtype(v): k for k, v in DTYPES.items()}
    header: dict[str, dict] = {"__metadata__": {"format": FORMAT, "alignment": str(ALIGNMENT)}}
    end = 0
    for i, value in enumerate(values):
        dtype = np.dtype(value.dtype)
        if dtype not in codes:
            raise ArtifactError(f"weight w{i} is {dtype}; a params file holds {', '.join(map(str, codes))}")
        start = -(-end // ALIGNMENT) * ALIGNMENT
        if start > end:
            header[f"pad.{i}"] = {"dtype": "U8", "shape": [start - end], "data_offsets": [end, start]}
        end = start + math.prod(value.shape) * dtype.itemsize
        header[f"w{i}"] = {"dtype": codes[dtype], "shape": list(value.shape), "data_offsets": [start, end]}
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (-(8 + len(text)) % ALIGNMENT)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(text)) + text)
        for i, value in enumerate(values):
            array = np.ascontiguousarray(value)
            if array.shape != tuple(header[f"w{i}"]["shape"]) or array.dtype != np.dtype(value.dtype):
                raise ArtifactError(f"weight w{i} is {array.dtype} {array.shape}, not what the header says")
            f.seek(8 + len(text) + header[f"w{i}"]["data_offsets"][0])
            f.write(array.data)
            del array
    path.chmod(0o644)


def map_params(path: Path, weights: int | Sequence[TensorSpec]) -> list[np.ndarray]:
    """``w0 ... w<n-1>`` as views of one copy-on-write mapping of ``path`` (nothing is read until used;
    the library never writes its weights, so every page stays shared with the page cache). ``weights``:
    what the library takes (its ``interface()``, artifact/interface.py), each weight's dtype and shape
    held to it; or only how many, where no library is loaded. ArtifactError, one line, for a file that
    is not such a params file or holds other weights."""
    count = weights if isinstance(weights, int) else len(weights)
    size = path.stat().st_size
    with open(path, "rb") as f:
        head = f.read(8)
        length = struct.unpack("<Q", head)[0] if len(head) == 8 else -1
        if not 0 < length <= min(size - 8, MAX_HEADER_BYTES):
            raise ArtifactError(f"{path}: not a params file (a header of {length} bytes in a {size}-byte file)")
        try:
            header = json.loads(f.read(length))
        except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as e:
            raise ArtifactError(f"{path}: unreadable header ({e})") from None
    first = 8 + length
    metadata = header.get("__metadata__") if isinstance(header, dict) else None
    if not isinstance(metadata, dict) or metadata.get("format") != FORMAT or first % ALIGNMENT:
        raise ArtifactError(f"{path}: not an aligned rwkv-edge params file (an older bundle? recompile it)")
    names = sorted((k for k in header if k.startswith("w")), key=lambda k: int(k[1:]) if k[1:].isdigit() else -1)
    if names != [f"w{i}" for i in range(count)]:
        raise ArtifactError(f"{path}: holds {len(names)} weights, the library takes {count} (w0 ... w{count - 1})")
    mapping = np.memmap(path, dtype=np.uint8, mode="c") if size > first else np.zeros(0, np.uint8)
    values, end = [], first
    for i, name in enumerate(names):
        value, stop = _view(path, mapping, first, name, header[name])
        found = TensorSpec(str(value.dtype), value.shape)
        if not isinstance(weights, int) and found != weights[i]:
            raise ArtifactError(f"{path}: {name} is {found}, the library takes {weights[i]}: the weights of another bundle")
        values.append(value)
        end = max(end, stop)
    if end != size:
        raise ArtifactError(f"{path}: {size} bytes, its header describes {end}")
    return values


def _view(path: Path, mapping: np.ndarray, first: int, name: str, entry) -> tuple[np.ndarray, int]:
    """One weight as a view of the mapping, after checking its entry against the file; and where it ends."""
    fields = entry if isinstance(entry, dict) else {}
    code, shape, offsets = fields.get("dtype"), fields.get("shape"), fields.get("data_offsets")
    if code not in DTYPES or not _integers(shape) or len(shape) > MAX_RANK or not _integers(offsets) or len(offsets) != 2:
        raise ArtifactError(f"{path}: {name}: a malformed entry {str(entry)[:80]}")
    dtype = np.dtype(DTYPES[code])
    start, end = first + offsets[0], first + offsets[1]
    nbytes = math.prod(shape) * dtype.itemsize  # Python integers: no overflow, whatever the header claims
    if start % ALIGNMENT or end - start != nbytes or not first <= start <= end <= mapping.size:
        raise ArtifactError(f"{path}: {name} ({code} {shape}) has bytes {start}..{end} of "
                            f"{mapping.size}: not {ALIGNMENT}-byte aligned or not its size")
    return mapping[start:end].view(dtype).reshape(shape), end


def _integers(values: object) -> bool:
    """A list of non-negative integers (JSON numbers, no booleans)."""
    return isinstance(values, list) and all(isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in values)
