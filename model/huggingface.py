"""Hugging Face model folders: ``config.json`` and the weights, renamed to the official names.

A folder is read as its files say: ``config.json``, then the weights (an index and its shards, or one file;
safetensors before ``pytorch_model.bin``), each file through ``checkpoint.open_file`` (read once, hashed, no
pickled code run). Every file read is an entry of the folder: an index names plain file names only. The
layout (``hf_layouts.py``) is the one whose ``model_type`` and marker key the folder has; its table renames
the tensors, its config fields are checked against them, and its constants come from the config.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Collection
from pathlib import Path
from typing import Any

from ..architectures import detect
from ..errors import CheckpointError, ShapeError, UnknownArchitectureError
from .checkpoint import Checkpoint, StateDict, check_values, directory_message, open_file
from .hf_layouts import LAYOUTS, MARKERS, SUPPORTED, Layout, rename

CONFIG = "config.json"
# the weights of a folder, in the order transformers looks for them: (index, single file)
WEIGHTS = (("model.safetensors.index.json", "model.safetensors"), ("pytorch_model.bin.index.json", "pytorch_model.bin"))
_MAX_JSON_BYTES = 64 << 20  # a config or an index larger than this is not one


def is_model_folder(path: Path) -> bool:
    """Whether the directory ``path`` is a model folder (a checkpoint) rather than an rwkv-edge artifact."""
    return path.is_dir() and (path / CONFIG).is_file() and not (path / "manifest.json").exists()


def is_folder_file(path: Path) -> bool:
    """Whether ``path`` names a folder's ``config.json`` or its sharded-weights index."""
    return path.name == CONFIG or path.name.endswith(".index.json")


def is_hf_layout(tensors: Collection[str]) -> bool:
    """Whether the key names are a Hugging Face layout's rather than the official ones."""
    return any(marker in tensors for marker in MARKERS) or any(
        k.startswith(("rwkv.blocks.", "model.layers.")) for k in tensors)


def open_folder(path: Path, opened: Checkpoint | None = None) -> Checkpoint:
    """The checkpoint of the model folder ``path``, or of the folder holding the file ``path`` (its config,
    an index, or a weights file: ``opened`` when already read)."""
    folder = path if path.is_dir() else path.parent
    if not (folder / CONFIG).exists():
        if path.is_dir():
            raise CheckpointError(directory_message(path))
        raise CheckpointError(f"{path}: {'its folder' if is_folder_file(path) else 'Hugging Face layout keys, but its folder'} "
                              f"has no {CONFIG}; pass the model folder with the {CONFIG} it was saved with")
    config_bytes = _read_inside(folder, CONFIG)
    config = _json(config_bytes, folder / CONFIG, "config")
    layout_candidates = _layouts_of(config, folder)
    files = _weight_files(folder, path)
    read: dict[str, Checkpoint] = {}
    tensors: StateDict = {}
    for name, listed in files.items():
        checkpoint = opened if opened is not None and folder / name == path else open_file(_inside(folder, name))
        read[name] = checkpoint
        if listed is not None and set(checkpoint.tensors) != listed:
            extra, absent = sorted(set(checkpoint.tensors) - listed), sorted(listed - set(checkpoint.tensors))
            what = (f"has {_some(extra)}, which the index does not list" if extra
                    else f"lacks {_some(absent)}, which the index lists in it")
            raise CheckpointError(f"{folder / name}: {what}; the folder's files do not belong together")
        duplicate = tensors.keys() & checkpoint.tensors.keys()
        if duplicate:
            raise CheckpointError(f"{folder / name}: {_some(sorted(duplicate))} also in another weights file")
        tensors.update(checkpoint.tensors)
    layout = _layout_of(layout_candidates, tensors, folder)
    official, unmatched = rename(layout, tensors)
    if unmatched:
        raise CheckpointError(f"{folder}: a {layout.label} with tensors its table does not know: {_some(unmatched)}")
    check_values(official, str(folder))
    _check_config(layout, config, official, folder)
    digest = hashlib.sha256((f"{CONFIG} {hashlib.sha256(config_bytes).hexdigest()}\n" + "".join(
        f"{name} {read[name].sha256}\n" for name in sorted(read))).encode())
    return Checkpoint(official, digest.hexdigest(), layout=layout.label, constants=layout.constants(config))


def _layouts_of(config: dict[str, Any], folder: Path) -> list[Layout]:
    """The layouts with the config's model_type; UnknownArchitectureError, naming what it is, for none."""
    model_type = config.get("model_type")
    found = [x for x in LAYOUTS if x.model_type == model_type]
    if not found:
        architectures = config.get("architectures")
        named = f" ({', '.join(map(str, architectures))})" if isinstance(architectures, list) and architectures else ""
        raise UnknownArchitectureError(f"{folder}: a Hugging Face {model_type!r} model{named}, not an RWKV layout "
                                       f"rwkv-edge reads; {SUPPORTED}")
    return found


