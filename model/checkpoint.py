"""Reading checkpoint files safely and checking their tensors against a model's parameters."""

from __future__ import annotations

import pickle
import zipfile
from pathlib import Path

import torch

from ..errors import CheckpointError, ShapeError

StateDict = dict[str, torch.Tensor]


def read_checkpoint(path: str | Path) -> StateDict:
    """Load a ``.pth`` or ``.safetensors`` file without executing pickled code."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such checkpoint file")
    if path.suffix == ".safetensors":
        tensors = _read_safetensors(path)
    else:
        tensors = _read_torch(path)
    if not isinstance(tensors, dict) or not tensors:
        raise CheckpointError(f"{path}: not a checkpoint (expected a dict of tensors, got {type(tensors).__name__})")
    bad = [k for k, v in tensors.items() if not isinstance(k, str) or not isinstance(v, torch.Tensor)]
    if bad:
        raise CheckpointError(f"{path}: entry {bad[0]!r} is not a named tensor; expected a plain state dict")
    return tensors


def _read_safetensors(path: Path) -> StateDict:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        return load_file(path)
    except (SafetensorError, OSError, ValueError) as e:
        raise CheckpointError(f"{path}: unreadable safetensors file (truncated or corrupt?): {e}") from None


def _read_torch(path: Path) -> StateDict:
    try:
        return torch.load(path, map_location="cpu", weights_only=True, mmap=zipfile.is_zipfile(path))
    except pickle.UnpicklingError as e:
        if "weights_only" in str(e) or "Unsupported global" in str(e):
            raise CheckpointError(
                f"{path}: refusing to load: the file needs pickled Python code to load, which could run "
                "arbitrary code. Re-save it as a plain state dict of tensors (or as .safetensors)."
            ) from None
        raise CheckpointError(f"{path}: not a PyTorch checkpoint ({e})") from None
    except Exception as e:  # a damaged file fails in many places of the unpickler
        first_line = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise CheckpointError(f"{path}: not a readable PyTorch checkpoint (truncated or corrupt?): {first_line}") from None


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
