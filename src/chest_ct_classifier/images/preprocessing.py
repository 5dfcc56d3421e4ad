"""Image bytes to model input: the one preprocessing path for training, evaluation and serving.

The same bytes give the same tensor wherever they enter: the training pipeline calls
:func:`preprocess_image_bytes`; batch inference, the registered model and the web app call
:func:`prepare_image`, which gives the same tensor and, from the same decoded pixels, what the
input checks say about it.
"""

from __future__ import annotations

import base64
import binascii
import io
import struct
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from chest_ct_classifier.images.plausibility import implausibility

# Caffe-style VGG16 scaling, as keras.applications.vgg16.preprocess_input: RGB -> BGR, then
# subtract the ImageNet channel means. Written out so that serving does not import Keras for it.
_VGG16_BGR_MEAN = np.array([103.939, 116.779, 123.68], dtype=np.float32)


READABLE_FORMATS = ("PNG", "JPEG", "BMP", "TIFF", "GIF", "WEBP")
"""Raster formats only: PIL's other plugins include EPS, which runs Ghostscript on the file."""


class UnreadableImageError(ValueError):
    """The bytes are not an image this project can read (corrupt, truncated, wrong type)."""


class ImageTooLargeError(UnreadableImageError):
    """The image has more pixels than allowed (a decompression bomb, or simply too big)."""


def bytes_from_base64(text: str) -> bytes:
    """File bytes from base64 text, as JSON clients send images; line breaks and a
    ``data:<type>;base64,`` prefix are allowed.

    Raises:
        UnreadableImageError: the text is not valid base64.
    """
    if text.startswith("data:") and "," in text:
        text = text.split(",", 1)[1]
    try:
        return base64.b64decode("".join(text.split()), validate=True)
    except (binascii.Error, ValueError, TypeError) as exc:
        raise UnreadableImageError(f"not valid base64: {exc}") from exc


def decode_image(data: bytes, max_pixels: int | None = None) -> Image.Image:
    """Decode image bytes of any common format and mode into an 8-bit RGB image.

    The format is detected from the content, not a file name, so a JPEG named ``.png`` reads.
    RGBA is composited on black (the CT background); greyscale is replicated to three channels;
    16-bit and float greyscale are rescaled to 0-255 by their own range.

    Raises:
        UnreadableImageError: the bytes are not a readable image.
        ImageTooLargeError: width x height exceeds ``max_pixels`` (checked from the header,
            before any pixel is decoded).
    """
    if not data:
        raise UnreadableImageError("empty file")
    try:
        image = Image.open(io.BytesIO(data), formats=READABLE_FORMATS)
        width, height = image.size
        if max_pixels is not None and width * height > max_pixels:
            raise ImageTooLargeError(
                f"the image is {width} x {height} pixels, more than the {max_pixels:,} allowed"
            )
        image.load()
        # EXIF orientation and mode conversion read more of the file: broken metadata or
        # palettes fail here, and must fail like any unreadable image.
        return _to_rgb(ImageOps.exif_transpose(image))
    except UnreadableImageError:
        raise
    except Image.DecompressionBombError as exc:
        raise ImageTooLargeError(str(exc)) from exc
    except UnidentifiedImageError as exc:
        # PIL's message names an in-memory object's address: nothing a reader can use.
        raise UnreadableImageError("not a readable image: unknown or unsupported format") from exc
    except (OSError, SyntaxError, ValueError, struct.error) as exc:
        raise UnreadableImageError(f"not a readable image: {exc}") from exc


def _to_rgb(image: Image.Image) -> Image.Image:
    if image.mode in ("I", "I;16", "I;16B", "I;16L", "F"):
        pixels = np.asarray(image, dtype=np.float32)
        low, high = float(pixels.min()), float(pixels.max())
        scaled = (pixels - low) / (high - low) * 255.0 if high > low else np.zeros_like(pixels)
        image = Image.fromarray(scaled.round().astype(np.uint8), mode="L")
    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (0, 0, 0, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return image.convert("RGB")


def image_to_array(image: Image.Image, image_size: int) -> np.ndarray:
    """Fit an RGB image into ``image_size`` x ``image_size``, keeping its aspect ratio
    (bilinear), centred on black, the CT background; uint8 (H, W, 3).

    Stretching to a square would distort anatomy by an amount that depends on the picture's
    source: in the public dataset the classes come from sources with different aspect ratios
    (docs/data-quality.md), so a stretched image would teach the source's shape, not the
    anatomy. The black bars still show the aspect ratio; training's ``stretch`` augmentation
    blurs that cue.
    """
    width, height = image.size
    scale = image_size / max(width, height)
    fitted = (max(1, round(width * scale)), max(1, round(height * scale)))
    canvas = Image.new("RGB", (image_size, image_size))
    canvas.paste(
        image.resize(fitted, Image.Resampling.BILINEAR),
        ((image_size - fitted[0]) // 2, (image_size - fitted[1]) // 2),
    )
    return np.asarray(canvas, dtype=np.uint8)


def scale_for_vgg16(rgb: np.ndarray) -> np.ndarray:
    """VGG16 input scaling of uint8 RGB (..., 3): float32 BGR with the ImageNet means removed."""
    return rgb[..., ::-1].astype(np.float32) - _VGG16_BGR_MEAN


def fitted_rgb(data: bytes, image_size: int, max_pixels: int | None = None) -> np.ndarray:
    """Image bytes -> the uint8 RGB square the model sees, before scaling: what a heatmap is
    drawn over."""
    return image_to_array(decode_image(data, max_pixels), image_size)


def preprocess_image_bytes(
    data: bytes, image_size: int, max_pixels: int | None = None
) -> np.ndarray:
    """Image bytes -> float32 model input of shape (image_size, image_size, 3): decoded to RGB,
    fitted into the square keeping its aspect ratio, VGG16-scaled.

    Raises:
        UnreadableImageError: the bytes cannot be decoded as an image.
        ImageTooLargeError: the image has more than ``max_pixels`` pixels.
    """
    return scale_for_vgg16(fitted_rgb(data, image_size, max_pixels))


@dataclass(frozen=True)
class PreparedImage:
    """One image ready for the model, decoded once.

    Attributes:
        rgb: (size, size, 3) uint8, the square the model sees before scaling (what a heatmap
            is drawn over).
        model_input: (size, size, 3) float32, ``preprocess_image_bytes``'s output.
        input_problem: why the image cannot be a CT slice (``implausibility``), or None.
    """

    rgb: np.ndarray
    model_input: np.ndarray
    input_problem: str | None


def prepare_image(data: bytes, image_size: int, max_pixels: int | None = None) -> PreparedImage:
    """Image bytes -> the model input and the input checks' verdict on the decoded image.

    Raises:
        UnreadableImageError: the bytes cannot be decoded as an image.
        ImageTooLargeError: the image has more than ``max_pixels`` pixels.
    """
    image = decode_image(data, max_pixels)
    rgb = image_to_array(image, image_size)
    return PreparedImage(rgb, scale_for_vgg16(rgb), implausibility(image))
