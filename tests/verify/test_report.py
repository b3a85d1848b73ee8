"""Parity reports: exact agreement passes, real differences fail and are named, and reports are saved whole."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from rwkv_edge.errors import OptionError
from rwkv_edge.model import model_from_state_dict
from rwkv_edge.model.synthetic import VERSIONS, make_checkpoint
from rwkv_edge.runtime import Sampler, generate
from rwkv_edge.runtime.torch_backend import TorchBackend
from rwkv_edge.verify.report import compare_rollouts, greedy_identity
from rwkv_edge.verify.tolerances import LIMITS

TINY = dict(n_layer=2, n_embd=64, head_size=32)
TOKENS = [int(t) for t in np.random.default_rng(0).integers(0, 256, 32)]


def torch_backend(checkpoint) -> TorchBackend:
    return TorchBackend(model_from_state_dict(checkpoint))


def perturbed(checkpoint, edit) -> TorchBackend:
    """A backend of a copy of ``checkpoint`` changed in place by ``edit(tensors)``."""
    tensors = {k: v.clone() for k, v in checkpoint.items()}
    edit(tensors)
    return torch_backend(tensors)


class Edited:
    """A backend whose step outputs pass through ``edit(step, logits, state) -> (logits, state)``."""

    name = "edited"

    def __init__(self, inner: TorchBackend, edit) -> None:
        self.inner, self.edit, self.vocab_size, self.steps = inner, edit, inner.vocab_size, 0

    def init_state(self):
        return self.inner.init_state()

    def step(self, token, state):
        logits, state = self.inner.step(token, state)
        self.steps += 1
        return self.edit(self.steps - 1, logits, dict(state))


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Tiny models gain nothing from intra-op threads, and on a busy machine they cost several times over."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def checkpoint():
    return make_checkpoint("v7", **TINY)


@pytest.fixture(scope="module")
def reference(checkpoint):
    return torch_backend(checkpoint)


@pytest.mark.parametrize("version", VERSIONS)
def test_the_same_model_passes_with_zero_error_on_every_named_output(version):
    backend = torch_backend(make_checkpoint(version, **TINY))
    report = compare_rollouts(backend, backend, TOKENS[:16], "fp32")
    assert report.passed and report.failures == []
    assert list(report.errors) == ["logits"] + [t.output_name for t in backend.state_spec()]
    for errors in report.errors.values():
        assert errors.max_abs == errors.max_rel == errors.scaled == [0.0] * 16
    assert report.n_steps == 16 and report.top1_agreement == 1.0
    assert report.summary().startswith("PASS")


def test_one_weight_changed_by_1e_2_fails_on_the_logits(checkpoint, reference):
    candidate = perturbed(checkpoint, lambda t: t["head.weight"][0, 0].add_(1e-2))
    report = compare_rollouts(reference, candidate, TOKENS, "fp32")
    assert not report.passed
    assert len(report.failures) == 1 and report.failures[0].startswith("logits: max|Δ|/std ")
    assert report.failures[0].endswith("exceeds 1e-04")
    assert all(max(e.scaled) == 0 for name, e in report.errors.items() if name != "logits")  # head is after the state
    assert report.summary().splitlines()[0].startswith("FAIL")


def test_rounding_level_differences_pass_fp32(checkpoint, reference):
    def jitter(tensors):  # every weight moved by about one fp32 ulp, as another kernel's rounding would
        noise = torch.Generator().manual_seed(1)
        for v in tensors.values():
            v.mul_(1 + 1e-7 * torch.randn(v.shape, generator=noise))

    candidate = perturbed(checkpoint, jitter)
    report = compare_rollouts(reference, candidate, TOKENS, "fp32")
    assert report.passed, report.summary()
    assert max(report.errors["logits"].scaled) > 0  # the weights did change


def test_drifting_state_fails_on_the_state_and_grows_because_each_side_keeps_its_own():
    backend = torch_backend(make_checkpoint("v7", **TINY))
    drift = Edited(backend, lambda step, logits, state: (logits, {k: v + 1e-4 for k, v in state.items()}))
    report = compare_rollouts(backend, drift, TOKENS, "fp32")
    assert not report.passed
    assert any(f.startswith("state_out.0.wkv: max|Δ|/std ") for f in report.failures)
    wkv = report.errors["state_out.1.wkv"].scaled
    assert wkv[-1] > 3 * wkv[0]  # had the reference state been copied over, the error would stay at one step's drift
    assert drift.steps == len(TOKENS)


@pytest.mark.parametrize("edit, message", [
    (lambda state: state.pop("state.1.wkv"), "state_out.1.wkv: missing from the candidate's outputs at step 0"),
    (lambda state: state.update({"state.0.wkv": state["state.0.wkv"].ravel()}),
     "state_out.0.wkv: shape (2048,) in the candidate's outputs at step 0, expected (2, 32, 32)"),
    (lambda state: state.update({"state.0.extra": np.zeros(3, np.float32)}),
     "state_out.0.extra: unexpected in the candidate's outputs at step 0"),
], ids=["missing", "reshaped", "unexpected"])
def test_a_state_off_the_contract_is_a_failure_not_a_crash(reference, tmp_path, edit, message):
    def edited(step, logits, state):
        edit(state)
        return logits, state

    report = compare_rollouts(reference, Edited(reference, edited), TOKENS, "fp32")
    assert report.failures == [message] and report.n_steps == 0
    assert "stopped at step 0" in report.what_ran[0]
    report.save(tmp_path)
    assert report.summary().startswith("FAIL")


def test_a_different_vocabulary_is_a_failure(reference):
    candidate = torch_backend(make_checkpoint("v7", vocab_size=128, **TINY))
    report = compare_rollouts(reference, candidate, TOKENS, "fp32")
    assert report.failures == ["vocab_size: the candidate has 128, expected 256"]


def test_nan_fails_and_is_null_in_json(reference):
    def poison(step, logits, state):
        return (np.full_like(logits, np.nan) if step == 3 else logits), state

    report = compare_rollouts(reference, Edited(reference, poison), TOKENS[:8], "fp32")
    assert "logits: max|Δ|/std nan at step 3 exceeds 1e-04" in report.failures
    assert report.to_json()["outputs"]["logits"]["scaled"][3] is None
    json.dumps(report.to_json(), allow_nan=False)


def test_greedy_identity_of_the_same_model(reference):
    result = greedy_identity(reference, reference, [1, 2, 3], n=32)
    assert result.identical and result.first_divergence is None
    assert result.reference_tokens == result.candidate_tokens and len(result.reference_tokens) == 32
    report = compare_rollouts(reference, reference, TOKENS[:4], "fp32")
    report.add_greedy(result)
    assert report.passed and "identical over 32 tokens" in report.summary()


def test_greedy_identity_reports_the_first_divergence(checkpoint, reference):
    other = torch_backend(make_checkpoint("v7", seed=7, **TINY))
    result = greedy_identity(reference, other, [1, 2, 3], n=32)
    d = result.first_divergence
    assert not result.identical and d is not None
    assert result.reference_tokens[:d] == result.candidate_tokens[:d]
    assert result.reference_tokens[d] != result.candidate_tokens[d]
    for precision, fails in (("fp32", True), ("fp16", False)):  # only fp32 demands identical generation
        report = compare_rollouts(reference, reference, TOKENS[:4], precision)
        report.add_greedy(result)
        assert report.passed is not fails
        assert f"diverges at generated token {d} of 32" in report.summary()


@pytest.mark.parametrize("apart,fails", [(1e-6, False), (1e-2, True)])
def test_greedy_divergence_at_a_tie_within_the_logits_limit_passes(checkpoint, apart, fails):
    """Two head rows equal in the reference (argmax takes the first) and ``apart`` in the candidate: the
    candidate takes the other token where they lead. A logit margin below the fp32 logits limit (1e-4 std) is a
    tie either order of which is right; 1e-2 std is a real difference."""
    prompt = [1, 2, 3]
    first = next(generate(torch_backend(checkpoint), prompt, 1, Sampler(temperature=0.0)))
    other = first + 1  # argmax keeps the lower of two equal logits
    tied = {**checkpoint, "head.weight": checkpoint["head.weight"].clone()}
    tied["head.weight"][other] = tied["head.weight"][first]
    nudged = {**tied, "head.weight": tied["head.weight"].clone()}
    nudged["head.weight"][other] *= 1 + apart
    result = greedy_identity(torch_backend(tied), torch_backend(nudged), prompt, n=8)
    assert result.first_divergence == 0 and result.candidate_tokens[0] == other
    assert apart < result.tie_margin < 10 * apart  # apart times the leading logit over the std
    report = compare_rollouts(torch_backend(tied), torch_backend(tied), TOKENS[:4], "fp32")
    report.add_greedy(result)
    assert report.passed is not fails and "(where the candidate's logits part the two tokens by" in report.summary()


def test_json_round_trips(reference):
    report = compare_rollouts(reference, reference, TOKENS, "fp32")
    data = report.to_json()
    assert json.loads(json.dumps(data, allow_nan=False)) == data
    assert set(data) == {
        "reference", "candidate", "limits", "passed", "failures", "what_ran", "tolerance", "tokens",
        "n_steps", "top1", "outputs", "greedy",
    }
    assert data["passed"] is True and data["n_steps"] == len(TOKENS) and data["tokens"] == TOKENS
    assert list(data["outputs"]) == list(report.errors)
    assert all(len(v) == len(TOKENS) for out in data["outputs"].values() for v in out.values())
    assert data["tolerance"]["logits_scaled"] == LIMITS["fp32"].logits_scaled


def test_save_writes_json_and_png_and_no_temporary_files(checkpoint, reference, tmp_path):
    candidate = perturbed(checkpoint, lambda t: t["emb.weight"][0, 0].add_(1e-2))
    report = compare_rollouts(reference, candidate, TOKENS, "fp16")
    json_path, png_path = report.save(tmp_path / "verify", "ab" * 32)
    assert sorted(p.name for p in (tmp_path / "verify").iterdir()) == ["parity.json", "parity.png"]
    assert (json_path.name, png_path.name) == ("parity.json", "parity.png")
    assert json.loads(json_path.read_text(encoding="utf-8")) == {**report.to_json(), "manifest_sha256": "ab" * 32}
    assert png_path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_unknown_limits_list_the_known_ones(reference):
    with pytest.raises(OptionError, match="unknown limits 'bf16'; expected one of fp32, fp16, "):
        compare_rollouts(reference, reference, TOKENS, "bf16")


