"""How many intra-op threads a torch computation of the pipeline runs on: chosen from its work.

A decode step is hundreds of small operators, each a parallel region of torch's OpenMP pool. On a
busy machine a region waits for its slowest thread, and a thread that lost its core waits for the
scheduler's next time slice: with torch's default of one thread per core, the 64 single-token steps
of the demo model's reference rollout took 110 s at load 7-15 instead of 0.8 s on one thread. So a
call whose work is small runs on one thread (on an idle machine it loses little: a small operator
gains little from a second core), and only a call large enough that each operator outlasts a time
slice keeps torch's default.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:
    from .vision import VisionRWKV

# Multiply-adds per call below which a call runs on one thread: a single token through a model of
# up to ~1e9 parameters, or a batch of small images (each weight meets every token once).
SERIAL_MACS = 1 << 30


def threads_for(parameters: int, tokens: int = 1, requested: int | None = None) -> int | None:
    """Intra-op threads for calls of a model of ``parameters`` weights over ``tokens`` positions each
    (a decode step: 1; an image batch: patches x images): ``requested`` where given (a user's
    ``--threads``), 1 where a call's multiply-adds (parameters x tokens) are below SERIAL_MACS, else
    None (the count as it is: torch's default, one per core, unless the program set another)."""
    if requested is not None:
        return requested
    return 1 if parameters * tokens < SERIAL_MACS else None


def parameter_count(model: torch.nn.Module) -> int:
    """The number of weights ``model`` holds (what ``threads_for`` takes)."""
    return sum(p.numel() for p in model.parameters())


def image_threads(model: VisionRWKV, shape: tuple[int, ...], requested: int | None = None) -> int | None:
    """``threads_for`` a Vision-RWKV call on images of ``shape`` (N, C, H, W): N x its patches per image."""
    n, _, height, width = shape
    patch = model.config.patch_size
    return threads_for(parameter_count(model), n * (height // patch) * (width // patch), requested)


@contextmanager
def torch_threads(n: int | None) -> Iterator[None]:
    """Run the block on ``n`` torch intra-op threads (None: as they are), then restore the count."""
    before = torch.get_num_threads()
    if n is not None:
        torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)
