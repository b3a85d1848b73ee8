"""Image files -> the normalised arrays Vision-RWKV takes: the official VRWKV / mmcls test pipeline.

Pillow and numpy only (no torch), so an install that only runs artifacts can classify. The pipeline
(docs/vision.md, "Preprocessing"): the image as RGB, its shorter side resized to
``image_size * 256 // 224`` with Pillow's bicubic filter (the long side ``int(long * short' / short)``),
a centre crop of ``image_size``, then ``(pixel - IMAGENET_MEAN) / IMAGENET_STD`` per channel.

Bounded work: an image whose longer side is more than MAX_ASPECT_RATIO times its shorter one is one
ImageError, checked on the file's header before any pixel is decoded, so the resized image (the largest
intermediate) holds at most about MAX_ASPECT_RATIO x (image_size * 256 / 224)^2 pixels, and only the
crop becomes float32. The source itself is bounded by Pillow's decompression-bomb limit.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from .arrays import read_npy
from .contract import IMAGENET_MEAN, IMAGENET_STD
from .errors import ImageError

RESIZE_RATIO = (256, 224)  # the shorter side is resized to image_size * 256 // 224, then centre-cropped
# Longer side / shorter side of an image: past 20:1 the centre crop keeps under 5% of it, and resizing the
# shorter side first makes the longer one huge (an 814-byte 1 x 100000 PNG resized to 73 x 7,300,000 px took
# 10 GB and 30 s before this limit). At the CLI's largest --image-size, 1024, the resized image is then at most
# 1170 x 23400 px.
MAX_ASPECT_RATIO = 20
ALPHA_BACKGROUND = (255, 255, 255)  # transparent pixels are composited on white
_ALPHA_MODES = {"RGBA", "LA", "PA", "RGBa", "La"}
_GRAY_MODES = {"1", "L", "I", "I;16", "I;16L", "I;16B", "I;16N", "F"}


@dataclass(frozen=True)
class LoadedImage:
    """One image file, preprocessed."""

    path: Path
    pixels: np.ndarray  # (3, S, S) float32, normalised
    converted: str | None  # what was done to make it RGB ("grayscale (L) -> RGB"), None for an RGB file


def resize_size(image_size: int) -> int:
    """The shorter side before the centre crop: 256 for the official 224 px."""
    return image_size * RESIZE_RATIO[0] // RESIZE_RATIO[1]


def resized_size(width: int, height: int, image_size: int) -> tuple[int, int]:
    """(width, height) after the resize, before the centre crop: the shorter side ``resize_size(image_size)``,
    the longer ``int(long * short' / short)`` (mmcls)."""
    short = resize_size(image_size)
    return (short, int(short * height / width)) if width <= height else (int(short * width / height), short)


def check_proportions(width: int, height: int, name: str | Path = "image") -> None:
    """ImageError, one line naming ``name``, for an image without pixels or whose longer side is more than
    MAX_ASPECT_RATIO times its shorter one."""
    short, long = sorted((width, height))
    if short < 1:
        raise ImageError(f"{name}: {width} x {height} pixels: an image without pixels")
    if long > MAX_ASPECT_RATIO * short:
        raise ImageError(f"{name}: {width} x {height} pixels, an aspect ratio of {long / short:,.1f}:1; rwkv-edge "
                         f"takes images up to {MAX_ASPECT_RATIO}:1 (longer side / shorter side): crop it first")


def to_rgb(image: Image.Image) -> tuple[Image.Image, str | None]:
    """The image in RGB and, unless it already was, a note of the conversion. Grayscale is replicated
    to three channels (16-bit grayscale scaled to 0-255 first), palette images are expanded,
    and images with transparency are composited on ALPHA_BACKGROUND."""
    mode = image.mode
    if mode == "RGB":
        return image, None
    if mode == "P" and "transparency" in image.info:
        image, mode = image.convert("RGBA"), "P"
    if image.mode in _ALPHA_MODES:
        background = Image.new("RGBA", image.size, (*ALPHA_BACKGROUND, 255))
        rgb = Image.alpha_composite(background, image.convert("RGBA")).convert("RGB")
        return rgb, f"{_describe(mode)} -> RGB, transparency composited on white"
    if mode.startswith("I;16"):  # Pillow would clip 16-bit values to 255, not scale them
        values = np.asarray(image, dtype=np.float64)  # (H, W)
        image = Image.fromarray(np.rint(values * 255 / 65535).astype(np.uint8))
    return image.convert("RGB"), f"{_describe(mode)} -> RGB"


def _describe(mode: str) -> str:
    kind = "grayscale" if mode in _GRAY_MODES else "palette" if mode in ("P", "PA") else \
        "grayscale with alpha" if mode in ("LA", "La") else "RGBA" if mode in ("RGBA", "RGBa") else mode
    return f"{kind} ({mode})"


def preprocess(image: Image.Image, image_size: int) -> np.ndarray:
    """An RGB image -> (3, image_size, image_size) float32: shorter side resized (bicubic), centre crop,
    ImageNet mean and std. The crop offset is mmcls's ``round((side - S) / 2)`` (Python's round: 4.5 -> 4).
    ImageError past MAX_ASPECT_RATIO (``check_proportions``)."""
    if image.mode != "RGB":
        raise ImageError(f"preprocess takes an RGB image, got mode {image.mode}; convert it with to_rgb first")
    if image_size < 1:
        raise ImageError(f"image size must be positive, got {image_size}")
    check_proportions(*image.size)
    size = resized_size(*image.size, image_size)
    left, top = round((size[0] - image_size) / 2), round((size[1] - image_size) / 2)
    # The whole image is resized, as mmcls does, and then cropped: resizing only the crop's box is not the same
    # (Pillow rounds the box to float32 and may run its two passes in the other order; docs/vision.md measured
    # up to 25 levels apart). Only the crop becomes float.
    resized = image.resize(size, Image.Resampling.BICUBIC)  # size[0] x size[1] uint8, bounded by MAX_ASPECT_RATIO
    crop = np.asarray(resized.crop((left, top, left + image_size, top + image_size)), dtype=np.float32)  # (S, S, 3)
    normalised = (crop - np.float32(IMAGENET_MEAN)) / np.float32(IMAGENET_STD)
    return np.ascontiguousarray(normalised.transpose(2, 0, 1))  # (3, S, S)


def load_image(path: str | Path, image_size: int) -> LoadedImage:
    """Read a PNG, JPEG or any image Pillow reads (EXIF orientation applied), make it RGB and preprocess
    it. A missing, unreadable, corrupt or non-image file, or one past MAX_ASPECT_RATIO (seen in its header,
    before its pixels are decoded), is one ImageError naming it."""
    path = Path(path)
    if not path.is_file():
        raise ImageError(f"{path}: {'a directory, not an image file' if path.is_dir() else 'no such file'}")
    try:
        with Image.open(path) as opened:
            check_proportions(*opened.size, name=path)
            opened.load()
            image = ImageOps.exif_transpose(opened)
    except UnidentifiedImageError:
        raise ImageError(f"{path}: not an image file Pillow can read (PNG, JPEG, ...)") from None
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as e:
        raise ImageError(f"{path}: corrupt or truncated image ({e})") from None
    rgb, converted = to_rgb(image)
    return LoadedImage(path, preprocess(rgb, image_size), converted)


def load_image_batch(path: str | Path) -> np.ndarray:
    """A .npy batch of already normalised images -> (N, 3, H, W) float32; ImageError for a missing or
    unreadable file, another dtype or rank, a channel count other than 3, no images, a header whose shape
    does not match the file's size (checked before anything is allocated), or non-finite values."""
    path = Path(path)
    if not path.is_file():
        raise ImageError(f"{path}: no such .npy file")
    images = read_npy(path, ImageError, lambda shape, dtype: _check_batch_header(path, shape, dtype))
    if not np.isfinite(images).all():
        raise ImageError(f"{path}: images hold NaN or infinite values")
    return images


def _check_batch_header(path: Path, shape: tuple[int, ...], dtype: np.dtype) -> None:
    """ImageError unless a .npy header describes float32 images (N >= 1, 3, H, W)."""
    if dtype != np.float32:
        raise ImageError(f"{path}: images are {dtype}; expected float32 (N, 3, H, W), already normalised "
                         "(images.astype(numpy.float32))")
    if len(shape) != 4 or shape[1] != 3 or shape[0] == 0:
        raise ImageError(f"{path}: images have shape {shape}; expected (N, 3, H, W) with N >= 1")
