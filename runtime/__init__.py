"""Backends behind the step contract (runtime/registry.py says which runs what), with tracing and
generation on top of them. Importing this package imports nothing else: each name loads its module on
first use, so the CLI reads the registry without numpy, and nothing here imports torch until
TorchBackend is used."""

from __future__ import annotations

import importlib

HOMES = {"Backend": "backend", "NamedState": "backend", "Sampler": "generation", "generate": "generation",
         "Trace": "tracing", "run_trace": "tracing", "save_trace": "tracing", "TorchBackend": "torch_backend"}
__all__ = sorted(HOMES)


def __getattr__(name: str):
    if name not in HOMES:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f".{HOMES[name]}", __name__), name)
