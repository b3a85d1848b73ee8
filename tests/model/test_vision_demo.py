"""The bundled demo vision model: small, in the official layout, and as accurate as measured when it was trained."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from rwkv_edge.model import VISION_DEMO_CHECKPOINT, VisionRWKV, load_vision_checkpoint
from rwkv_edge.model.sources import open_checkpoint
from rwkv_edge.model.demo.train_vision import (
    CLASSES, HELD_OUT_SEED, SAMPLES, accuracy, batch, bi_wkv_dense, initial_tensors, render,
)
from rwkv_edge.model.synthetic import make_vision_checkpoint
from rwkv_edge.model.vision import bi_wkv

HELD_OUT = 300  # the first 300 of the 2000 held-out images train_vision.py measures
# Measured (train_vision.py, docs/vision.md): 0.9450 on the 2000 held-out images, 0.9533 (286) on these 300.
# The limit leaves 0.05 for other platforms' float arithmetic; the two untrained models below score 0.100
# and 0.127.
MIN_ACCURACY = 0.90


@pytest.fixture(scope="module")
def held_out() -> tuple[np.ndarray, np.ndarray]:
    return batch(HELD_OUT, HELD_OUT_SEED)


def test_the_shipped_checkpoint_is_small_and_official():
    assert VISION_DEMO_CHECKPOINT.stat().st_size < 2e6
    checkpoint = open_checkpoint(VISION_DEMO_CHECKPOINT)
    assert checkpoint.meta["CLASSES"] == list(CLASSES) and "VRWKV" in checkpoint.meta["config"]
    assert all(k.startswith(("backbone.", "head.fc.")) for k in checkpoint.tensors)
    model, _ = load_vision_checkpoint(VISION_DEMO_CHECKPOINT)
    cfg = model.config
    assert (cfg.embed_dims, cfg.depth, cfg.patch_size, cfg.image_size, cfg.num_classes) == (64, 4, 8, 64, len(CLASSES))
    assert cfg.post_norm_from == "meta" and not cfg.post_norm


def test_the_demo_model_is_as_accurate_as_measured(held_out):
    model, _ = load_vision_checkpoint(VISION_DEMO_CHECKPOINT)
    assert accuracy(model, *held_out) >= MIN_ACCURACY


def test_an_untrained_model_fails_the_accuracy_check(held_out):
    for tensors in (initial_tensors(), make_vision_checkpoint(embed_dims=64, depth=4, patch_size=8, grid=8,
                                                              num_classes=len(CLASSES))):
        assert accuracy(VisionRWKV.from_state_dict(tensors), *held_out) < MIN_ACCURACY


def test_training_s_dense_bi_wkv_is_the_paper_s():
    g = torch.Generator().manual_seed(0)
    w, u = torch.randn(16, generator=g) * 0.05, torch.randn(16, generator=g)
    k, v = torch.randn(2, 64, 16, generator=g) * 3, torch.randn(2, 64, 16, generator=g)
    torch.testing.assert_close(bi_wkv_dense(w, u, k, v), bi_wkv(w, u, k, v), rtol=1e-5, atol=1e-5)


def test_rendering_is_seeded_and_labelled_in_turn():
    a, b = batch(12, 5), batch(12, 5)
    np.testing.assert_array_equal(a[0], b[0])
    assert a[0].shape == (12, 3, 64, 64) and a[0].dtype == np.float32
    assert sorted(np.bincount(a[1], minlength=len(CLASSES))[:10].tolist()) == [1] * 8 + [2] * 2
    assert np.asarray(render(CLASSES.index(SAMPLES[0]), np.random.default_rng(0))).shape == (64, 64, 3)
