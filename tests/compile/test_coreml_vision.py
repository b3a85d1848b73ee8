"""Core ML packages of Vision-RWKV models: an image input that normalises its pixels itself, verified by
coremltools' evaluation of the ML program (Core ML itself runs on macOS only)."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from rwkv_edge.compile.coreml import CoreMLOptions, compile_vision_coreml
from rwkv_edge.errors import ImageError, OptionError
from rwkv_edge.runtime.vision import open_vision, pixels
from rwkv_edge.verify import verify_artifact

pytestmark = pytest.mark.filterwarnings("ignore")


@pytest.fixture(scope="session")
def vision_package(vision_ckpt, tmp_path_factory):
    """vision_package(name, weights) -> the Core ML package of the VISION_MODELS model ``name``, once per session."""
    done = {}

    def get(name: str, weights: str = "fp16", image_size: int | None = None):
        if (name, weights) not in done:
            out = tmp_path_factory.mktemp(f"vision-coreml-{name}-{weights}")
            compile_vision_coreml(vision_ckpt(name), out, CoreMLOptions(weights=weights, prefill_chunk=0), image_size,
                                  log=lambda _: None)
            done[name, weights] = out
        return done[name, weights]

    return get


@pytest.mark.parametrize("name, weights, size", [("plain", "fp32", None), ("scaled", "fp16", 20), ("plain", "int8", None)])
def test_packages_take_an_rgb_image_and_verify(vision_package, name, weights, size):
    out = vision_package(name, weights, size)
    manifest = json.loads((out / "manifest.json").read_text())
    assert (manifest["kind"], manifest["architecture"], manifest["target"]["form"]) == ("coreml", "vrwkv", "image")
    assert manifest["weights"] == weights and manifest["config"]["class_names"][0] == "class 0"
    report = verify_artifact(out, log=lambda _: None)
    assert report.passed, report.failures
    assert report.top1 and all(report.top1)


def test_the_image_input_subtracts_the_mean_and_the_program_divides_by_the_std(vision_package):
    from rwkv_edge.runtime.coreml_mil import MilProgram

    program = MilProgram(vision_package("plain", "fp32") / "model.mlpackage")
    (image,) = program.spec.description.input
    assert image.type.WhichOneof("Type") == "imageType" and image.type.imageType.colorSpace == 20  # RGB
    first = [op for op in program.program.functions["main"].operations if op.op_type != "const"][:3]
    assert [op.op_type for op in first] == ["add", "mul", "conv"]  # bias -mean (scale 1: no op), 1 / std, patches
    np.testing.assert_allclose(first[0].y.val.ravel(), [-123.675, -116.28, -103.53], rtol=1e-6)
    np.testing.assert_allclose(first[1].y.val.ravel(), 1 / np.array([58.395, 57.12, 57.375]), rtol=1e-6)


def test_int8_weights_are_the_quantizers_blockwise_integers(vision_package):
    from rwkv_edge.runtime.coreml_mil import MilProgram

    program = MilProgram(vision_package("plain", "int8") / "model.mlpackage")
    ops = [op.op_type for op in program.program.functions["main"].operations]
    assert ops.count("constexpr_blockwise_shift_scale") == 2 * 7 + 1  # 7 matrices per block, and the head


def test_a_package_that_computes_something_else_fails_verify(vision_package, tmp_path, rehash):
    """The check can fail: the int8 package of the same model, behind the fp32 package's manifest, misses
    the fp32 limits (it passes its own, above)."""
    out = tmp_path / "swapped"
    shutil.copytree(vision_package("plain", "fp32"), out)
    shutil.rmtree(out / "model.mlpackage")
    shutil.copytree(vision_package("plain", "int8") / "model.mlpackage", out / "model.mlpackage")
    rehash(out)
    report = verify_artifact(out, log=lambda _: None)
    assert not report.passed and "logits" in report.failures[0]


def test_the_runner_turns_normalised_images_back_into_pixels(vision_package):
    runner = open_vision(vision_package("plain", "fp32"))
    reference = runner.artifact.vision_reference()
    restored = pixels(reference.images)
    np.testing.assert_allclose(restored, np.round(restored), atol=2e-3)  # 8-bit levels, as an image file holds
    assert restored.min() >= -1e-3 and restored.max() <= 255 + 1e-3
    with pytest.raises(ImageError, match="16, 16"):
        runner.run(reference.images[:, :, :8, :8])


def test_bad_requests_are_one_line_before_any_work(vision_ckpt, make_ckpt, tmp_path, cli):
    code, _, err = cli("compile", str(vision_ckpt("plain")), "--target", "ios-coreml", "-o", str(tmp_path / "a"),
                       "--stateful")
    assert code == 1 and "no state" in err and len(err.strip().splitlines()) == 1
    code, _, err = cli("compile", str(vision_ckpt("plain")), "--target", "ios-coreml", "-o", str(tmp_path / "b"),
                       "--image-size", "18")
    assert code == 1 and "multiple of the patch size 4" in err and len(err.strip().splitlines()) == 1
    code, _, err = cli("compile", str(vision_ckpt("plain")), "--target", "ios-coreml", "-o", str(tmp_path / "c"),
                       "--prefill-chunk", "8")
    assert code == 1 and "language models" in err
    code, _, err = cli("compile", str(make_ckpt("v7")), "--target", "ios-coreml", "-o", str(tmp_path / "d"),
                       "--image-size", "64")
    assert code == 1 and "image models" in err
    assert not any(tmp_path.iterdir())
    with pytest.raises(OptionError, match="no state"):
        compile_vision_coreml(vision_ckpt("plain"), tmp_path / "e", CoreMLOptions(stateful=True), None)


def test_classify_runs_a_package(vision_package, tmp_path, cli):
    from PIL import Image

    image = tmp_path / "red.png"
    Image.fromarray(np.full((16, 16, 3), (200, 30, 30), np.uint8)).save(image)
    code, out, err = cli("classify", str(vision_package("plain", "fp32")), str(image), "--top", "2")
    assert code == 0, err
    assert out.count("class ") == 2
