"""Loading: safe reads, version detection, config inference and one clear error per bad input."""

from __future__ import annotations

import hashlib
import json
import math
import pickle
import re
import subprocess
import sys
import time

import numpy as np
import pytest
import torch

from rwkv_edge.architectures import ARCHITECTURES, detect
from rwkv_edge.errors import CheckpointError, ShapeError, TokenError, UnknownArchitectureError
from rwkv_edge.model import LANGUAGE_ARCHITECTURES, detect_version, load_checkpoint, load_model, model_from_state_dict
from rwkv_edge.model import checkpoint
from rwkv_edge.model.synthetic import VERSIONS, make_checkpoint, make_vision_checkpoint, save_checkpoint


def test_generator_covers_every_registered_architecture():
    assert set(VERSIONS) == set(LANGUAGE_ARCHITECTURES)


@pytest.mark.parametrize("version", LANGUAGE_ARCHITECTURES)
def test_detects_version(version):
    assert detect_version(make_checkpoint(version)) == version


@pytest.mark.parametrize("name", ARCHITECTURES)
def test_one_detector_names_each_architecture(name):
    tensors = make_vision_checkpoint() if ARCHITECTURES[name].family == "image" else make_checkpoint(name)
    assert [a.name for a in ARCHITECTURES.values() if a.detect(tensors)] == [name]
    assert detect(tensors).name == name


def test_image_keys_beside_language_keys_are_an_image_model():
    assert detect({**make_checkpoint("v7"), "patch_embed.projection.weight": torch.zeros(1)}).name == "vrwkv"


@pytest.mark.parametrize("name", ARCHITECTURES)
def test_each_entry_reaches_its_builder_and_config_reader(name):
    cls = ARCHITECTURES[name].model_class()
    assert callable(cls.from_checkpoint) and callable(cls.config_class.from_state_dict)


@pytest.mark.parametrize("version", LANGUAGE_ARCHITECTURES)
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



# -- layer indices: parsed strictly, contiguous from 0, checked before anything is built -------------
@pytest.mark.parametrize("version", LANGUAGE_ARCHITECTURES)
def test_stray_huge_layer_index_fails_fast(version, tmp_path):
    tensors = make_checkpoint(version)
    tensors["blocks.99999999.ln1.weight"] = torch.ones(128)
    path = save_checkpoint(tensors, tmp_path / "stray.pth")
    start = time.perf_counter()
    with pytest.raises(ShapeError, match=r"layer 2 is missing, but key blocks\.99999999\.ln1\.weight names layer 99999999"):
        load_model(path)
    assert time.perf_counter() - start < 2.0


@pytest.mark.parametrize("index", ["x", "-1", "01", " 1", "1e3", ""])
def test_layer_index_must_be_an_integer(index):
    tensors = make_checkpoint("v7")
    tensors[f"blocks.{index}.ln1.weight"] = torch.ones(128)
    with pytest.raises(ShapeError, match=rf"key blocks\.{index}\.ln1\.weight has layer index '{index}', not an integer"):
        model_from_state_dict(tensors)


@pytest.mark.parametrize("version", LANGUAGE_ARCHITECTURES)
def test_layer_gap_names_the_missing_layer(version):
    tensors = {k: v for k, v in make_checkpoint(version, n_layer=3).items() if not k.startswith("blocks.1.")}
    with pytest.raises(ShapeError, match=r"layer 1 is missing, but key blocks\.2\.\S+ names layer 2"):
        model_from_state_dict(tensors)


# -- the shapes a config reads: present, of the right rank, non-empty, heads dividing the width -------
CONFIG_KEYS = {
    "v4": ["emb.weight", "blocks.0.ffn.key.weight"],
    "v5": ["emb.weight", "blocks.0.ffn.key.weight", "blocks.0.att.time_faaaa"],
    "v6": ["emb.weight", "blocks.0.ffn.key.weight", "blocks.0.att.time_faaaa", "blocks.0.att.time_maa_w2",
           "blocks.0.att.time_decay_w1"],
    "v7": ["emb.weight", "blocks.0.ffn.key.weight", "blocks.0.att.r_k", "blocks.0.att.w1", "blocks.0.att.a1",
           "blocks.0.att.g1", "blocks.1.att.v1"],
}


def test_config_keys_cover_every_architecture():
    assert set(CONFIG_KEYS) == set(LANGUAGE_ARCHITECTURES)


