"""verify of image artifacts: the report, and a deliberately broken artifact that must fail."""

from __future__ import annotations

import json
import shutil

import numpy as np
import onnx
from onnx import numpy_helper

from rwkv_edge.verify import verify_artifact


def quiet(_: str) -> None:
    pass


def test_verify_writes_the_image_report(vision_export, cli, tmp_path):
    copy = shutil.copytree(vision_export("plain"), tmp_path / "copy")
    code, out, _ = cli("verify", str(copy))
    assert code == 0 and "\nPASS  onnx" in out and "top-5      8/8 images agree" in out
    report = json.loads((copy / "parity.json").read_text())
    assert report["passed"] and report["n_images"] == 8 and report["limits"] == "image fp32"
    assert report["top1"]["agreement"] == 1.0 and len(report["outputs"]["logits"]["scaled"]) == 8


def test_perturbed_weights_fail_verify(vision_export, rehash, tmp_path):
    """One projection scaled by 1.01: far beyond fp32 rounding, small enough to keep most top-1 classes."""
    copy = shutil.copytree(vision_export("plain"), tmp_path / "broken")
    model = onnx.load(str(copy / "model.onnx"))
    weight = next(w for w in model.graph.initializer if len(w.dims) == 2 and w.dims[0] == w.dims[1] == 32)
    weight.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(weight) * np.float32(1.01), weight.name))
    onnx.save(model, str(copy / "model.onnx"))
    rehash(copy)
    report = verify_artifact(copy, log=quiet)
    assert not report.passed and report.exit_code == 1
    assert any("logits: max|Δ|/std" in failure and "exceeds 1e-04" in failure for failure in report.failures)
