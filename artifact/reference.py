"""reference.npz: what the fp32 PyTorch model computed when the artifact was built, so that a machine
with only the runtime and the artifact (no torch, no checkpoint) can verify it (docs/onnx-contract.md).

Arrays of one .npz (read without pickle), version 2:

- ``version`` () int64: REFERENCE_VERSION
- ``tokens`` (T,) int64: the rollout's token ids (T = 64)
- the logits after each token, the model feeding back its own state, in compact form (``RecordedLogits``):
  ``logits_steps`` (F,) int64, ascending, and ``logits_full`` (F, V) float32: the whole rows of those steps;
  ``logits_top_ids`` (T, K) int64 and ``logits_top`` (T, K) float32: every step's K largest logits, by value
  descending (ties: the lower id first); ``logits_mean`` and ``logits_std`` (T,) float64: every row's mean and std
- ``state_out.{layer}.{role}`` float32, the state's shape: the state after the last token
- ``greedy_prompt`` (P,) int64 and ``greedy_tokens`` (G,) int64: greedy generation from the prompt
- int8-compute artifacts only, ``spread_logits``, ``spread_state`` and ``spread_top1`` () float64
  (``RoundingSpread``): how far the same rollout moves when every rounded input is nudged by one fp32 ulp

Version 1 held ``logits`` (T, V) float32, every row whole; it is still read (each step then has its whole row).

An image model's reference (``VisionReference``, version VISION_REFERENCE_VERSION) holds ``version``,
``images`` (N, 3, H, W) float32 and its output under the graph's output name: ``logits`` (N, classes)
or ``features`` (N, C, h, w).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import numpy as np

from ..contract import StateTensor
from ..errors import ArtifactError
from .files import read_npz

REFERENCE_VERSION = 2  # of a language model's reference; version 1 (every logit of every step) is read too
VISION_REFERENCE_VERSION = 1
TOP_K = 64  # the largest logits recorded for every step
LOGITS = ("logits_steps", "logits_full", "logits_top_ids", "logits_top", "logits_mean", "logits_std")


@dataclass(frozen=True)
class TopLogits:
    """One step's logits where the whole row is not recorded: its K largest and the row's mean and std."""

    ids: np.ndarray  # (K,) int64, by value descending, ties by the lower id: ids[0] is the row's argmax
    values: np.ndarray  # (K,) float32
    mean: float  # of the whole row (float64)
    std: float
    vocab_size: int

    @property
    def shape(self) -> tuple[int]:
        """The shape of the row it stands for: (V,)."""
        return (self.vocab_size,)


@dataclass(frozen=True)
class RecordedLogits:
    """The logits (T, V) of a rollout: the whole rows of a few steps; every step's K largest, mean and std."""

    steps: np.ndarray  # (F,) int64, ascending: the steps whose whole row is recorded
    full: np.ndarray  # (F, V) float32
    top_ids: np.ndarray  # (T, K) int64
    top: np.ndarray  # (T, K) float32
    mean: np.ndarray  # (T,) float64
    std: np.ndarray  # (T,) float64

    @classmethod
    def of(cls, logits: np.ndarray, steps: Iterable[int]) -> RecordedLogits:
        """The record of ``logits`` (T, V) keeping the whole rows of ``steps`` (each in [0, T)) and the
        TOP_K largest of every row (all V where V is smaller)."""
        logits = np.ascontiguousarray(logits, dtype=np.float32)
        ids = np.argsort(-logits, axis=1, kind="stable")[:, :TOP_K]  # ties: the lower id first
        kept = np.unique(np.asarray(list(steps), dtype=np.int64))
        rows = logits.astype(np.float64)
        return cls(kept, logits[kept], ids.astype(np.int64), np.take_along_axis(logits, ids, axis=1),
                   rows.mean(axis=1), rows.std(axis=1))

    @property
    def vocab_size(self) -> int:
        return self.full.shape[1]

    def at(self, step: int) -> np.ndarray | TopLogits:
        """Step ``step``'s whole row (V,) where it is recorded, else its ``TopLogits``."""
        where = int(np.searchsorted(self.steps, step))
        if where < len(self.steps) and self.steps[where] == step:
            return self.full[where]
        return TopLogits(self.top_ids[step], self.top[step], float(self.mean[step]), float(self.std[step]),
                         self.vocab_size)


@dataclass(frozen=True)
class RoundingSpread:
    """What an int8-compute model's own rollout does when every input it rounds to int8 is nudged by one
    fp32 ulp (artifact/builder.py, ``build_reference(spread=True)``), against the rollout without the
    nudge, over whole rows: the worst max|Δ|/std of the logits over the steps, the worst over the final
    state tensors, and the top-1 agreement."""

    logits: float  # max over steps of max|Δ|/std
    state: float  # max over state tensors of max|Δ|/std after the last step
    top1: float  # fraction of steps whose top-1 token agrees, in [0, 1]

    def arrays(self) -> dict[str, np.ndarray]:
        return {f"spread_{name}": np.float64(value) for name, value in asdict(self).items()}