@pytest.mark.parametrize("version,key", [(v, k) for v, keys in CONFIG_KEYS.items() for k in keys])
def test_config_names_each_missing_key(version, key):
    tensors = make_checkpoint(version)
    del tensors[key]
    with pytest.raises(ShapeError, match=rf"src: missing {key}; the model's configuration is read from it"):
        LANGUAGE_ARCHITECTURES[version].model_class().config_class.from_state_dict(tensors, "src")


@pytest.mark.parametrize("version,key", [("v6", "blocks.0.att.time_maa_w2"), ("v6", "blocks.0.att.time_decay_w1"),
                                         ("v7", "blocks.0.att.r_k"), ("v7", "blocks.0.att.w1"), ("v7", "blocks.0.att.a1"),
                                         ("v7", "blocks.0.att.g1"), ("v7", "blocks.1.att.v1")])
def test_missing_lora_key_is_a_shape_error(version, key, tmp_path):
    tensors = make_checkpoint(version)
    del tensors[key]
    path = save_checkpoint(tensors, tmp_path / "m.pth")
    with pytest.raises(ShapeError, match=rf"m\.pth: missing {key};"):
        load_model(path)


@pytest.mark.parametrize("version", LANGUAGE_ARCHITECTURES)
@pytest.mark.parametrize("shape", [(256 * 128,), (1, 256, 128)])
def test_emb_of_the_wrong_rank(version, shape):
    tensors = make_checkpoint(version)
    tensors["emb.weight"] = tensors["emb.weight"].reshape(shape)
    with pytest.raises(ShapeError, match=rf"emb\.weight has shape {re.escape(str(shape))} \({len(shape)}-d\), expected a 2-d tensor"):
        model_from_state_dict(tensors)


def test_lora_of_the_wrong_rank():
    tensors = make_checkpoint("v6")
    tensors["blocks.0.att.time_maa_w2"] = tensors["blocks.0.att.time_maa_w2"].flatten(0, 1)
    with pytest.raises(ShapeError, match=r"time_maa_w2 has shape \(160, 128\) \(2-d\), expected a 3-d tensor"):
        model_from_state_dict(tensors)


@pytest.mark.parametrize("version,key,shape", [("v4", "emb.weight", (0, 128)), ("v7", "blocks.0.att.w1", (128, 0)),
                                               ("v6", "blocks.0.att.time_decay_w1", (128, 0))])
def test_zero_sized_dimension(version, key, shape):
    tensors = make_checkpoint(version)
    tensors[key] = torch.zeros(shape)
    with pytest.raises(ShapeError, match=rf"{key} has shape {re.escape(str(shape))}, expected no zero-sized dimension"):
        model_from_state_dict(tensors)


@pytest.mark.parametrize("version,key", [("v5", "blocks.0.att.time_faaaa"), ("v6", "blocks.0.att.time_faaaa"),
                                         ("v7", "blocks.0.att.r_k")])
def test_head_size_must_divide_the_width(version, key):
    tensors = make_checkpoint(version)
    tensors[key] = torch.zeros(3, 50)
    with pytest.raises(ShapeError, match=rf"{key} has shape \(3, 50\): 3 heads x 50 = 150 channels, expected .* n_embd = 128"):
        model_from_state_dict(tensors)


# -- values: floating point and finite -------------------------------------------------------------
@pytest.mark.parametrize("version", LANGUAGE_ARCHITECTURES)
@pytest.mark.parametrize("dtype", [torch.int64, torch.int8, torch.bool, torch.complex64])
def test_non_float_tensors_are_refused(version, dtype, tmp_path):
    tensors = make_checkpoint(version)
    tensors["blocks.1.ln2.weight"] = tensors["blocks.1.ln2.weight"].to(dtype)
    tensors["head.weight"] = tensors["head.weight"].to(dtype)  # later: the first one is named
    path = save_checkpoint(tensors, tmp_path / "m.pth")
    with pytest.raises(CheckpointError, match=rf"m\.pth: tensor blocks\.1\.ln2\.weight has dtype {dtype}; expected floating-point"):
        load_model(path)


