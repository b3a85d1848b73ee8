"""Image preprocessing (images.py) against crops derived by hand and against resizing the whole image, the RGB
conversions, the aspect-ratio limit (in bounded memory), bad files, and .npy headers checked before reading."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import rwkv_edge.images as pipeline
from rwkv_edge.errors import ImageError
from rwkv_edge.images import (
    IMAGENET_MEAN, IMAGENET_STD, load_image, load_image_batch, preprocess, resize_size, to_rgb,
)

MEAN, STD = np.array(IMAGENET_MEAN), np.array(IMAGENET_STD)


def normalised(rgb) -> np.ndarray:
    """A pixel (R, G, B) as the model sees it.  -> (3,)"""
    return (np.asarray(rgb, dtype=np.float64) - MEAN) / STD


def test_resize_sizes_are_the_official_ratio():
    assert resize_size(224) == 256 and resize_size(64) == 73 and resize_size(7) == 8


def test_no_resize_needed_is_a_plain_centre_crop():
    # S = 7: the shorter side goes to 8, which a 16 x 8 image already has, so Pillow keeps every pixel;
    # the crop is then rows 0..6 and columns round(4.5) = 4 (mmcls rounds as Python does) .. 10
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 256, (8, 16, 3), dtype=np.uint8)  # (H, W, RGB)
    got = preprocess(Image.fromarray(pixels), 7)
    want = (pixels[0:7, 4:11].astype(np.float64) - MEAN) / STD  # (7, 7, 3)
    assert got.shape == (3, 7, 7) and got.dtype == np.float32
    np.testing.assert_allclose(got, want.transpose(2, 0, 1), rtol=0, atol=1e-6)


def test_a_downscaled_edge_lands_where_the_arithmetic_says():
    # a 40 x 20 image, left half black, right half red; S = 7: resized to 16 x 8 (scale 2.5), the edge at
    # column 8; the crop keeps columns 4..10. Bicubic reaches 2 input pixels per output pixel (5 input
    # pixels here) to each side, so crop columns 0-1 (resized 4-5) are pure black and column 6 (10) pure red.
    pixels = np.zeros((20, 40, 3), dtype=np.uint8)
    pixels[:, 20:, 0] = 255
    got = preprocess(Image.fromarray(pixels), 7)  # (3, 7, 7)
    for column, rgb in ((0, (0, 0, 0)), (1, (0, 0, 0)), (6, (255, 0, 0))):
        np.testing.assert_allclose(got[:, :, column], np.broadcast_to(normalised(rgb)[:, None], (3, 7)), atol=1e-6)
    assert not np.allclose(got[:, :, 3], got[:, :, 0]), "the edge falls inside the crop"


def test_portrait_images_resize_by_their_width():
    image = Image.new("RGB", (30, 45), (10, 200, 30))  # width 30 is the shorter side
    got = preprocess(image, 14)  # resized to 16 x 24, cropped to 14 x 14
    np.testing.assert_allclose(got, np.broadcast_to(normalised((10, 200, 30))[:, None, None], (3, 14, 14)), atol=1e-6)


@pytest.mark.parametrize("mode,pixel,note", [
    ("L", 100, "grayscale (L) -> RGB"),
    ("1", 1, "grayscale (1) -> RGB"),
    ("I;16", 65535, "grayscale (I;16) -> RGB"),
])
def test_grayscale_becomes_three_equal_channels(mode, pixel, note):
    rgb, converted = to_rgb(Image.new(mode, (4, 4), pixel))
    want = {"L": 100, "1": 255, "I;16": 255}[mode]
    assert rgb.mode == "RGB" and converted == note
    assert (np.asarray(rgb) == want).all()


def test_palette_and_rgb_images():
    palette = Image.new("RGB", (4, 4), (51, 102, 153)).convert("P")  # a colour of the web palette
    rgb, converted = to_rgb(palette)
    assert converted == "palette (P) -> RGB" and np.asarray(rgb)[0, 0].tolist() == [51, 102, 153]
    image = Image.new("RGB", (4, 4), (1, 2, 3))
    assert to_rgb(image) == (image, None)


def test_transparency_is_composited_on_white():
    rgba = np.zeros((1, 3, 4), dtype=np.uint8)
    rgba[0, 0] = (255, 0, 0, 0)  # fully transparent red: white
    rgba[0, 1] = (0, 0, 255, 255)  # opaque blue stays blue
    rgba[0, 2] = (0, 0, 0, 128)  # half-transparent black: half white
    rgb, converted = to_rgb(Image.fromarray(rgba, "RGBA"))
    got = np.asarray(rgb)[0].astype(int)
    assert converted == "RGBA (RGBA) -> RGB, transparency composited on white"
    assert got[0].tolist() == [255, 255, 255] and got[1].tolist() == [0, 0, 255]
    assert np.abs(got[2] - 127).max() <= 1
    la, converted = to_rgb(Image.new("LA", (2, 2), (0, 0)))
    assert converted.startswith("grayscale with alpha (LA)") and (np.asarray(la) == 255).all()
    p = Image.new("P", (2, 2), 0)
    p.info["transparency"] = 0
    assert to_rgb(p)[1] == "palette (P) -> RGB, transparency composited on white"


def test_load_image_reads_files_and_says_what_it_converted(tmp_path):
    Image.new("L", (10, 10), 50).save(tmp_path / "gray.png")
    Image.new("RGB", (10, 10), (9, 8, 7)).save(tmp_path / "rgb.jpg", quality=100)
    gray = load_image(tmp_path / "gray.png", 8)
    assert gray.converted == "grayscale (L) -> RGB" and gray.pixels.shape == (3, 8, 8)
    np.testing.assert_allclose(gray.pixels[:, 0, 0], normalised((50, 50, 50)), atol=1e-6)
    assert load_image(tmp_path / "rgb.jpg", 8).converted is None


def _truncated_png(path):
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(path)
    path.write_bytes(path.read_bytes()[:300])


@pytest.mark.parametrize("make,message", [
    (lambda p: None, "no such file"),
    (lambda p: p.mkdir(), "a directory, not an image file"),
    (lambda p: p.write_text("not an image"), "not an image file Pillow can read"),
    (lambda p: p.write_bytes(b""), "not an image file Pillow can read"),
    (_truncated_png, "corrupt or truncated image"),
])
def test_bad_image_files_are_one_image_error_naming_the_file(tmp_path, make, message):
    path = tmp_path / "picture.png"
    make(path)
    with pytest.raises(ImageError, match=message) as error:
        load_image(path, 8)
    assert str(error.value).startswith(str(path)) and "\n" not in str(error.value)


def test_image_batches(tmp_path):
    good = np.random.default_rng(0).standard_normal((2, 3, 8, 8)).astype(np.float32)
    np.save(tmp_path / "good.npy", good)
    np.testing.assert_array_equal(load_image_batch(tmp_path / "good.npy"), good)


@pytest.mark.parametrize("array,message", [
    (np.zeros((2, 3, 8, 8), np.float64), "images are float64; expected float32"),
    (np.zeros((2, 3, 8, 8), np.uint8), "images are uint8; expected float32"),
    (np.zeros((3, 8, 8), np.float32), r"shape \(3, 8, 8\); expected \(N, 3, H, W\)"),
    (np.zeros((2, 1, 8, 8), np.float32), r"shape \(2, 1, 8, 8\)"),
    (np.zeros((0, 3, 8, 8), np.float32), "with N >= 1"),
    (np.full((1, 3, 8, 8), np.nan, np.float32), "NaN or infinite"),
    (np.array([{"a": 1}], dtype=object), "not a readable .npy array"),
])
def test_bad_image_batches_are_one_image_error(tmp_path, array, message):
    np.save(tmp_path / "bad.npy", array, allow_pickle=True)
    with pytest.raises(ImageError, match=message):
        load_image_batch(tmp_path / "bad.npy")


def test_missing_and_non_npy_batches(tmp_path):
    with pytest.raises(ImageError, match="no such .npy file"):
        load_image_batch(tmp_path / "missing.npy")
    (tmp_path / "text.npy").write_text("hello")
    with pytest.raises(ImageError, match="not a readable .npy array"):
        load_image_batch(tmp_path / "text.npy")
    np.savez(tmp_path / "two.npz", a=np.zeros(1), b=np.zeros(1))
    with pytest.raises(ImageError, match="an .npz archive"):
        load_image_batch(tmp_path / "two.npz")


# -- bounded work: the resize is the whole image's (bit for bit as before), proportions are limited --------
def resize_then_crop(image: Image.Image, size: int) -> np.ndarray:
    """The pipeline as it was first written: the whole image resized, made float, then cropped.  -> (3, S, S)"""
    w, h = image.size
    short = resize_size(size)
    shape = (short, int(short * h / w)) if w <= h else (int(short * w / h), short)
    resized = image.resize(shape, Image.Resampling.BICUBIC)
    left, top = round((shape[0] - size) / 2), round((shape[1] - size) / 2)
    crop = np.asarray(resized, dtype=np.float32)[top:top + size, left:left + size]
    return ((crop - np.float32(IMAGENET_MEAN)) / np.float32(IMAGENET_STD)).transpose(2, 0, 1)


@pytest.mark.parametrize("width,height,size", [
    (640, 480, 224), (480, 640, 224), (333, 1000, 64), (1000, 50, 64), (50, 1000, 24), (17, 340, 16),
    (2000, 1500, 384), (100, 99, 224), (64, 64, 64), (9, 7, 7), (73, 500, 64), (4000, 210, 32),
])
def test_preprocess_equals_resizing_the_whole_image_then_cropping(width, height, size):
    # noise is the worst case for a resampling that differs: every pixel differs from its neighbours
    pixels = np.random.default_rng(width * height + size).integers(0, 256, (height, width, 3), dtype=np.uint8)
    image = Image.fromarray(pixels)
    np.testing.assert_array_equal(preprocess(image, size), resize_then_crop(image, size))


@pytest.mark.parametrize("size", [(20, 400), (400, 20), (1, 20), (3, 60)])
def test_images_up_to_the_aspect_ratio_limit_are_preprocessed(size):
    assert pipeline.MAX_ASPECT_RATIO == 20
    got = preprocess(Image.new("RGB", size, (10, 200, 30)), 16)
    want = np.broadcast_to(normalised((10, 200, 30))[:, None, None], (3, 16, 16))
    np.testing.assert_allclose(got, want, atol=1e-6)  # float32 vs float64 rounding of (x - mean) / std, as above


@pytest.mark.parametrize("size,message", [
    ((1, 21), r"1 x 21 pixels, an aspect ratio of 21\.0:1; rwkv-edge takes images up to 20:1"),
    ((401, 20), r"401 x 20 pixels, an aspect ratio of 20\.1:1"),
    ((0, 5), "0 x 5 pixels: an image without pixels"),
])
def test_images_past_the_aspect_ratio_limit_are_one_image_error(tmp_path, size, message):
    with pytest.raises(ImageError, match=message):
        preprocess(Image.new("RGB", size), 16)
    if size[0]:
        Image.new("RGB", size).save(tmp_path / "thin.png")
        with pytest.raises(ImageError, match=message) as error:
            load_image(tmp_path / "thin.png", 16)
        assert str(error.value).startswith(str(tmp_path / "thin.png")) and "\n" not in str(error.value)


LIMITED = """
import resource, sys
from PIL import Image
from rwkv_edge.errors import ImageError
from rwkv_edge.images import load_image, preprocess
vm = next(int(line.split()[1]) for line in open("/proc/self/status") if line.startswith("VmSize:")) * 1024
resource.setrlimit(resource.RLIMIT_AS, (vm + {headroom}, resource.getrlimit(resource.RLIMIT_AS)[1]))
try:
    {call}
