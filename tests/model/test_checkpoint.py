"""Loading: safe reads, version detection, config inference and one clear error per bad input."""

from __future__ import annotations

import pickle

import pytest
import torch

from rwkv_edge.errors import CheckpointError, ShapeError, UnknownArchitectureError
from rwkv_edge.model import ARCHITECTURES, detect_version, load_model, model_from_state_dict
from rwkv_edge.model.synthetic import VERSIONS, make_checkpoint, save_checkpoint


def test_generator_covers_every_registered_architecture():
    assert set(VERSIONS) == set(ARCHITECTURES)


@pytest.mark.parametrize("version", ARCHITECTURES)
def test_detects_version(version):
    assert detect_version(make_checkpoint(version)) == version


@pytest.mark.parametrize("version", ARCHITECTURES)
def test_config_is_inferred_from_shapes(version):
    tensors = make_checkpoint(version, n_layer=3, n_embd=192, vocab_size=300, head_size=64)
    config = model_from_state_dict(tensors).config
    assert (config.n_layer, config.n_embd, config.vocab_size) == (3, 192, 300)
    assert config.ffn_dim == tensors["blocks.0.ffn.key.weight"].shape[0]
    if version != "v4":
        assert (config.n_head, config.head_size) == (3, 64)
    if version == "v6":
        assert (config.mix_lora, config.decay_lora) == (32, 64)
    if version == "v7":
        assert (config.decay_lora, config.iclr_lora, config.value_lora, config.gate_lora) == (32, 32, 16, 64)


@pytest.mark.parametrize("suffix", [".pth", ".safetensors"])
def test_both_file_formats_load_the_same_model(suffix, tmp_path):
    tensors = make_checkpoint("v6")
    model = load_model(save_checkpoint(tensors, tmp_path / f"m{suffix}"))
    for name, value in model.state_dict().items():
        assert torch.equal(value, tensors[name].reshape(value.shape)), name


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_precision_checkpoints_compute_in_fp32(dtype, tmp_path):
    path = save_checkpoint(make_checkpoint("v7", dtype=dtype), tmp_path / "half.pth")
    model = load_model(path)
    assert all(p.dtype == torch.float32 for p in model.parameters())
    upcast = model_from_state_dict({k: v.float() for k, v in make_checkpoint("v7", dtype=dtype).items()})
    assert torch.equal(model.step(3, model.init_state())[0], upcast.step(3, upcast.init_state())[0])


def test_v7_layer0_value_residual_weights_are_optional():
    tensors = make_checkpoint("v7")
    with_unused = model_from_state_dict(tensors)
    without = model_from_state_dict({k: v for k, v in tensors.items() if k not in ("blocks.0.att.v0", "blocks.0.att.v1", "blocks.0.att.v2")})
    assert torch.equal(with_unused.step(5, with_unused.init_state())[0], without.step(5, without.init_state())[0])


def test_time_state_is_the_initial_state():
    tensors = make_checkpoint("v6", time_state=True)
    model = model_from_state_dict(tensors)
    assert torch.equal(model.init_state()[1]["wkv"], tensors["blocks.1.att.time_state"].transpose(-1, -2))


def test_missing_file(tmp_path):
    with pytest.raises(CheckpointError, match="no such checkpoint file"):
        load_model(tmp_path / "absent.pth")


@pytest.mark.parametrize("suffix", [".pth", ".safetensors"])
def test_truncated_file(suffix, tmp_path):
    path = save_checkpoint(make_checkpoint("v4"), tmp_path / f"m{suffix}")
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(CheckpointError, match="truncated or corrupt"):
        load_model(path)


def test_not_a_checkpoint(tmp_path):
    path = tmp_path / "notes.pth"
    path.write_text("just some text\n")
    with pytest.raises(CheckpointError):
        load_model(path)


class _Payload:
    """Unpickling this would create a file: the loader must refuse before that happens."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_pickled_code_is_refused_not_run(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pth"
    torch.save({"emb.weight": torch.zeros(2, 2), "payload": _Payload(str(marker))}, path, pickle_protocol=2)
    with pytest.raises(CheckpointError, match="refusing to load"):
        load_model(path)
    assert not marker.exists()


def test_legacy_pickle_of_non_tensors_is_refused(tmp_path):
    path = tmp_path / "plain.pth"
    path.write_bytes(pickle.dumps({"a": 1}))
    with pytest.raises(CheckpointError):
        load_model(path)


def test_unknown_architecture(tmp_path):
    path = save_checkpoint({"emb.weight": torch.zeros(4, 4), "blocks.0.ffn.key.weight": torch.zeros(8, 4),
                            "blocks.0.att.mystery": torch.zeros(4)}, tmp_path / "odd.pth")
    with pytest.raises(UnknownArchitectureError, match="mystery"):
        load_model(path)


def test_not_rwkv_at_all():
    with pytest.raises(UnknownArchitectureError, match="not an RWKV checkpoint"):
        detect_version({"conv.weight": torch.zeros(1)})


def test_rwkv5_preview_is_named():
    tensors = make_checkpoint("v5")
    for i in range(2):
        tensors[f"blocks.{i}.att.time_first"] = tensors.pop(f"blocks.{i}.att.time_faaaa")
    with pytest.raises(UnknownArchitectureError, match="preview"):
        detect_version(tensors)


def test_misshaped_tensor_is_named():
    tensors = make_checkpoint("v5")
    tensors["blocks.1.att.gate.weight"] = torch.zeros(128, 64)
    with pytest.raises(ShapeError, match=r"blocks\.1\.att\.gate\.weight has shape \(128, 64\), expected \(128, 128\)"):
        model_from_state_dict(tensors)


def test_missing_and_unexpected_tensors_are_named():
    tensors = make_checkpoint("v4")
    del tensors["blocks.1.ffn.value.weight"]
    tensors["blocks.1.att.extra"] = torch.zeros(3)
    with pytest.raises(ShapeError, match=r"missing blocks\.1\.ffn\.value\.weight; unexpected blocks\.1\.att\.extra"):
        model_from_state_dict(tensors)