SPREAD = tuple(f"spread_{f.name}" for f in fields(RoundingSpread))


@dataclass(frozen=True)
class Reference:
    tokens: np.ndarray  # (T,) int64
    logits: RecordedLogits  # after each token
    state: dict[str, np.ndarray]  # state_out.{layer}.{role} after the last token
    greedy_prompt: np.ndarray  # (P,) int64
    greedy_tokens: np.ndarray  # (G,) int64
    spread: RoundingSpread | None = None  # int8-compute artifacts: the rollout's sensitivity to its rounding

    def save(self, path: Path) -> None:
        logits = self.logits
        with open(path, "wb") as f:
            np.savez(f, version=np.int64(REFERENCE_VERSION), tokens=self.tokens, logits_steps=logits.steps,
                     logits_full=logits.full, logits_top_ids=logits.top_ids, logits_top=logits.top,
                     logits_mean=logits.mean, logits_std=logits.std, greedy_prompt=self.greedy_prompt,
                     greedy_tokens=self.greedy_tokens, **self.state, **(self.spread.arrays() if self.spread else {}))


def load_reference(path: Path, spec: list[StateTensor], vocab_size: int) -> Reference:
    """The reference rollout at ``path`` (version 2, or 1), every array's shape, dtype and index range
    checked against the artifact's state spec and vocabulary."""
    arrays = read_npz(path)
    version = _version(arrays, path, (1, REFERENCE_VERSION))
    logits_names = ("logits",) if version == 1 else LOGITS
    names = ["tokens", *logits_names, "greedy_prompt", "greedy_tokens", *(t.output_name for t in spec)]
    missing = [n for n in names if n not in arrays]
    if missing:
        raise ArtifactError(f"{path}: holds no {missing[0]}")
    tokens = _token_ids(arrays, "tokens", path, vocab_size)
    if not tokens.size:
        raise ArtifactError(f"{path}: tokens is empty")
    for t in spec:
        _check(arrays, t.output_name, path, "f", t.shape)
    logits = _whole_logits(arrays, path, tokens.size, vocab_size) if version == 1 else \
        _recorded_logits(arrays, path, tokens.size, vocab_size)
    return Reference(tokens, logits, {t.output_name: arrays[t.output_name].astype(np.float32) for t in spec},
                     _token_ids(arrays, "greedy_prompt", path, vocab_size),
                     _token_ids(arrays, "greedy_tokens", path, vocab_size), _spread(arrays, path))


def _spread(arrays: dict[str, np.ndarray], path: Path) -> RoundingSpread | None:
    """The recorded ``RoundingSpread``: all three figures or none, each one finite number >= 0 (top-1 <= 1)."""
    present = [name for name in SPREAD if name in arrays]
    if not present:
        return None
    if len(present) < len(SPREAD):
        raise ArtifactError(f"{path}: holds {present[0]} but not {next(n for n in SPREAD if n not in arrays)}")
    values = {}
    for name in SPREAD:
        value = arrays[name]
        if value.size != 1 or value.dtype.kind != "f" or not np.isfinite(value).all() or value.item() < 0:
            what = value.item() if value.size == 1 else _described(value)
            raise ArtifactError(f"{path}: {name} must be one finite number >= 0; it is {what}")
        values[name.removeprefix("spread_")] = float(value.item())
    if values["top1"] > 1:
        raise ArtifactError(f"{path}: spread_top1 is a fraction of steps, at most 1; it is {values['top1']}")
    return RoundingSpread(**values)


def _whole_logits(arrays: dict[str, np.ndarray], path: Path, steps: int, vocab_size: int) -> RecordedLogits:
    """A version-1 file's ``logits`` (T, V): every step's whole row."""
    logits = _check(arrays, "logits", path, "f", (steps, vocab_size))
    return RecordedLogits.of(logits, range(steps))


