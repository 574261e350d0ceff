"""Image decoding and preprocessing, shared by training (feature cache) and serving.

Numpy, Pillow and simplejpeg only: the serving side must not import torch, and the Triton
peer of the serving benchmark loads this module in an environment without the project's other
packages. Pillow reads every header (format, size, EXIF); the JPEG family is decoded by
simplejpeg (libjpeg-turbo's scaled decoding), which `ml2p bench decode` measured faster than
Pillow's draft mode, beyond the spread on some images and slower on none.
"""

from __future__ import annotations

import contextlib
import io
import warnings
from dataclasses import dataclass, field
from functools import lru_cache

import numpy as np
import simplejpeg
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
# JPEGs decode at the smallest libjpeg-turbo scale (M/8) whose sides stay at least
# DRAFT_RATIO x the model's input size: 1.0 never upsamples after a reduced decode.
# Chosen by `ml2p bench decode` (paired VOC images/val mAP against full-scale decoding).
DRAFT_RATIO = 1.0
# JPEG colour spaces libjpeg-turbo turns into RGB itself (CMYK and the rest go via Pillow)
_TURBO_MODES = ("RGB", "L")


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


def decode_image(data: bytes, max_pixels: int = 50_000_000, target_size: int = 224,
                 draft_ratio: float = DRAFT_RATIO) -> Image.Image:
    """Decode bytes to an RGB image: header-checked pixel cap, EXIF transpose, first frame.

    JPEGs (MPO: its first picture) are decoded straight to the smallest scale whose sides
    stay at least `draft_ratio` x `target_size` (DCT-domain scaling: large photos are cheap,
    and the resize after it has less to do).
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
                side = max(1, round(draft_ratio * target_size))
                if image.mode in _TURBO_MODES:
                    image = _decode_scaled(data, side, image.info.get("exif"))
                else:
                    image.draft("RGB", (side, side))
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


def _decode_scaled(data: bytes, side: int, exif: bytes | None) -> Image.Image:
    """A JPEG decoded by libjpeg-turbo at the smallest scale keeping both sides >= `side`,
    carrying the file's EXIF block so the shared EXIF transpose below turns it upright."""
    image = Image.fromarray(simplejpeg.decode_jpeg(data, colorspace="RGB", min_width=side,
                                                   min_height=side))
    if exif:
        image.info["exif"] = exif
    return image


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


@lru_cache(maxsize=8)
def _affine(mean: tuple[float, ...], std: tuple[float, ...]) -> tuple[np.ndarray, np.ndarray]:
    """(x / 255 - mean) / std as x * scale + shift, per channel: [3, 1, 1] each."""
    mean_, std_ = np.asarray(mean, np.float64), np.asarray(std, np.float64)
    scale = (1.0 / (255.0 * std_)).astype(np.float32)[:, None, None]
    shift = (-mean_ / std_).astype(np.float32)[:, None, None]
    return scale, shift


def preprocess(image: Image.Image, spec: Preprocessing = Preprocessing()) -> np.ndarray:
    """RGB image -> float32 [3, size, size], normalised."""
    resized = image.resize((spec.size, spec.size), Image.BILINEAR)
    pixels = np.asarray(resized).transpose(2, 0, 1)  # [3, H, W] uint8 view
    scale, shift = _affine(spec.mean, spec.std)
    # one fused pass into the output, no float [H, W, 3] temporaries
    array = np.empty(pixels.shape, np.float32)  # C order, whatever the view's strides
    np.multiply(pixels, scale, out=array)
    array += shift
    return array


def load_and_preprocess(path: str, spec: Preprocessing = Preprocessing()) -> np.ndarray:
    """Read a file from disk and preprocess it (training-side convenience)."""
    with open(path, "rb") as handle:
        return preprocess(decode_image(handle.read(), target_size=spec.size), spec)
