"""Image files -> the normalised arrays Vision-RWKV takes: the official VRWKV / mmcls test pipeline.

Pillow and numpy only (no torch), so an install that only runs artifacts can classify. The pipeline
(docs/vision.md, "Preprocessing"): the image as RGB, its shorter side resized to
``image_size * 256 // 224`` with Pillow's bicubic filter (the long side ``int(long * short' / short)``),
a centre crop of ``image_size``, then ``(pixel - IMAGENET_MEAN) / IMAGENET_STD`` per channel.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from .contract import IMAGENET_MEAN, IMAGENET_STD
from .errors import ImageError

RESIZE_RATIO = (256, 224)  # the shorter side is resized to image_size * 256 // 224, then centre-cropped
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
    ImageNet mean and std. The crop offset is mmcls's ``round((side - S) / 2)`` (Python's round: 4.5 -> 4)."""
    if image.mode != "RGB":
        raise ImageError(f"preprocess takes an RGB image, got mode {image.mode}; convert it with to_rgb first")
    if image_size < 1:
        raise ImageError(f"image size must be positive, got {image_size}")
    w, h = image.size
    short = resize_size(image_size)
    size = (short, int(short * h / w)) if w <= h else (int(short * w / h), short)
    resized = image.resize(size, Image.Resampling.BICUBIC)
    left, top = round((size[0] - image_size) / 2), round((size[1] - image_size) / 2)
    crop = np.asarray(resized, dtype=np.float32)[top:top + image_size, left:left + image_size]  # (S, S, 3)
    normalised = (crop - np.float32(IMAGENET_MEAN)) / np.float32(IMAGENET_STD)
    return np.ascontiguousarray(normalised.transpose(2, 0, 1))  # (3, S, S)


def load_image(path: str | Path, image_size: int) -> LoadedImage:
    """Read a PNG, JPEG or any image Pillow reads (EXIF orientation applied), make it RGB and preprocess
    it. A missing, unreadable, corrupt or non-image file is one ImageError naming it."""
    path = Path(path)
    if not path.is_file():
        raise ImageError(f"{path}: {'a directory, not an image file' if path.is_dir() else 'no such file'}")
    try:
        with Image.open(path) as opened:
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
    unreadable file, another dtype or rank, a channel count other than 3, no images, or non-finite values."""
    path = Path(path)
    if not path.is_file():
        raise ImageError(f"{path}: no such .npy file")
    try:
        images = np.load(path, allow_pickle=False)
    except (ValueError, OSError, EOFError) as e:
        raise ImageError(f"{path}: not a readable .npy array ({e}); save one with numpy.save") from None
    if not isinstance(images, np.ndarray):
        raise ImageError(f"{path}: an .npz archive; give one array (N, 3, H, W) saved with numpy.save")
    if images.dtype != np.float32:
        raise ImageError(f"{path}: images are {images.dtype}; expected float32 (N, 3, H, W), already normalised "
                         "(images.astype(numpy.float32))")
    if images.ndim != 4 or images.shape[1] != 3 or images.shape[0] == 0:
        raise ImageError(f"{path}: images have shape {images.shape}; expected (N, 3, H, W) with N >= 1")
    if not np.isfinite(images).all():
        raise ImageError(f"{path}: images hold NaN or infinite values")
    return images
