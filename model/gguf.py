"""GGUF files that llama.cpp writes for RWKV models (``general.architecture`` ``rwkv6`` or ``rwkv7``), read
with the ``gguf`` package into the official (BlinkDL) tensors, every change llama.cpp's converter made
undone, so that the model computes what llama.cpp's graph computes (docs/gguf.md).

The converter (convert_hf_to_gguf.py, classes Rwkv6Model and Rwkv7Model) and the graph that runs its
files (src/models/rwkv6*.cpp, rwkv7*.cpp) fix what each GGUF tensor holds; GGUF shapes below are numpy's
(ggml's ``ne`` reversed):

- renames, values as they are: ``token_embd`` -> ``emb``, ``token_embd_norm`` -> ``blocks.0.ln0``,
  ``output_norm`` -> ``ln_out``, ``output`` -> ``head``, ``blk.{i}.attn_norm`` / ``attn_norm_2`` ->
  ``blocks.{i}.ln1`` / ``ln2``, ``time_mix_{key,value,receptance,gate,output}`` ->
  ``att.{key,...}``, ``time_mix_ln`` -> ``att.ln_x``, ``channel_mix_{key,value,receptance}`` ->
  ``ffn.{key,...}``; rwkv6 ``time_mix_first`` (H, N) -> ``att.time_faaaa``;
- vectors squeezed to (C,) go back to (1, 1, C): rwkv6 ``time_mix_lerp_x`` -> ``att.time_maa_x``,
  ``time_mix_decay`` -> ``att.time_decay``, ``channel_mix_lerp_{k,r}`` -> ``ffn.time_maa_{k,r}``; rwkv7
  ``time_mix_{w0,a0,v0,k_k,k_a}`` -> ``att.{w0,...}``, ``channel_mix_lerp_k`` -> ``ffn.x_k``;
- fused token-shift mixes (k, 1, 1, C) split: rwkv6 ``time_mix_lerp_fused`` in the order w, k, v, r, g
  -> ``att.time_maa_{w,k,v,r,g}`` (older files: ``time_mix_lerp_{w,k,v,r,g}``); rwkv7 in the order r, w,
  k, v, a, g -> ``att.x_{r,w,k,v,a,g}``;
- LoRA matrices transposed back: rwkv6 ``time_mix_w1`` (5D, C), ``time_mix_decay_w1`` (D, C),
  ``time_mix_decay_w2`` (C, D) -> ``att.time_maa_w1``, ``time_decay_w1``, ``time_decay_w2``, and
  ``time_mix_w2`` (5, C, D) -> ``att.time_maa_w2`` (5, D, C); rwkv7 ``time_mix_{w,a,v,g}{1,2}``;
- rwkv7 ``time_mix_r_k`` (C,) -> ``att.r_k`` (H, N) (N: ``rwkv7.wkv.head_size``); layer 0's
  ``time_mix_v0/v1/v2`` are the converter's placeholders (copies of ``a0/a1/a2``, never used): dropped;
- rwkv6 ``rescale_every_n_layers`` = n > 0: the converter divided layer i's ``time_mix_output`` and
  ``channel_mix_value`` by 2^(i // n) and the graph halves the residual stream after every n-th layer;
  multiplying them by 2^(i // n) again (exact: a power of two, on fp16 block scales too) gives the
  official weights, which compute the same logits but for the LayerNorms' eps, which llama.cpp's
  smaller residual stream sees 4^(i // n) times larger.

Constants: every LayerNorm's eps from ``{arch}.attention.layer_norm_epsilon``; the per-head GroupNorm's
is 64e-5 in both graphs. Tensors of any type ``gguf.quants`` dequantizes (F32, F16, BF16, Q8_0, Q4_0,
Q4_1, Q5_0, Q5_1, the K and IQ types) become fp32: exactly the values llama.cpp multiplies with. The
matrices the project quantizes that are stored Q8_0 or Q4_0 are what ``quantize.py``'s int8 / int4 in
groups of 32 hold exactly (``StoredWeights``), which the weight format defaults to.

The file is untrusted: it is read once into a private in-memory copy, hashed as it is copied, its
header walked with bounds checks before ``gguf.GGUFReader`` parses it, and nothing in it is executed.
"""

from __future__ import annotations

import hashlib
import os
import re
import struct
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

import numpy as np
import torch

