"""`rwkv-edge classify` and `rwkv-edge trace --images`: output, the model called directly, one-line errors."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from rwkv_edge.images import load_image
from rwkv_edge.model import VISION_DEMO_CHECKPOINT, load_vision_checkpoint
from rwkv_edge.model.demo.train_vision import CLASSES
from rwkv_edge.model.synthetic import make_checkpoint, make_vision_checkpoint, save_checkpoint

DEMO = VISION_DEMO_CHECKPOINT.parent
NAMES = [f"class {i}" for i in range(6)]


@pytest.fixture(scope="module")
def ckpts(tmp_path_factory) -> dict[str, Path]:
    """Tiny seeded checkpoints (32 x 2, patch 4, trained at 16 px): mmcls-wrapped with CLASSES, mmpretrain
    with dataset_meta, bare (no names), a backbone, and a language model."""
    d = tmp_path_factory.mktemp("vision-ckpts")
    tensors = make_vision_checkpoint(num_classes=6, seed=3)
    torch.save({"meta": {"CLASSES": NAMES}, "state_dict": tensors}, d / "mmcls.pth")
    torch.save({"meta": {"dataset_meta": {"classes": NAMES[::-1]}}, "state_dict": tensors}, d / "mmpretrain.pth")
    torch.save({"meta": {"CLASSES": NAMES[:3]}, "state_dict": tensors}, d / "wrong-count.pth")
    save_checkpoint(tensors, d / "bare.safetensors")
    save_checkpoint(make_vision_checkpoint(num_classes=0, seed=3), d / "backbone.pth")
    save_checkpoint(make_checkpoint("v7"), d / "lm.pth")
    return {p.stem: p for p in d.iterdir()}


@pytest.fixture(scope="module")
def pictures(tmp_path_factory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("pictures")
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 256, (20, 30, 3), dtype=np.uint8)).save(d / "rgb.png")
    Image.fromarray(rng.integers(0, 256, (20, 20), dtype=np.uint8)).save(d / "gray.png")
    Image.fromarray(rng.integers(0, 256, (20, 20, 4), dtype=np.uint8), "RGBA").save(d / "rgba.png")
    Image.fromarray(rng.integers(0, 256, (20, 20, 3), dtype=np.uint8)).save(d / "photo.jpg")
    (d / "notes.png").write_text("not a picture")
    return {p.name: p for p in d.iterdir()}


def test_classify_the_demo_samples_with_the_bundled_model(cli):
    samples = sorted(DEMO.glob("sample-*.png"))
    assert len(samples) >= 2
    code, out, _ = cli("classify", *map(str, samples), "--top", "3")
    assert code == 0, out
    blocks = out.split("\n" + str(DEMO))  # one block per image, after the header line
    assert out.startswith(f"classify: {VISION_DEMO_CHECKPOINT} (bundled demo model), 64 px")
    for sample, block in zip(samples, blocks[1:]):
        name = sample.stem.removeprefix("sample-")
        lines = block.strip().splitlines()
        assert lines[0].endswith(sample.name) and len(lines) == 4, block  # no conversion note: RGB files
        assert lines[1].split("%")[1].strip().startswith(name), f"{sample.name} classified as {lines[1]}"


def test_classify_json_names_come_from_the_checkpoint(ckpts, pictures, cli):
    code, out, _ = cli("classify", str(ckpts["mmcls"]), str(pictures["rgb.png"]), str(pictures["photo.jpg"]), "--json")
    assert code == 0
    results = json.loads(out)
    model, _ = load_vision_checkpoint(ckpts["mmcls"])
    images = torch.from_numpy(np.stack([load_image(pictures[n], 16).pixels for n in ("rgb.png", "photo.jpg")]))
    probs = torch.softmax(model(images).double(), -1)  # (2, 6)
    for result, p in zip(results, probs):
        assert [g["index"] for g in result["top"]] == p.argsort(descending=True)[:5].tolist()
        assert [g["name"] for g in result["top"]] == [NAMES[g["index"]] for g in result["top"]]
        np.testing.assert_allclose([g["probability"] for g in result["top"]], p.sort(descending=True).values[:5],
                                   rtol=1e-5)
        assert result["converted"] is None
    top1 = {name: json.loads(cli("classify", str(ckpts[name]), str(pictures["rgb.png"]), "--json")[1])[0]["top"][0]
            for name in ("mmpretrain", "bare", "wrong-count")}
    assert top1["mmpretrain"]["name"] == NAMES[::-1][top1["mmpretrain"]["index"]]
    assert top1["bare"]["name"] == top1["wrong-count"]["name"] == str(top1["bare"]["index"])  # no usable names


def test_classify_says_once_per_image_what_it_converted(ckpts, pictures, cli):
    code, out, _ = cli("classify", str(ckpts["bare"]), *(str(pictures[n]) for n in ("gray.png", "rgba.png", "rgb.png")),
                       "--top", "1")
    assert code == 0
    assert out.count("converted:") == 2
    assert f"{pictures['gray.png']}  (converted: grayscale (L) -> RGB)" in out
    assert f"{pictures['rgba.png']}  (converted: RGBA (RGBA) -> RGB, transparency composited on white)" in out


def test_classify_at_another_image_size(ckpts, pictures, cli):
    code, out, _ = cli("classify", str(ckpts["bare"]), str(pictures["rgb.png"]), "--image-size", "24")
    assert code == 0 and ", 24 px" in out


@pytest.mark.parametrize("model_arg,images,options,message", [
    ("lm", ["rgb.png"], [], 'an RWKV-7 "Goose" (x070) language model; this command takes a Vision-RWKV'),
    ("backbone", ["rgb.png"], [], "a Vision-RWKV backbone without a classification head"),
    ("bare", ["notes.png"], [], "notes.png: not an image file Pillow can read"),
    ("bare", ["rgb.png", "missing.png"], [], "missing.png: no such file"),
    ("bare", [], [], "no images to classify"),
    ("bare", ["rgb.png"], ["--image-size", "18"], "not a positive multiple of the patch size 4"),
])
def test_classify_bad_input_is_one_line(ckpts, pictures, cli, model_arg, images, options, message):
    paths = [str(pictures.get(n, Path(pictures["rgb.png"]).with_name(n))) for n in images]
    code, out, err = cli("classify", str(ckpts[model_arg]), *paths, *options)
    assert code == 1 and out == "" and err.count("\n") == 1 and err.startswith("rwkv-edge: error: ") and message in err, err


@pytest.mark.parametrize("ckpt,size,key,shape", [("mmcls", 16, "logits", (3, 6)), ("bare", 24, "logits", (3, 6)),
                                                ("backbone", 16, "features", (3, 32, 4, 4))])
def test_trace_images_equals_the_model_called_directly(ckpts, tmp_path, cli, ckpt, size, key, shape):
    images = np.random.default_rng(1).standard_normal((3, 3, size, size)).astype(np.float32)
    np.save(tmp_path / "images.npy", images)
    code, out, _ = cli("trace", str(ckpts[ckpt]), "--images", str(tmp_path / "images.npy"), "-o", str(tmp_path / "t.npz"))
    assert code == 0 and f"{key} {shape}" in out
    saved = np.load(tmp_path / "t.npz")
    model, _ = load_vision_checkpoint(ckpts[ckpt])
    with torch.no_grad():
        want = model(torch.from_numpy(images)).numpy()
    assert saved.files == [key] and saved[key].dtype == np.float32
    np.testing.assert_array_equal(saved[key], want)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["images.npy", "t.npz"], "no temporary files left behind"


@pytest.mark.parametrize("array,ckpt,options,message", [
    (np.zeros((2, 3, 16, 16), np.float64), "mmcls", [], "images are float64; expected float32"),
    (np.zeros((3, 16, 16), np.float32), "mmcls", [], "images have shape (3, 16, 16); expected (N, 3, H, W)"),
    (np.zeros((2, 1, 16, 16), np.float32), "mmcls", [], "images have shape (2, 1, 16, 16)"),
    (np.zeros((2, 3, 18, 16), np.float32), "mmcls", [], "image size 18 x 16 is not a positive multiple of the patch size 4"),
    (np.zeros((2, 3, 16, 16), np.float32), "lm", [], "language model; this command takes a Vision-RWKV"),
    (np.zeros((2, 3, 16, 16), np.float32), "mmcls", ["--backend", "onnxruntime"], "--backend onnxruntime contradicts"),
])
def test_trace_images_bad_input_is_one_line(ckpts, tmp_path, cli, array, ckpt, options, message):
    np.save(tmp_path / "images.npy", array)
    code, _, err = cli("trace", str(ckpts[ckpt]), "--images", str(tmp_path / "images.npy"), "-o", str(tmp_path / "t.npz"),
                       *options)
    assert code == 1 and err.count("\n") == 1 and err.startswith("rwkv-edge: error: ") and message in err, err
    assert not (tmp_path / "t.npz").exists()


def test_trace_images_defaults_to_the_demo_model(tmp_path, cli):
    images = np.stack([load_image(p, 64).pixels for p in sorted(DEMO.glob("sample-*.png"))])
    np.save(tmp_path / "samples.npy", images)
    code, out, _ = cli("trace", "--images", str(tmp_path / "samples.npy"), "--out", str(tmp_path / "t.npz"))
    assert code == 0 and f"logits ({len(images)}, 10)" in out
    names = [p.stem.removeprefix("sample-") for p in sorted(DEMO.glob("sample-*.png"))]
    assert [CLASSES[i] for i in np.load(tmp_path / "t.npz")["logits"].argmax(-1)] == names


def test_trace_takes_tokens_or_images_not_both(cli, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    code, _, err = cli("trace", "--tokens", "1", "--images", "x.npy", "-o", "t.npz")
    assert code == 2 and "not allowed with argument" in err
    code, _, err = cli("trace", "-o", "t.npz")
    assert code == 2 and "one of the arguments --tokens --images is required" in err


# -- text from a checkpoint is escaped; images and batches that would take unbounded memory are one line ----
FORGED = {  # class name in the checkpoint -> as classify shows it
    "cat\nFAKE: 99.99% cat": "cat\\nFAKE: 99.99% cat", "\x1b[2K\x1b[1Adog": "\\x1b[2K\\x1b[1Adog",
    "bird\r  99.99%  eagle": "bird\\r  99.99%  eagle", "fish\x9b31m": "fish\\x9b31m", "ok": "ok", "été 猫": "été 猫",
}


def test_classify_escapes_class_names_from_the_checkpoint(tmp_path, pictures, cli):
    names = list(FORGED)
    torch.save({"meta": {"CLASSES": names}, "state_dict": make_vision_checkpoint(num_classes=6, seed=3)},
               tmp_path / "forged.pth")
    code, out, _ = cli("classify", str(tmp_path / "forged.pth"), str(pictures["rgb.png"]), "--top", "6")
    lines = out.split("\n")[:-1]
    assert code == 0 and len(lines) == 8, out  # the header, the image, one line per class
    assert not any(c in out for c in "\x1b\r\x9b") and not any(line.startswith("FAKE") for line in lines)
    for index, name in enumerate(names):
        assert sum(line.endswith(f"%  {FORGED[name]}  [{index}]") for line in lines) == 1, (name, out)
    code, out, _ = cli("classify", str(tmp_path / "forged.pth"), str(pictures["rgb.png"]), "--top", "6", "--json")
    assert code == 0 and sorted(g["name"] for g in json.loads(out)[0]["top"]) == sorted(names)  # JSON escapes itself


def test_an_error_quoting_a_checkpoint_s_keys_stays_one_line(tmp_path, cli):
    torch.save({"backbone.x\n\x1b[2Krwkv-edge: all good": torch.zeros(1)}, tmp_path / "keys.pth")
    code, out, err = cli("info", str(tmp_path / "keys.pth"))
    assert code == 1 and out == "" and err.count("\n") == 1 and "\x1b" not in err, err
    assert "not a Vision-RWKV checkpoint (keys backbone.x\\n\\x1b[2Krwkv-edge: all good)" in err


def test_trace_refuses_a_header_claiming_terabytes_in_one_line(tmp_path, cli):
    path = tmp_path / "batch.npy"
    with open(path, "wb") as f:  # 193 bytes; numpy.load tried to allocate 18.3 TiB for them
        np.lib.format.write_array_header_1_0(f, {"descr": "<f4", "fortran_order": False, "shape": (100000, 3, 4096, 4096)})
        f.write(b"\0" * 65)
    code, out, err = cli("trace", "--images", str(path), "-o", str(tmp_path / "t.npz"))
    assert code == 1 and out == "" and err.count("\n") == 1 and "its header says float32 (100000, 3, 4096, 4096)" in err
    assert not (tmp_path / "t.npz").exists()


LIMITED_CLI = """
import resource, sys
import torch
from rwkv_edge.cli.main import main
from rwkv_edge.runtime import classify, torch_vision
vm = next(int(line.split()[1]) for line in open("/proc/self/status") if line.startswith("VmSize:")) * 1024
resource.setrlimit(resource.RLIMIT_AS, (vm + (1 << 30), resource.getrlimit(resource.RLIMIT_AS)[1]))
sys.exit(main(sys.argv[1:]))
"""


@pytest.mark.skipif(not Path("/proc/self/status").is_file(), reason="reads the address space size from /proc")
def test_classify_refuses_a_thin_image_in_one_line_and_bounded_memory(tmp_path):
    """`classify thin.png` (814 bytes, 1 x 100000 px) on the demo model took 10.2 GB and 30 s, and 1 x 1,000,000
    a MemoryError traceback; run here with 1 GB of address space beyond the imports."""
    for height in (100_000, 1_000_000):
        Image.new("RGB", (1, height), (0, 90, 200)).save(tmp_path / "thin.png")
        done = subprocess.run([sys.executable, "-c", LIMITED_CLI, "classify", str(tmp_path / "thin.png")],
                              capture_output=True, text=True, timeout=120)
        assert done.returncode == 1 and done.stdout == "" and done.stderr.count("\n") == 1, done.stderr[-3000:]
        assert done.stderr.startswith(f"rwkv-edge: error: {tmp_path / 'thin.png'}: 1 x {height} pixels, an aspect ratio")