@pytest.mark.parametrize("version", LANGUAGE_ARCHITECTURES)
@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf])
def test_non_finite_tensor_is_named(version, value, tmp_path):
    tensors = make_checkpoint(version)
    tensors["blocks.1.ffn.value.weight"][3, 7] = value
    tensors["head.weight"][0, 0] = value  # later: the first one is named
    path = save_checkpoint(tensors, tmp_path / "m.safetensors")
    with pytest.raises(CheckpointError, match=r"m\.safetensors: tensor blocks\.1\.ffn\.value\.weight holds NaN or Inf"):
        load_model(path)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_non_finite_half_precision(dtype):
    tensors = make_checkpoint("v5", dtype=dtype)
    tensors["blocks.0.att.time_decay"][1, 2] = math.inf
    with pytest.raises(CheckpointError, match=r"blocks\.0\.att\.time_decay holds NaN or Inf"):
        model_from_state_dict(tensors)


def test_finite_check_in_slices_sees_every_row(monkeypatch):
    monkeypatch.setattr(checkpoint, "_FINITE_SLICE", 1000)  # emb.weight (256, 128): slices of 7 rows
    tensors = make_checkpoint("v4")
    tensors["emb.weight"][-1, -1] = math.nan
    with pytest.raises(CheckpointError, match=r"emb\.weight holds NaN"):
        model_from_state_dict(tensors)


# -- the file type comes from the content, not the suffix ------------------------------------------
def test_safetensors_named_pth_and_pth_named_safetensors_load(tmp_path):
    tensors = make_checkpoint("v7")
    st = save_checkpoint(tensors, tmp_path / "m.safetensors").rename(tmp_path / "st.pth")
    pth = save_checkpoint(tensors, tmp_path / "m.pth").rename(tmp_path / "pth.safetensors")
    for path in (st, pth):
        model = load_model(path)
        assert torch.equal(model.emb.weight, tensors["emb.weight"]), path


def test_onnx_model_is_named(tmp_path):
    import onnx

    x = onnx.helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1])
    graph = onnx.helper.make_graph([onnx.helper.make_node("Identity", ["x"], ["y"])], "g", [x],
                                   [onnx.helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1])])
    path = tmp_path / "model.pth"
    path.write_bytes(onnx.helper.make_model(graph, producer_name="rwkv-edge").SerializeToString())
    with pytest.raises(CheckpointError, match=r"model\.pth: is an ONNX model, not a checkpoint: .*rwkv-edge compile"):
        load_model(path)


@pytest.mark.parametrize("content,message", [
    (b"just some text\n", r"notes\.pth: is a text file, not a checkpoint \(it starts 'just some text'\)"),
    (b"version https://git-lfs.github.com/spec/v1\noid sha256:ab\n", r"is a Git LFS pointer, not the checkpoint"),
    (b"", r"notes\.pth: is empty \(0 bytes\), not a checkpoint"),
    (b"\x1f\x8b\x08\x00" + bytes(range(256)), r"notes\.pth: unknown format \(first bytes 1f 8b 08 00"),
])
def test_not_a_checkpoint_says_what_it_is(content, message, tmp_path):
    path = tmp_path / "notes.pth"
    path.write_bytes(content)
    with pytest.raises(CheckpointError, match=message):
        load_model(path)


def test_directory(tmp_path):
    with pytest.raises(CheckpointError, match=r"is a directory, not a checkpoint file nor a Hugging Face model folder "
                                              r"\(it has no config\.json\); pass the \.pth"):
        load_model(tmp_path)


def test_artifact_directory(tmp_path):
    (tmp_path / "manifest.json").write_text(json.dumps({"kind": "onnx", "source": {"checkpoint": "/models/m.pth"}}))
    with pytest.raises(CheckpointError, match=r"is a directory, not a checkpoint file: it is an rwkv-edge artifact "
                                              r"directory .* need the \.pth or \.safetensors file \(this one was made from /models/m\.pth\)"):
        load_model(tmp_path)


def test_file_changing_while_read(tmp_path, monkeypatch):
    path = save_checkpoint(make_checkpoint("v4"), tmp_path / "m.pth")
    real_fstat = checkpoint.os.fstat
    monkeypatch.setattr(checkpoint.os, "fstat", lambda fd: type("Stat", (), {"st_size": real_fstat(fd).st_size + 10})())
    with pytest.raises(CheckpointError, match=r"the file changed while it was read \(\d+ bytes read, \d+ expected"):
        load_model(path)