from ..errors import CheckpointError, ShapeError, UnknownArchitectureError, one_line
from .checkpoint import Checkpoint, StateDict, StoredWeights, check_values

MAGIC = b"GGUF"
VERSIONS = (2, 3)  # what gguf.GGUFReader reads (version 1 counted in 32 bits)
ARCHITECTURES = ("rwkv6", "rwkv7")
HYBRIDS = {  # llama.cpp architectures with RWKV time mixing inside another model, which rwkv-edge does not define
    "rwkv6qwen2": "QRWKV6, RWKV-6 time mixing in a Qwen2 model (RMSNorm, SwiGLU feed-forward)",
    "arwkv7": "ARWKV-7, RWKV-7 time mixing in a Transformer (RMSNorm, SwiGLU feed-forward)",
}
SUPPORTED = "supported: rwkv6 (RWKV-6 Finch) and rwkv7 (RWKV-7 Goose)"
EXACT = {"Q8_0": "int8", "Q4_0": "int4"}  # GGUF types the project's formats hold exactly, in groups of GROUP
GROUP = 32  # the weights per scale of Q8_0 and Q4_0
LN_X_EPS = 64e-5  # the per-head GroupNorm of llama.cpp's rwkv6 and rwkv7 graphs
SMALLEST_SCALE, LARGEST_SCALE = 2.0**-14, 65504.0  # fp16 normal numbers: the scales quantize.py gives back
_ROWS = 4096  # rows dequantized at a time
_CHUNK = 1 << 24  # bytes per read() of the copy

# The matrices the project quantizes (model/base.py quantize_weights): the projections, the head, the embedding
PROJECTIONS = re.compile(r"(emb|head)\.weight|blocks\.\d+\.(att\.(receptance|key|value|gate|output)|"
                         r"ffn\.(key|value|receptance))\.weight")


def is_gguf(path: Path) -> bool:
    """Whether ``path`` is a regular file that starts with the GGUF magic."""
    try:
        with open(path, "rb") as f:
            return f.read(4) == MAGIC
    except OSError:
        return False


def open_gguf(path: Path) -> Checkpoint:
    """The official tensors (fp32) of llama.cpp's GGUF file of an RWKV-6 or RWKV-7 model, its constants and
    how its matrices were stored; CheckpointError, ShapeError or UnknownArchitectureError in one line."""
    try:
        with open(path, "rb") as f:
            copy, sha = _private_copy(f, path)
    except OSError as e:
        raise CheckpointError(f"{path}: cannot read the GGUF file: {e.strerror or e}") from None
    with copy:
        reader = _reader(copy, path)
        arch = _architecture(reader, path)
        tensors, stored = _read_tensors(reader, arch, path)
    check_values(tensors, str(path))
    return Checkpoint(tensors, sha, layout=f"GGUF {arch} ({_types_label(stored)})", constants=_constants(reader, arch),
                      stored=stored)


def stored_format(path: Path) -> tuple[str, int] | None:
    """(weight format, group) of the matrices of the GGUF file ``path`` where a project format holds most of
    them exactly (Q8_0: int8, Q4_0: int4, groups of 32), from its header alone; None otherwise."""
    with open(path, "rb") as f:
        reader = _reader(f, path, mode="r")
        stored = _stored_weights(_projection_types(reader, _architecture(reader, path)), {})
    return (stored.format, stored.group) if stored.format else None


# -- one read into a private copy, the header checked, then parsed -----------------------------------
def _private_copy(f: IO[bytes], path: Path) -> tuple[IO[bytes], str]:
    """The file's bytes in an anonymous in-memory file (a temporary file where there is none) and their sha256."""
    size = os.fstat(f.fileno()).st_size
    try:
        copy: IO[bytes] = os.fdopen(os.memfd_create("rwkv-edge-gguf", os.MFD_CLOEXEC), "w+b")
    except (AttributeError, OSError):  # not Linux, or not allowed here
        copy = tempfile.TemporaryFile()
    digest, n = hashlib.sha256(), 0
    while chunk := f.read(_CHUNK):
        copy.write(chunk)
        digest.update(chunk)
        n += len(chunk)
    copy.flush()
    if n != size:
        copy.close()
        raise CheckpointError(f"{path}: the file changed while it was read ({n} bytes read, {size} expected; "
                              "truncated or being written?); load it again once it is complete")
    return copy, digest.hexdigest()


