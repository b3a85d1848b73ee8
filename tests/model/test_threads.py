"""Every torch computation of the pipeline runs on the threads chosen for its work (model/threads.py):
one for the steps of small models whatever torch's count was before, the count restored after, a
user's --threads where given."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from rwkv_edge.errors import OptionError
from rwkv_edge.model import load_model
from rwkv_edge.model.threads import SERIAL_MACS, image_threads, threads_for, torch_threads


@pytest.fixture
def two_threads():
    """torch on two intra-op threads for the test (the session runs on one), then as before."""
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(before)


def record_threads(monkeypatch, owner, name: str) -> list[int]:
    """Wrap ``owner.name`` so that each call appends torch's intra-op thread count to the returned list."""
    seen: list[int] = []
    original = getattr(owner, name)

    def wrapped(*args, **kwargs):
        seen.append(torch.get_num_threads())
        return original(*args, **kwargs)

    monkeypatch.setattr(owner, name, wrapped)
    return seen


def test_threads_follow_the_work():
    assert threads_for(100_000_000) == 1  # a step of a 0.1B model
    assert threads_for(SERIAL_MACS - 1) == 1
    assert threads_for(SERIAL_MACS) is None  # torch's default
    assert threads_for(100_000_000, tokens=16) is None  # a 16-token prompt of it
    assert threads_for(100_000_000, requested=3) == 3 and threads_for(SERIAL_MACS, requested=1) == 1


def test_the_count_is_restored_after_the_block_and_after_an_error(two_threads):
    with torch_threads(1):
        assert torch.get_num_threads() == 1
    assert torch.get_num_threads() == 2
    with pytest.raises(ValueError), torch_threads(1):
        raise ValueError("inside")
    assert torch.get_num_threads() == 2
    with torch_threads(None):
        assert torch.get_num_threads() == 2


def test_reference_rollout_steps_on_one_thread(version_ckpt, monkeypatch, two_threads):
    from rwkv_edge.artifact.builder import GREEDY_TOKENS, ROLLOUT_STEPS, build_reference

    model = load_model(version_ckpt("v7"))
    forwards = record_threads(monkeypatch, model, "forward")  # what step() calls too
    build_reference(model, "bytes")
    assert forwards == [1] * (ROLLOUT_STEPS + GREEDY_TOKENS)
    assert torch.get_num_threads() == 2


def test_torch_backend_steps_on_one_thread_or_the_users_count(version_ckpt, monkeypatch, two_threads):
    from rwkv_edge.runtime.torch_backend import TorchBackend

    model = load_model(version_ckpt("v7"))
    seen = record_threads(monkeypatch, model, "forward")
    chosen, given = TorchBackend(model), TorchBackend(model, threads=2)
    for backend in (chosen, given):
        logits, _ = backend.step(1, backend.init_state())
    assert seen == [1, 2] and torch.get_num_threads() == 2
    np.testing.assert_array_equal(chosen.step(1, chosen.init_state())[0], logits)


def test_image_calls_count_every_patch_of_the_batch(vision_ckpt, monkeypatch, two_threads):
    from rwkv_edge.runtime.torch_vision import open_vision_checkpoint

    vision = open_vision_checkpoint(vision_ckpt("plain"))  # 16 px, patch 4: 16 patches an image
    given = open_vision_checkpoint(vision_ckpt("plain"), threads=2)
    patches = 16
    seen = [record_threads(monkeypatch, m.model, "forward") for m in (vision, given)]
    for m in (vision, given):
        m.run(np.zeros((2, 3, 16, 16), np.float32))
    assert seen == [[1], [2]] and torch.get_num_threads() == 2
    assert "1 threads" in vision.runs_on and "2 threads" in given.runs_on
    weights = sum(p.numel() for p in vision.model.parameters())
    batch = SERIAL_MACS // (weights * patches) + 1  # enough images for a call past SERIAL_MACS
    assert image_threads(vision.model, (batch - 1, 3, 16, 16)) == 1
    assert image_threads(vision.model, (batch, 3, 16, 16)) is None
    assert image_threads(vision.model, (batch, 3, 16, 16), requested=1) == 1


def test_threads_reach_only_the_backends_that_take_them(version_ckpt, onnx_export, tvm_bundle):
    from rwkv_edge.runtime.registry import open_backend

    assert open_backend(version_ckpt("v7"), "torch", threads=3).threads == 3
    open_backend(onnx_export("v7"), "onnxruntime", threads=1)
    with pytest.raises(OptionError, match="--threads applies to torch, onnxruntime and native, not tvm"):
        open_backend(tvm_bundle("v7"), "tvm", threads=1)


def test_generate_takes_threads(cli):
    code, out, _ = cli("generate", "--prompt", "def ", "-n", "8", "--temperature", "0", "--threads", "2")
    assert code == 0 and out == cli("generate", "--prompt", "def ", "-n", "8", "--temperature", "0")[1]
    assert cli("generate", "--prompt", "def ", "--threads", "0")[0] == 2
