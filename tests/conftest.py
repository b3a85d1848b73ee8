"""Shared fixtures: tiny seeded checkpoints of every registered architecture, made in-process."""

from __future__ import annotations

from pathlib import Path

import pytest

from rwkv_edge.model.synthetic import make_checkpoint, save_checkpoint


@pytest.fixture(scope="session")
def checkpoint_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("checkpoints")


@pytest.fixture(scope="session")
def make_ckpt(checkpoint_dir):
    """make_ckpt(version, **kwargs) -> path of a saved random checkpoint (cached per arguments)."""
    cache: dict[tuple, Path] = {}

    def make(version: str, suffix: str = ".pth", **kwargs) -> Path:
        key = (version, suffix, tuple(sorted(kwargs.items())))
        if key not in cache:
            name = "-".join([version] + [f"{k}{v}" for k, v in sorted(kwargs.items())]).replace(".", "_")
            cache[key] = save_checkpoint(make_checkpoint(version, **kwargs), checkpoint_dir / f"{name}{suffix}")
        return cache[key]

    return make