def test_pickled_code_in_a_safetensors_named_file_is_refused_not_run(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.safetensors"
    torch.save({"emb.weight": torch.zeros(2, 2), "payload": _Payload(str(marker))}, path)
    with pytest.raises(CheckpointError, match="refusing to load: the file needs pickled Python code"):
        load_model(path)
    assert not marker.exists()


# -- one private copy: the sha256 of the parsed bytes, and a model that outlives the file ----------
@pytest.mark.parametrize("suffix", [".pth", ".safetensors"])
def test_load_checkpoint_returns_the_sha256_of_the_file(suffix, tmp_path):
    path = save_checkpoint(make_checkpoint("v6"), tmp_path / f"m{suffix}")
    model, sha = load_checkpoint(path)
    assert sha == hashlib.sha256(path.read_bytes()).hexdigest()
    assert model.version == "v6"


@pytest.mark.parametrize("suffix", [".pth", ".safetensors"])
def test_without_memfd_the_copy_is_a_bytesio(suffix, tmp_path, monkeypatch):
    tensors = make_checkpoint("v5")
    path = save_checkpoint(tensors, tmp_path / f"m{suffix}")
    monkeypatch.setattr(checkpoint, "_memfd", lambda: None)
    model, sha = load_checkpoint(path)
    assert sha == hashlib.sha256(path.read_bytes()).hexdigest()
    assert torch.equal(model.head.weight, tensors["head.weight"])


_REWRITE_WHILE_LOADED = """
import sys, torch
from rwkv_edge.model import load_checkpoint
model, _ = load_checkpoint(sys.argv[1])
with open(sys.argv[1], "wb") as f:  # truncate and rewrite the same file in place
    f.write(b"rewritten")
logits, _ = model.step(3, model.init_state())
assert torch.isfinite(logits).all()
"""


@pytest.mark.skipif(sys.platform == "win32", reason="a file open for reading cannot be rewritten on Windows")
@pytest.mark.parametrize("suffix", [".pth", ".safetensors"])
def test_model_survives_its_file_being_rewritten(suffix, tmp_path):
    path = save_checkpoint(make_checkpoint("v7"), tmp_path / f"m{suffix}")
    run = subprocess.run([sys.executable, "-c", _REWRITE_WHILE_LOADED, str(path)], capture_output=True, text=True)
    assert run.returncode == 0, f"exit {run.returncode} (-7 is SIGBUS): {run.stderr[-2000:]}"


# -- token ids: integers only -----------------------------------------------------------------------
@pytest.fixture(scope="module")
def v4_model():
    return model_from_state_dict(make_checkpoint("v4"))


@pytest.mark.parametrize("tokens,named", [
    (1.5, "1.5"), (1.0, "1.0"), (True, "True"), ("7", "'7'"), (np.float32(2.0), "2.0"),
    ([1, 2.5], "2.5"), ([[1], [False]], "False"), (torch.tensor([1.0, 2.0]), "1.0"), (np.array([3.0]), "3.0"),
    (torch.tensor([True]), "True"),
])
def test_non_integer_token_ids_are_refused(v4_model, tokens, named):
    with pytest.raises(TokenError, match=rf"token id {re.escape(named)} \(.*\) is not an integer"):
        v4_model.forward(tokens)
    if not isinstance(tokens, (list, np.ndarray, torch.Tensor)):
        with pytest.raises(TokenError, match="is not an integer"):
            v4_model.step(tokens, v4_model.init_state())


@pytest.mark.parametrize("tokens", [[3, 5], np.array([3, 5], dtype=np.uint8), torch.tensor([3, 5], dtype=torch.int32),
                                    [np.int64(3), torch.tensor(5)]])
def test_integer_token_ids_of_any_kind(v4_model, tokens):
    logits, _ = v4_model.forward(tokens)
    assert torch.equal(logits, v4_model.forward([3, 5])[0])
    state = v4_model.init_state()
    assert torch.equal(v4_model.step(np.int32(3), state)[0], v4_model.step(3, state)[0])


def test_an_mmcv_wrapper_is_unwrapped_and_its_meta_kept(tmp_path):
    tensors = make_checkpoint("v4")
    torch.save({"meta": {"epoch": 3, "config": "x"}, "state_dict": tensors}, tmp_path / "wrapped.pth")
    opened = checkpoint.open_file(tmp_path / "wrapped.pth")
    assert opened.meta == {"epoch": 3, "config": "x"}
    assert opened.tensors.keys() == tensors.keys()
    assert checkpoint.open_file(save_checkpoint(tensors, tmp_path / "plain.pth")).meta == {}
