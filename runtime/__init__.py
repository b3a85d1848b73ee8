"""Backends behind the step contract (runtime/registry.py says which runs what), with tracing and
generation on top of them. Importing this package does not import torch: TorchBackend loads it on use."""

from .backend import Backend, NamedState
from .generate import Sampler, generate
from .tracing import Trace, run_trace, save_trace

__all__ = ["Backend", "NamedState", "Sampler", "TorchBackend", "Trace", "generate", "run_trace", "save_trace"]


def __getattr__(name: str):
    if name == "TorchBackend":
        from .torch_backend import TorchBackend

        return TorchBackend
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