def _reader(f: IO[bytes], path: Path, mode: str = "r+"):
    """``gguf.GGUFReader`` on ``f`` once ``_check_header`` passed (``r+``: tensors map the private copy writable)."""
    import mmap

    from gguf import GGUFReader

    size = os.fstat(f.fileno()).st_size
    if size < 24:
        raise CheckpointError(f"{path}: truncated GGUF file ({size} bytes, shorter than its header)")
    with mmap.mmap(f.fileno(), size, access=mmap.ACCESS_READ) as view:
        _check_header(view, path)
    try:
        return GGUFReader(f, mode)  # type: ignore[arg-type]  # np.memmap takes an open file
    except (ValueError, KeyError, IndexError, TypeError, OverflowError) as e:
        raise CheckpointError(f"{path}: not a readable GGUF file (corrupt?): {one_line(e)}") from None


_SCALARS = {0: 1, 1: 1, 2: 2, 3: 2, 4: 4, 5: 4, 6: 4, 7: 1, 10: 8, 11: 8, 12: 8}  # GGUF value type -> bytes
_STRING, _ARRAY, _UINT32 = 8, 9, 4


class _Walk:
    """A cursor over a GGUF file's header that raises CheckpointError instead of reading past the end."""

    def __init__(self, data, path: Path) -> None:
        self.data, self.at, self.path = data, 0, path

    def take(self, n: int, what: str) -> int:
        if n < 0 or self.at + n > len(self.data):
            raise CheckpointError(f"{self.path}: truncated GGUF file: {what} runs past its end at byte {len(self.data)} "
                                  "(was the download or the conversion interrupted?)")
        self.at += n
        return self.at - n

    def unpack(self, fmt: str, what: str) -> int:
        return struct.unpack_from(fmt, self.data, self.take(struct.calcsize(fmt), what))[0]

    def string(self, what: str) -> bytes:
        n = self.unpack("<Q", what)
        start = self.take(n, what)
        return bytes(self.data[start:start + n])

    def value(self, kind: int, what: str, depth: int = 0) -> None:
        if kind in _SCALARS:
            self.take(_SCALARS[kind], what)
        elif kind == _STRING:
            self.string(what)
        elif kind == _ARRAY and depth < 2:
            item, count = self.unpack("<I", what), self.unpack("<Q", what)
            if item in _SCALARS:
                self.take(count * _SCALARS[item], what)
            elif item in (_STRING, _ARRAY):
                if count > (len(self.data) - self.at) // 8:  # each item takes 8 bytes at least
                    self.take(len(self.data), what)  # runs past the end: says so
                for _ in range(count):
                    self.value(item, what, depth + 1)
            else:
                raise CheckpointError(f"{self.path}: {what} is an array of {count} values of type {item}: not a GGUF "
                                      "file that llama.cpp writes (corrupt?)")
        else:
            raise CheckpointError(f"{self.path}: {what} has value type {kind}, which GGUF does not define (corrupt?)")


