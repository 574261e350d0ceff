"""Image decoding and preprocessing, shared by training (feature cache) and serving.

Numpy + Pillow only: the serving side must not import torch, and the Triton peer of the
serving benchmark loads this module in an environment without the project's other packages.
"""

from __future__ import annotations

import contextlib
import io
import warnings
from dataclasses import dataclass, field
from functools import lru_cache

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

# EfficientNet-Lite was trained with TF's (x - 127) / 128 normalisation.
LITE_MEAN = (127.0 / 255.0,) * 3
LITE_STD = (128.0 / 255.0,) * 3


# The formats decoded (the JPEG plugin also opens MPO, the multi-picture JPEG of many
# cameras). Other Pillow plugins never see untrusted bytes: EPS would run Ghostscript on them.
SUPPORTED_FORMATS = ("JPEG", "PNG", "GIF", "WEBP", "BMP", "TIFF")
# Decoded by libjpeg, so they can decode straight to a reduced scale (draft mode): plain JPEG
# and MPO, the multi-picture JPEG many phones and cameras save.
JPEG_FAMILY = ("JPEG", "MPO")


@lru_cache(maxsize=1)
def _open_formats() -> tuple[str, ...]:
    Image.init()  # registers every plugin once; a Pillow built without WebP lacks that one
    return tuple(f for f in SUPPORTED_FORMATS if f in Image.OPEN)


class ImageDecodeError(ValueError):
    """The bytes are not a decodable image; the message names the problem."""


class ImageTooLargeError(ImageDecodeError):
    """The image declares more pixels than allowed (decompression-bomb guard)."""


@dataclass(frozen=True)
class Preprocessing:
    """How an image becomes the model's input tensor; recorded in the artifact manifest."""

    size: int = 224
    resize: str = "squash-bilinear"  # resize both sides to `size`, no crop (as the paper's code)
    mean: tuple[float, float, float] = field(default=LITE_MEAN)
    std: tuple[float, float, float] = field(default=LITE_STD)
    color: str = "RGB"


def decode_image(data: bytes, max_pixels: int = 50_000_000, target_size: int = 224) -> Image.Image:
    """Decode bytes to an RGB image: header-checked pixel cap, EXIF transpose, first frame.

    JPEGs (MPO included) are decoded in draft mode straight to a scale no smaller than twice
    `target_size`, which makes large photos cheap.
    """
    if not data:
        raise ImageDecodeError("image is empty (0 bytes)")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data), formats=_open_formats())
            width, height = image.size
            if width * height > max_pixels:
                raise ImageTooLargeError(
                    f"image is {width}x{height} = {width * height} pixels, "
                    f"over the limit of {max_pixels}"
                )
            if image.format in JPEG_FAMILY:
                image.draft("RGB", (2 * target_size, 2 * target_size))
            # open() leaves multi-frame images (GIF, WebP, APNG, TIFF) on their first frame;
            # asking for n_frames would walk every frame (CPU spent on hostile GIFs).
            image.load()
    except ImageDecodeError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        # Pillow's own guard fires at open() for headers declaring huge sizes.
        raise ImageTooLargeError(f"image is over the limit of {max_pixels} pixels: {exc}") from None
    except UnidentifiedImageError:
        raise ImageDecodeError(
            "bytes are not a supported image (JPEG, PNG, GIF, WebP, BMP, TIFF)"
        ) from None
    except (OSError, SyntaxError, ValueError, EOFError) as exc:
        raise ImageDecodeError(f"image is corrupt or truncated: {exc}") from None
    with contextlib.suppress(Exception):  # a broken EXIF block must not lose the image
        image = ImageOps.exif_transpose(image)
    return to_rgb(image)


def to_rgb(image: Image.Image) -> Image.Image:
    """Convert any Pillow mode (palette, CMYK, 16-bit, alpha) to 8-bit RGB on white."""
    if image.mode == "RGB":
        return image
    if image.mode in ("I;16", "I;16B", "I;16L", "I"):
        # integer maths: float64 temporaries cost 24+ bytes per pixel on max-size images
        array = np.asarray(image)
        if array.max(initial=0) > 255:
            array = np.clip(array, 0, 65535) // 257  # v * 255 / 65535, exactly
        else:
            array = np.clip(array, 0, 255)
        image = Image.fromarray(array.astype(np.uint8), "L")
    if image.mode == "P" and "transparency" in image.info:
        image = image.convert("RGBA")
    if image.mode in ("RGBA", "LA", "PA"):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return image.convert("RGB")


def preprocess(image: Image.Image, spec: Preprocessing = Preprocessing()) -> np.ndarray:
    """RGB image -> float32 [3, size, size], normalised."""
    resized = image.resize((spec.size, spec.size), Image.BILINEAR)
    array = np.asarray(resized, dtype=np.float32) * (1.0 / 255.0)  # [H, W, 3]
    array = (array - np.asarray(spec.mean, np.float32)) / np.asarray(spec.std, np.float32)
    return np.ascontiguousarray(array.transpose(2, 0, 1))


def load_and_preprocess(path: str, spec: Preprocessing = Preprocessing()) -> np.ndarray:
    """Read a file from disk and preprocess it (training-side convenience)."""
    with open(path, "rb") as handle:
        return preprocess(decode_image(handle.read(), target_size=spec.size), spec)
