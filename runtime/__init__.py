"""The step interface over every backend, with tracing and generation on top of it."""

from .backend import Backend, NamedState, TorchBackend
from .generate import Sampler, generate
from .trace import Trace, run_trace, save_trace

__all__ = ["Backend", "NamedState", "Sampler", "TorchBackend", "Trace", "generate", "run_trace", "save_trace"]