def _recorded_logits(arrays: dict[str, np.ndarray], path: Path, steps: int, vocab_size: int) -> RecordedLogits:
    """A version-2 file's logits: whole rows of 1 to T distinct ascending steps in [0, T); every step's K
    (1 <= K <= V) distinct ids in [0, V) and their values, descending; each row's mean and std (>= 0)."""
    kept = _check(arrays, "logits_steps", path, "iu", None)
    if kept.ndim != 1 or not 1 <= kept.size <= steps or kept.min() < 0 or kept.max() >= steps \
            or np.any(np.diff(kept) <= 0):
        raise ArtifactError(f"{path}: logits_steps must be 1 to {steps} distinct ascending steps in [0, {steps}); "
                            f"it is {_described(kept)}")
    full = _check(arrays, "logits_full", path, "f", (kept.size, vocab_size))
    ids = _check(arrays, "logits_top_ids", path, "iu", None)
    if ids.ndim != 2 or len(ids) != steps or not 1 <= ids.shape[1] <= vocab_size:
        raise ArtifactError(f"{path}: logits_top_ids must be ({steps}, K) with 1 <= K <= {vocab_size}; "
                            f"it is {_described(ids)}")
    if ids.min() < 0 or ids.max() >= vocab_size:
        raise ArtifactError(f"{path}: logits_top_ids must be token ids in [0, {vocab_size}); they run from "
                            f"{ids.min()} to {ids.max()}")
    if np.any(np.diff(np.sort(ids, axis=1), axis=1) == 0):
        raise ArtifactError(f"{path}: logits_top_ids repeats an id within a step")
    top = _check(arrays, "logits_top", path, "f", ids.shape)
    if not np.all(top[:, :-1] >= top[:, 1:]):
        raise ArtifactError(f"{path}: logits_top must be in descending order in each row, with no NaN")
    mean = _check(arrays, "logits_mean", path, "f", (steps,))
    std = _check(arrays, "logits_std", path, "f", (steps,))
    if not np.all(std >= 0):
        raise ArtifactError(f"{path}: logits_std holds a negative or NaN value")
    return RecordedLogits(kept.astype(np.int64), full.astype(np.float32), ids.astype(np.int64),
                          top.astype(np.float32), mean.astype(np.float64), std.astype(np.float64))


@dataclass(frozen=True)
class VisionReference:
    """What the fp32 PyTorch image model computed on a fixed set of images at build time."""

    images: np.ndarray  # (N, 3, H, W) float32
    output: np.ndarray  # (N, classes) logits, or (N, C, h, w) features
    name: str  # "logits" or "features"

    def save(self, path: Path) -> None:
        with open(path, "wb") as f:
            np.savez(f, version=np.int64(VISION_REFERENCE_VERSION), images=self.images, **{self.name: self.output})


def load_vision_reference(path: Path, config: dict) -> VisionReference:
    """The reference images and outputs at ``path``, checked against the image model's ``config``
    (a manifest's, validated): images (N, C, S, S), outputs (N, classes) or (N, C, S / p, S / p), N >= 1."""
    arrays = read_npz(path)
    _version(arrays, path, (VISION_REFERENCE_VERSION,))
    name, size = config["output"], config["image_size"]
    images, output = arrays.get("images"), arrays.get(name)
    if images is None or output is None:
        raise ArtifactError(f"{path}: holds no {'images' if images is None else name}")
    grid = size // config["patch_size"]
    per_image = (config["num_classes"],) if name == "logits" else (config["embed_dims"], grid, grid)
    if (images.shape[1:] != (config["in_channels"], size, size) or not len(images) or images.dtype.kind != "f"
            or output.shape != (len(images), *per_image) or output.dtype.kind != "f"):
        raise ArtifactError(f"{path}: its arrays do not have the shapes and dtypes of this artifact's images "
                            f"and {name} (images {images.shape}, {name} {output.shape})")
    return VisionReference(images.astype(np.float32), output.astype(np.float32), name)


def _version(arrays: dict[str, np.ndarray], path: Path, readable: tuple[int, ...]) -> int:
    """The file's ``version``, one of ``readable``; else the one-line error to rebuild the artifact."""
    version = arrays.get("version")
    found = version.item() if version is not None and version.size == 1 and version.dtype.kind in "iu" else None
    if found not in readable:
        shown = "none" if version is None else found if found is not None else _described(version)
        raise ArtifactError(f"{path}: reference version {shown}, this rwkv-edge reads "
                            f"{' and '.join(map(str, readable))}: rebuild the artifact")
    return found


def _check(arrays: dict[str, np.ndarray], name: str, path: Path, kinds: str,
           shape: tuple[int, ...] | None) -> np.ndarray:
    """``arrays[name]``, whose dtype kind must be one of ``kinds`` and, unless None, shape ``shape``."""
    array = arrays[name]
    if array.dtype.kind not in kinds or (shape is not None and array.shape != tuple(shape)):
        expected = {"f": "float", "iu": "integer"}[kinds]
        raise ArtifactError(f"{path}: {name} must be {expected}{'' if shape is None else f' {tuple(shape)}'}; "
                            f"it is {_described(array)}")
    return array


def _token_ids(arrays: dict[str, np.ndarray], name: str, path: Path, vocab_size: int) -> np.ndarray:
    """``arrays[name]`` as int64: a 1-D array of token ids in [0, vocab_size)."""
    ids = _check(arrays, name, path, "iu", None)
    if ids.ndim != 1 or (ids.size and (ids.min() < 0 or ids.max() >= vocab_size)):
        raise ArtifactError(f"{path}: {name} must be a 1-D array of token ids in [0, {vocab_size}); "
                            f"it is {_described(ids)}" + (f" from {ids.min()} to {ids.max()}" if ids.size else ""))
    return ids.astype(np.int64)


def _described(array: np.ndarray) -> str:
    return f"{array.dtype} {array.shape}"