def _check_header(data, path: Path) -> None:
    """Walk the header: magic, version, every key's value and every tensor's shape, type and bytes within the file."""
    from gguf import GGML_QUANT_SIZES, GGMLQuantizationType

    walk = _Walk(data, path)
    walk.take(4, "the magic")
    version = walk.unpack("<I", "the version")
    if version & 0xFFFF == 0 and version:
        raise CheckpointError(f"{path}: a big-endian GGUF file; llama.cpp's little-endian files are read")
    if version not in VERSIONS:
        raise CheckpointError(f"{path}: GGUF version {version}; versions {' and '.join(map(str, VERSIONS))} are read "
                              "(convert the model again with a current llama.cpp)")
    n_tensors, n_keys = walk.unpack("<Q", "the tensor count"), walk.unpack("<Q", "the key count")
    if max(n_tensors, n_keys) > len(data) // 8:
        raise CheckpointError(f"{path}: truncated GGUF file (or corrupt): its header counts {n_tensors} tensors and "
                              f"{n_keys} keys, more than its {len(data)} bytes hold")
    alignment = 32
    for i in range(n_keys):
        key = walk.string(f"key {i}").decode("utf-8", "replace")
        kind = walk.unpack("<I", f"the type of {key}")
        if key == "general.alignment" and kind == _UINT32:
            alignment = struct.unpack_from("<I", data, walk.at)[0] if walk.at + 4 <= len(data) else alignment
        walk.value(kind, key)
    infos = []
    for i in range(n_tensors):
        name = walk.string(f"the name of tensor {i}").decode("utf-8", "replace")
        n_dims = walk.unpack("<I", name)
        if not 1 <= n_dims <= 4:
            raise CheckpointError(f"{path}: tensor {name} has {n_dims} dimensions; GGUF tensors have 1 to 4")
        dims = [walk.unpack("<Q", name) for _ in range(n_dims)]
        kind, offset = walk.unpack("<I", name), walk.unpack("<Q", name)
        infos.append((name, dims, kind, offset))
    if alignment == 0 or alignment & (alignment - 1):
        raise CheckpointError(f"{path}: general.alignment is {alignment}, not a power of two (corrupt?)")
    start = -(-walk.at // alignment) * alignment
    for name, dims, kind, offset in infos:
        try:
            block, size = GGML_QUANT_SIZES[GGMLQuantizationType(kind)]
        except (ValueError, KeyError):
            raise CheckpointError(f"{path}: tensor {name} has type id {kind}, which GGUF does not define") from None
        if 0 in dims or dims[0] % block or offset % alignment:
            raise CheckpointError(f"{path}: tensor {name} of type {GGMLQuantizationType(kind).name} has shape "
                                  f"{tuple(reversed(dims))} at offset {offset}: not a shape (rows of whole "
                                  f"{block}-value blocks) or an offset (a multiple of {alignment}) GGUF allows")
        n_bytes = int(np.prod(dims, dtype=object)) // block * size
        if start + offset + n_bytes > len(data):
            raise CheckpointError(f"{path}: truncated GGUF file: tensor {name} ({n_bytes} bytes at {start + offset}) "
                                  f"runs past its end at byte {len(data)} (was the download interrupted?)")


# -- metadata ----------------------------------------------------------------------------------------
def _meta(reader, key: str, path: Path, default: Any = None) -> Any:
    field = reader.get_field(key)
    if field is None:
        if default is None:
            raise CheckpointError(f"{path}: the GGUF metadata has no {key}, which llama.cpp's RWKV files carry")
        return default
    try:
        return field.contents()
    except (ValueError, IndexError, UnicodeDecodeError) as e:
        raise CheckpointError(f"{path}: unreadable GGUF metadata {key}: {one_line(e)}") from None


def _architecture(reader, path: Path) -> str:
    arch = _meta(reader, "general.architecture", path)
    if arch in HYBRIDS:
        raise UnknownArchitectureError(f"{path}: GGUF architecture {arch!r} is {HYBRIDS[arch]}, which rwkv-edge "
                                       f"does not define; {SUPPORTED}")
    if arch not in ARCHITECTURES:
        raise UnknownArchitectureError(f"{path}: GGUF architecture {str(arch)[:40]!r} is not an RWKV model; {SUPPORTED}")
    return arch


def _constants(reader, arch: str) -> dict[str, float]:
    """The config fields llama.cpp's graph sets: the LayerNorm eps from the metadata (an fp32 value, written
    as its shortest decimal) and the GroupNorm's fixed eps."""
    constants = {"ln_x_eps": LN_X_EPS}
    field = reader.get_field(f"{arch}.attention.layer_norm_epsilon")
    if field is not None:
        constants["norm_eps"] = float(str(np.float32(field.contents())))
    return constants


# -- the tensors -------------------------------------------------------------------------------------
Transform = Callable[[np.ndarray, dict[str, int]], list[tuple[str, np.ndarray]]]


def _as(name: str) -> Transform:
    return lambda a, _dims: [(name, a)]


def _vector(name: str) -> Transform:  # (C,) -> (1, 1, C), as the official checkpoints store it
    return lambda a, _dims: [(name, a.reshape(1, 1, -1))]


def _transposed(name: str) -> Transform:  # the LoRA matrices: GGUF (out, in) -> official (in, out)
    return lambda a, _dims: [(name, np.ascontiguousarray(np.swapaxes(a, -1, -2)))]


def _split(names: tuple[str, ...]) -> Transform:  # (k, 1, 1, C) -> k vectors (1, 1, C)
    def split(a: np.ndarray, dims: dict[str, int]) -> list[tuple[str, np.ndarray]]:
        if a.size != len(names) * dims["C"]:
            raise ShapeError(f"{a.shape} holds {a.size} values, expected {len(names)} mixes of {dims['C']} channels")
        return [(n, np.ascontiguousarray(v).reshape(1, 1, -1)) for n, v in zip(names, a.reshape(len(names), -1))]
    return split


def _heads(name: str) -> Transform:  # (C,) -> (H, N)
    def heads(a: np.ndarray, dims: dict[str, int]) -> list[tuple[str, np.ndarray]]:
        if a.size != dims["C"] or dims["C"] % dims["N"]:
            raise ShapeError(f"{a.shape} is not {dims['C']} channels in heads of {dims['N']}")
        return [(name, a.reshape(-1, dims["N"]))]
    return heads


RENAMED = {"token_embd.weight": "emb.weight", "token_embd_norm.weight": "blocks.0.ln0.weight",
           "token_embd_norm.bias": "blocks.0.ln0.bias", "output_norm.weight": "ln_out.weight",
           "output_norm.bias": "ln_out.bias", "output.weight": "head.weight"}
RENAMED_IN_LAYERS = {  # blk.{i}.<GGUF> -> blocks.{i}.<official>, both architectures, values as they are
    "attn_norm.weight": "ln1.weight", "attn_norm.bias": "ln1.bias",
    "attn_norm_2.weight": "ln2.weight", "attn_norm_2.bias": "ln2.bias",
    **{f"time_mix_{p}.weight": f"att.{p}.weight" for p in ("key", "value", "receptance", "gate", "output")},
    "time_mix_ln.weight": "att.ln_x.weight", "time_mix_ln.bias": "att.ln_x.bias",
    **{f"channel_mix_{p}.weight": f"ffn.{p}.weight" for p in ("key", "value", "receptance")},
}
_TOP = {k: _as(v) for k, v in RENAMED.items()}
_LAYER = {k: _as(v) for k, v in RENAMED_IN_LAYERS.items()}
_LAYER_V6 = {
    **_LAYER,
    "time_mix_lerp_x.weight": _vector("att.time_maa_x"),
    "time_mix_lerp_fused.weight": _split(tuple(f"att.time_maa_{x}" for x in "wkvrg")),
    **{f"time_mix_lerp_{x}.weight": _vector(f"att.time_maa_{x}") for x in "wkvrg"},  # files before the fusion
    "time_mix_w1.weight": _transposed("att.time_maa_w1"), "time_mix_w2.weight": _transposed("att.time_maa_w2"),
    "time_mix_decay.weight": _vector("att.time_decay"),
    "time_mix_decay_w1.weight": _transposed("att.time_decay_w1"),
    "time_mix_decay_w2.weight": _transposed("att.time_decay_w2"),
    "time_mix_first.weight": _as("att.time_faaaa"),
    "channel_mix_lerp_k.weight": _vector("ffn.time_maa_k"), "channel_mix_lerp_r.weight": _vector("ffn.time_maa_r"),
}
_LAYER_V7 = {
    **_LAYER,
    "time_mix_lerp_fused.weight": _split(tuple(f"att.x_{x}" for x in "rwkvag")),
    **{f"time_mix_{v}.weight": _vector(f"att.{v}") for v in ("w0", "a0", "v0", "k_k", "k_a")},
    **{f"time_mix_{m}{i}.weight": _transposed(f"att.{m}{i}") for m in "wavg" for i in (1, 2)},
    "time_mix_r_k.weight": _heads("att.r_k"),
    "channel_mix_lerp_k.weight": _vector("ffn.x_k"),
}
LAYERS = {"rwkv6": _LAYER_V6, "rwkv7": _LAYER_V7}
PLACEHOLDERS = {"rwkv7": {"time_mix_v0.weight", "time_mix_v1.weight", "time_mix_v2.weight"}}  # layer 0's, unused
RESCALED = {"time_mix_output.weight", "channel_mix_value.weight"}  # rwkv6: divided by 2^(i // rescale_every)
_BLOCK = re.compile(r"blk\.(0|[1-9][0-9]*)\.(.+)")


def _official(name: str, arch: str) -> tuple[int | None, str, Transform | None]:
    """(layer or None, the suffix, its transform or None if the name is not llama.cpp's for ``arch``)."""
    match = _BLOCK.fullmatch(name)
    if match is None:
        return None, name, _TOP.get(name)
    return int(match.group(1)), match.group(2), LAYERS[arch].get(match.group(2))


def _read_tensors(reader, arch: str, path: Path) -> tuple[StateDict, StoredWeights]:
    """Every tensor dequantized to fp32 (F32 ones mapped from the private copy), renamed and reshaped to the
    official layout, the rwkv6 rescale undone; with how the projections were stored."""
    dims = _dims(reader, arch, path)
    every = _meta(reader, f"{arch}.rescale_every_n_layers", path, 0) if arch == "rwkv6" else 0
    tensors: StateDict = {}
    round_trips: dict[str, bool] = {}
    for t in reader.tensors:
        layer, suffix, transform = _official(t.name, arch)
        if transform is None:
            raise CheckpointError(f"{path}: unexpected tensor {t.name} in an {arch} GGUF file (not one llama.cpp's "
                                  f"{arch} graph reads)")
        if layer == 0 and suffix in PLACEHOLDERS.get(arch, ()):
            continue
        scale = 2.0 ** (layer // every) if every and layer is not None and suffix in RESCALED else 1.0
        values = _values(t, scale, path)
        try:
            renamed = transform(values, dims)
        except ShapeError as e:
            raise ShapeError(f"{path}: tensor {t.name}: {e}") from None
        prefix = "" if layer is None else f"blocks.{layer}."
        for name, array in renamed:
            tensors[prefix + name] = torch.from_numpy(array)
        if t.tensor_type.name in EXACT and PROJECTIONS.fullmatch(prefix + renamed[0][0]):
            round_trips[prefix + renamed[0][0]] = _round_trips(t, scale)
    _check_layers(tensors, dims["layers"], arch, path)
    return tensors, _stored_weights(_projection_types(reader, arch), round_trips)


def _dims(reader, arch: str, path: Path) -> dict[str, int]:
    """The sizes the transforms need, from the metadata, checked against the embedding."""
    dims = {"C": int(_meta(reader, f"{arch}.embedding_length", path)), "N": int(_meta(reader, f"{arch}.wkv.head_size", path)),
            "layers": int(_meta(reader, f"{arch}.block_count", path))}
    embedding = next((t for t in reader.tensors if t.name == "token_embd.weight"), None)
    if embedding is None:
        raise ShapeError(f"{path}: no token_embd.weight, the embedding every {arch} GGUF file has")
    if int(embedding.shape[0]) != dims["C"] or dims["N"] <= 0:
        raise ShapeError(f"{path}: token_embd.weight has {int(embedding.shape[0])} channels but the metadata says "
                         f"{arch}.embedding_length = {dims['C']} (head size {dims['N']})")
    return dims


def _check_layers(tensors: StateDict, count: int, arch: str, path: Path) -> None:
    found = sorted({int(k.split(".")[1]) for k in tensors if k.startswith("blocks.")})
    if found != list(range(count)):
        held = f"layers {found[0]} to {found[-1]}" if found else "no layers"
        raise ShapeError(f"{path}: the metadata says {arch}.block_count = {count}, but the tensors hold {held}"
                         f"{' with gaps' if found and len(found) != found[-1] + 1 else ''}")


def _values(t, scale: float, path: Path) -> np.ndarray:
    """The tensor's values as fp32 (numpy shape: ggml's reversed) times ``scale`` (a power of two: exact). F32
    data is the private copy's memory itself; other types are dequantized ``_ROWS`` rows at a time."""
    from gguf import GGMLQuantizationType, quants

    shape = tuple(int(d) for d in reversed(t.shape.tolist()))
    if t.tensor_type == GGMLQuantizationType.F32:
        values = np.asarray(t.data)
        if scale != 1.0:
            values *= np.float32(scale)
        return values
    rows_in = t.data.reshape(-1, t.data.shape[-1])
    out = np.empty(shape, np.float32)
    rows_out = out.reshape(-1, shape[-1])
    for start in range(0, rows_in.shape[0], _ROWS):
        try:
            part = quants.dequantize(rows_in[start:start + _ROWS], t.tensor_type)
        except NotImplementedError:
            raise CheckpointError(f"{path}: tensor {t.name} is stored as {t.tensor_type.name}, which the gguf "
                                  f"package cannot dequantize; readable types: {', '.join(_readable_types())}") from None
        rows_out[start:start + _ROWS] = part.reshape(-1, shape[-1]) * np.float32(scale)
    return out


def _readable_types() -> list[str]:
    from gguf import GGML_QUANT_SIZES, GGMLQuantizationType, quants

    readable = []
    for kind in GGMLQuantizationType:
        block, size = GGML_QUANT_SIZES.get(kind, (0, 0))
        try:
            if block and quants.dequantize(np.zeros((1, size), np.uint8), kind) is not None:
                readable.append(kind.name)
        except (NotImplementedError, ValueError, TypeError):
            continue
    return readable


def stored_blocks(data: np.ndarray, kind: str) -> tuple[np.ndarray, np.ndarray]:
    """The integers (rows, K) int8 and scales (rows, K / 32) fp16 of Q8_0 or Q4_0 rows (rows, K / 32 * block
    bytes) uint8: ``W = q * d`` per block of 32 (Q4_0: the first 16 values in the low nibbles)."""
    rows = data.shape[0]
    blocks = data.reshape(rows, -1, 34 if kind == "Q8_0" else 18)  # an fp16 scale, then 32 integers
    scales = np.ascontiguousarray(blocks[..., :2]).view(np.float16)[..., 0]
    if kind == "Q8_0":
        q = blocks[..., 2:].view(np.int8)
    else:
        q = np.concatenate([blocks[..., 2:] & 0x0F, blocks[..., 2:] >> 4], axis=-1).astype(np.int8) - 8
    return q.reshape(rows, -1), scales


def _round_trips(t, scale: float) -> bool:
    """Whether ``quantize.py`` gives back this Q8_0 / Q4_0 matrix's integers and scales (times ``scale``):
    every block's scale is 0 or an fp16 normal number of the sign quantize.py gives it, and its integers
    reach the extreme level (Q8_0: |q| = 127, never -128; Q4_0: q = -8), as llama.cpp's quantizer leaves them."""
    data = t.data.reshape(-1, t.data.shape[-1])
    for start in range(0, data.shape[0], _ROWS):
        q, d = stored_blocks(data[start:start + _ROWS], t.tensor_type.name)
        q = q.reshape(*d.shape, -1).astype(np.int16)  # (rows, blocks, 32)
        d = d.astype(np.float64) * scale
        extreme = (np.abs(q).max(-1) == 127) & (d > 0) if t.tensor_type.name == "Q8_0" else q.min(-1) == -8
        size = np.abs(d)
        if not np.all((d == 0) | (extreme & (size >= SMALLEST_SCALE) & (size <= LARGEST_SCALE))):
            return False
    return True


def _projection_types(reader, arch: str) -> dict[str, tuple[str, int]]:
    """Official name -> (GGUF type, values) of every matrix the project quantizes (renamed without a transform)."""
    found = {}
    for t in reader.tensors:
        layer, suffix, _ = _official(t.name, arch)
        name = RENAMED.get(suffix) if layer is None else RENAMED_IN_LAYERS.get(suffix)
        official = name if layer is None or name is None else f"blocks.{layer}.{name}"
        if official is not None and PROJECTIONS.fullmatch(official):
            found[official] = (t.tensor_type.name, int(t.n_elements))
    return found


def _stored_weights(types: dict[str, tuple[str, int]], round_trips: dict[str, bool]) -> StoredWeights:
    """The stored types; the format of the type most of the values are stored in, where it is Q8_0 or Q4_0;
    the matrices of that type whose blocks round-trip (all of them, from the header alone)."""
    values: dict[str, int] = {}
    for kind, n in types.values():
        values[kind] = values.get(kind, 0) + n
    most = max(values, key=values.__getitem__) if values else None
    if most not in EXACT:
        return StoredWeights({k: kind for k, (kind, _) in types.items()})
    exact = frozenset(k for k, (kind, _) in types.items() if kind == most and round_trips.get(k, True))
    return StoredWeights({k: kind for k, (kind, _) in types.items()}, EXACT[most], GROUP, exact)


def _types_label(stored: StoredWeights) -> str:
    found: dict[str, int] = {}
    for kind in stored.types.values():
        found[kind] = found.get(kind, 0) + 1
    return ", ".join(sorted(found, key=lambda k: -found[k])) or "no matrices"