except ImageError as e:
    print(e)
    sys.exit(0)
sys.exit("no ImageError")
"""


@pytest.mark.skipif(not Path("/proc/self/status").is_file(), reason="reads the address space size from /proc")
@pytest.mark.parametrize("size", [(1, 100_000), (1, 1_000_000), (100_000, 1)])
def test_a_thin_image_is_refused_in_bounded_memory(tmp_path, size):
    """An 814-byte 1 x 100000 PNG once took 10 GB and 30 s (its shorter side resized first made it 73 x 7.3
    million pixels, all converted to float32); 1 x 1,000,000 ended in a MemoryError. Now the header is enough:
    256 MB of address space more than the imports is plenty."""
    path = tmp_path / "thin.png"
    Image.new("RGB", size, (200, 10, 10)).save(path)
    for call in (f"load_image({str(path)!r}, 64)", f"preprocess(Image.new('RGB', {size}), 64)"):
        done = subprocess.run([sys.executable, "-c", LIMITED.format(headroom=256 << 20, call=call)],
                              capture_output=True, text=True, timeout=60)
        assert done.returncode == 0, done.stderr[-2000:]
        assert f"{size[0]} x {size[1]} pixels, an aspect ratio of 100,000.0:1" in done.stdout \
            or f"{size[0]} x {size[1]} pixels, an aspect ratio of 1,000,000.0:1" in done.stdout, done.stdout


# -- .npy batches: the header is checked against the file's size before anything is allocated -------------
def write_npy_header(path: Path, shape: tuple[int, ...], data: bytes = b"", version: tuple[int, int] = (1, 0),
                     descr: str = "<f4") -> Path:
    """A .npy file whose header claims ``shape``, followed by ``data`` (a crafted or truncated file)."""
    fmt = np.lib.format
    write = {(1, 0): fmt.write_array_header_1_0, (2, 0): fmt.write_array_header_2_0}.get(version)
    with open(path, "wb") as f:
        if write:  # the magic string, then the header
            write(f, {"descr": descr, "fortran_order": False, "shape": shape})
        else:
            f.write(fmt.magic(*version))
        f.write(data)
    return path


def test_a_header_claiming_terabytes_is_refused_before_anything_is_allocated(tmp_path):
    path = write_npy_header(tmp_path / "batch.npy", (100000, 3, 4096, 4096), b"\0" * 65)
    assert path.stat().st_size == 193  # numpy.load tried to allocate 18.3 TiB for it
    with pytest.raises(ImageError, match=r"its header says float32 \(100000, 3, 4096, 4096\), 20,132,659,200,000 "
                                         r"bytes, but 65 bytes follow it: a truncated or corrupt \.npy file"):
        load_image_batch(path)


@pytest.mark.parametrize("edit,follow", [(lambda b: b[:-10], "1,526"), (lambda b: b + b"x", "1,537")])
def test_a_batch_whose_size_does_not_match_its_header_is_refused(tmp_path, edit, follow):
    path = tmp_path / "batch.npy"
    np.save(path, np.zeros((2, 3, 8, 8), np.float32))  # 1,536 bytes of data
    path.write_bytes(edit(path.read_bytes()))
    with pytest.raises(ImageError, match=f"its header says float32 \\(2, 3, 8, 8\\), 1,536 bytes, but {follow} bytes"):
        load_image_batch(path)


def test_fortran_order_and_version_2_batches_load(tmp_path):
    images = np.random.default_rng(2).standard_normal((2, 3, 4, 5)).astype(np.float32)
    np.save(tmp_path / "fortran.npy", np.asfortranarray(images))
    with open(tmp_path / "v2.npy", "wb") as f:
        np.lib.format.write_array(f, images, version=(2, 0))
    for name in ("fortran.npy", "v2.npy"):
        got = load_image_batch(tmp_path / name)
        np.testing.assert_array_equal(got, images)
        assert got.flags.c_contiguous


@pytest.mark.parametrize("version,data,message", [
    ((3, 0), b"", r"not a readable \.npy array \(\.npy format version 3\.0, not 1\.0 or 2\.0\)"),
    ((1, 0), b"", r"images have shape \(2, 4, 8, 8\)"),  # the header is judged before the size
])
def test_other_headers_are_one_image_error(tmp_path, version, data, message):
    path = write_npy_header(tmp_path / "batch.npy", (2, 4, 8, 8), data, version)
    with pytest.raises(ImageError, match=message):
        load_image_batch(path)