def _layout_of(candidates: list[Layout], tensors: StateDict, folder: Path) -> Layout:
    found = next((x for x in candidates if x.marker in tensors), None)
    if found is None:
        names = sorted(tensors)
        raise UnknownArchitectureError(
            f"{folder}: model_type {candidates[0].model_type!r}, but its tensors ({_some(names, 3)}) have none of "
            f"the names of {', '.join(repr(x.marker) for x in candidates)}; {SUPPORTED}")
    return found


def _weight_files(folder: Path, path: Path) -> dict[str, frozenset[str] | None]:
    """The weight files to read, each with the tensor names its index lists (None: no index). A weights file
    given itself is read with the other shards its folder's index lists it with."""
    if path.name.endswith(".index.json"):
        return _index(folder, path.name)
    if path.is_file() and path.name != CONFIG:
        shards = next((_index(folder, index) for index, _ in WEIGHTS if (folder / index).exists()), {})
        return shards if path.name in shards else {path.name: None}
    for index, single in WEIGHTS:
        if (folder / index).exists():
            return _index(folder, index)
        if (folder / single).exists():
            return {single: None}
    raise CheckpointError(f"{folder}: a folder with {CONFIG} but no weights: expected "
                          + ", ".join(name for pair in WEIGHTS for name in pair))


def _index(folder: Path, name: str) -> dict[str, frozenset[str]]:
    """{shard: the tensor names the index puts in it}, every shard named inside the folder."""
    index = _json(_read_inside(folder, name), folder / name, "index")
    weight_map = index.get("weight_map")
    if not isinstance(weight_map, dict) or not weight_map:
        raise CheckpointError(f"{folder / name}: no weight_map; expected a Hugging Face index of the shards")
    shards: dict[str, set[str]] = {}
    for tensor, shard in weight_map.items():
        if not isinstance(shard, str):
            raise CheckpointError(f"{folder / name}: tensor {tensor!r} maps to {shard!r}, not a file name")
        shards.setdefault(shard, set()).add(tensor)
    for shard in shards:
        if not _inside(folder, shard).exists():
            raise CheckpointError(f"{folder / name}: lists the shard {shard}, which is not in the folder "
                                  "(download incomplete?)")
    return {shard: frozenset(names) for shard, names in sorted(shards.items())}


def _inside(folder: Path, name: str) -> Path:
    """``folder / name``, refused unless ``name`` is a plain file name: an index is read from someone else's
    download. The entry itself may be a link (a Hugging Face cache snapshot links its files to ../../blobs)."""
    if not name or Path(name).name != name or name in (".", "..") or "\\" in name:
        raise CheckpointError(f"{folder}: the weights file name {name!r} is not a plain file name inside the "
                              "folder; refusing to read it")
    return folder / name


def _read_inside(folder: Path, name: str) -> bytes:
    path = _inside(folder, name)
    try:
        with open(path, "rb") as f:
            data = f.read(_MAX_JSON_BYTES + 1)
    except OSError as e:
        raise CheckpointError(f"{path}: cannot read it: {e.strerror or e}") from None
    if len(data) > _MAX_JSON_BYTES:
        raise CheckpointError(f"{path}: larger than {_MAX_JSON_BYTES >> 20} MiB; not a Hugging Face JSON file")
    return data


def _json(data: bytes, path: Path, what: str) -> dict[str, Any]:
    try:
        value = json.loads(data)
    except (ValueError, RecursionError) as e:
        raise CheckpointError(f"{path}: not valid JSON ({str(e).splitlines()[0][:80]}); a Hugging Face {what} "
                              "file is a JSON object") from None
    if not isinstance(value, dict):
        raise CheckpointError(f"{path}: a JSON {type(value).__name__}, not the object a Hugging Face {what} file is")
    return value


def _check_config(layout: Layout, config: dict[str, Any], tensors: StateDict, folder: Path) -> None:
    """The architecture the tensors hold is the layout's, its config's sizes are the tensors', and it sets no
    option rwkv-edge does not compute."""
    found = detect(tensors)
    if found.name != layout.version:
        raise UnknownArchitectureError(f"{folder}: a {layout.label}, but its tensors are {found.label}'s")
    for key, (supported, default) in layout.fixed.items():
        value = config.get(key, default)
        if value != supported:
            raise UnknownArchitectureError(f"{folder}: config.json sets {key} = {value!r}; rwkv-edge computes the "
                                           f"{layout.label} with {key} = {supported!r} only")
    for key, size in layout.sizes.items():
        value, actual = config.get(key), size(tensors)
        if value is not None and actual is not None and value != actual:
            raise ShapeError(f"{folder}: config.json has {key} = {value}, but the tensors have {actual}; "
                             "the config does not belong to these weights")


def _some(names: list[str], limit: int = 4) -> str:
    return ", ".join(names[:limit]) + (f" and {len(names) - limit} more" if len(names) > limit else "")
