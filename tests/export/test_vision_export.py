"""ONNX exports of tiny seeded Vision-RWKV models: onnxruntime against PyTorch, the manifest, the
graph's log-depth scans, and one typed error per bad input."""

from __future__ import annotations

import math
import shutil

import numpy as np
import onnx
import pytest
import torch

from rwkv_edge.artifact import open_artifact
from rwkv_edge.errors import ArtifactError, ImageError, OptionError
from rwkv_edge.export.graph import ImageGraph
from rwkv_edge.export import OnnxOptions, export_onnx
from rwkv_edge.model import VisionRWKV, load_vision_checkpoint
from rwkv_edge.runtime.vision import open_vision
from rwkv_edge.verify import verify_artifact


def quiet(_: str) -> None:
    pass


@pytest.mark.parametrize("name", ["plain", "scaled", "backbone"])
def test_onnxruntime_matches_pytorch_live(name, vision_export, vision_ckpt):
    """Measured max|Δ|/std of the logits (features): plain 1.7e-6, scaled 1.5e-6, backbone 1.1e-6."""
    report = verify_artifact(vision_export(name), against_checkpoint=True, log=quiet)
    assert report.passed, report.summary()
    assert report.worst_scaled < 1e-5
    model, _ = load_vision_checkpoint(vision_ckpt(name))
    runner = open_vision(vision_export(name))
    size, p = runner.image_size, model.config.patch_size
    images = np.random.default_rng(1).standard_normal((3, 3, size, size)).astype(np.float32)
    got = runner.run(images)
    with torch.inference_mode():
        want = model(torch.from_numpy(images)).numpy()  # pos_embed resized on the fly: the export baked it in
    assert got.shape == want.shape == ((3, 10) if name == "plain" else (3, 12) if name == "scaled"
                                       else (3, 24, size // p, size // p))
    assert np.abs(got - want).max() / want.std() < 1e-5


def test_the_manifest_describes_the_image_model(vision_export):
    manifest = open_artifact(vision_export("scaled")).manifest
    assert (manifest.kind, manifest.architecture, manifest.tokenizer, manifest.state) == ("onnx", "vrwkv", "none", [])
    assert list(manifest.graphs) == ["image"] and manifest.graphs["image"].file == "model.onnx"
    config = manifest.config
    assert (config["image_size"], config["trained_image_size"], config["output"]) == (20, 16, "logits")
    assert config["key_norm"] and config["layer_scale"] and config["post_norm"]
    assert config["class_names"] == [f"class {i}" for i in range(12)]
    backbone = open_artifact(vision_export("backbone")).manifest
    assert backbone.config["output"] == "features" and "class_names" not in backbone.config
    assert backbone.batch == "dynamic"


def test_the_bi_wkv_scans_are_log_depth_in_the_graph(vision_export):
    """Each scan is 2 + 2 ceil(log2 T) Pads (a shift per operand per doubling step), two scans per layer,
    plus the Q-shift's 4 per mix (2 mixes per layer): no loop over T unrolled into the graph."""
    for name, T in (("plain", 16), ("scaled", 25)):
        graph = onnx.load(str(vision_export(name) / "model.onnx")).graph
        pads = sum(node.op_type == "Pad" for node in graph.node)
        assert pads == 2 * (2 * (2 + 2 * math.ceil(math.log2(T))) + 8), name
        assert not any(node.op_type in ("Loop", "Scan") for node in graph.node)


def test_fp16_export_meets_the_fp16_limits(vision_export):
    report = verify_artifact(vision_export("plain", "fp16"), log=quiet)
    assert report.passed, report.summary()
    assert report.tolerance.name == "image fp16"
    assert report.worst_scaled > 1e-5  # it does compute in fp16


def test_the_class_names_of_mmpretrain_meta(tmp_path):
    from rwkv_edge.model.synthetic import make_vision_checkpoint

    path = tmp_path / "mmpretrain.pth"
    torch.save({"meta": {"dataset_meta": {"classes": ("cat", "dog", "bird")}},
                "state_dict": make_vision_checkpoint(embed_dims=16, depth=1, grid=2, num_classes=3)}, path)
    manifest = export_onnx(path, tmp_path / "out", log=quiet)
    assert manifest.config["class_names"] == ["cat", "dog", "bird"]


@pytest.mark.parametrize("size, error, message", [
    (18, ImageError, "not a positive multiple of the patch size 4"),
    (2, ImageError, "not a positive multiple of the patch size 4"),
    (0, OptionError, "image size must be positive"),
])
def test_bad_image_sizes_are_one_error(size, error, message, vision_ckpt, tmp_path):
    with pytest.raises(error, match=message):
        export_onnx(vision_ckpt("plain"), tmp_path / "out", OnnxOptions(image_size=size), log=quiet)
    assert not (tmp_path / "out").exists()


def test_other_bad_exports(vision_ckpt, make_ckpt, tmp_path):
    with pytest.raises(OptionError, match="image models export with fp32 or fp16 weights, not int8"):
        export_onnx(vision_ckpt("plain"), tmp_path / "a", OnnxOptions("int8"), log=quiet)
    with pytest.raises(OptionError, match="--image-size applies to image models"):
        export_onnx(make_ckpt("v7"), tmp_path / "b", OnnxOptions(image_size=16), log=quiet)
    model = VisionRWKV.from_state_dict(torch.load(vision_ckpt("plain"))["state_dict"], wkv="kernel")
    with pytest.raises(OptionError, match="kernel-mode Bi-WKV runs in PyTorch only"):
        ImageGraph(model, 16)


@pytest.mark.parametrize("images, message", [
    (np.zeros((1, 3, 12, 16), np.float32), r"shape \(1, 3, 12, 16\); this artifact takes \(N, 3, 16, 16\)"),
    (np.zeros((0, 3, 16, 16), np.float32), "N >= 1"),
    (np.zeros((3, 16, 16), np.float32), "shape"),
    (np.zeros((1, 3, 16, 16), np.float64), "float32 numpy array"),
    ([[0.0]], "float32 numpy array"),
])
def test_wrong_images_are_one_image_error(images, message, vision_export):
    with pytest.raises(ImageError, match=message):
        open_vision(vision_export("plain")).run(images)


@pytest.mark.parametrize("edit, message", [
    (lambda d: d.update(state=[{"layer": 0, "role": "x", "shape": [1], "fill": 0.0}]), "an empty state"),
    (lambda d: d.update(tokenizer="world"), "tokenizer 'none'"),
    (lambda d: d["config"].update(class_names=["a"]), "class_names must be a list of 10 strings"),
    (lambda d: d["config"].update(output="features"), "does not fit 10 classes"),
    (lambda d: d["config"].update(image_size=18), "not a multiple of config.patch_size"),
    (lambda d: d["config"].pop("embed_dims"), "config.embed_dims is missing"),
    (lambda d: d.update(graphs={"step": d["graphs"]["image"]}), "graphs.image is missing"),
    (lambda d: d.update(architecture="vrwkv6"), "unknown architecture 'vrwkv6'"),
])
def test_the_manifest_checker_refuses_a_bad_image_manifest(edit, message, vision_export, rehash, tmp_path):
    copy = shutil.copytree(vision_export("plain"), tmp_path / "copy")
    rehash(copy, edit)
    with pytest.raises(ArtifactError, match=message):
        open_artifact(copy)


def test_the_step_backends_refuse_an_image_artifact(vision_export):
    from rwkv_edge.runtime.registry import backend_of

    with pytest.raises(ArtifactError, match="holds an image model .vrwkv., which has no step contract"):
        backend_of(open_artifact(vision_export("plain")))


def test_the_cli_says_a_bad_image_size_in_one_line(vision_ckpt, cli, tmp_path):
    code, _, err = cli("export", "onnx", str(vision_ckpt("plain")), "-o", str(tmp_path / "out"), "--image-size", "18")
    assert code != 0 and err.strip().splitlines() == [(
        "rwkv-edge: error: image size 18 x 18 is not a positive multiple of the patch size 4; resize or crop to a "
        "multiple (trained at 16 x 16)")]
