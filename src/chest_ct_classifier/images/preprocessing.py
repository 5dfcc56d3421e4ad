"""Image bytes to model input: the one preprocessing path for training, evaluation and serving.

The same bytes give the same tensor wherever they enter: the training pipeline calls
:func:`preprocess_image_bytes`; batch inference, the registered model and the web app call
:func:`prepare_images`, which gives the same tensor and, from the same decoded pixels, what the
input checks say about it. DICOM files (``images.dicom``) join the raster path once windowed to
8 bits.
"""

from __future__ import annotations

import base64
import binascii
import io
import struct
from dataclasses import dataclass
from typing import TypeVar

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from chest_ct_classifier.images.body_crop import crop_to_body
from chest_ct_classifier.images.dicom import (
    DEFAULT_WINDOW,
    DicomError,
    DicomTooLargeError,
    Window,
    is_dicom,
    modality_problem,
    read_dicom,
    slice_identity,
)
from chest_ct_classifier.images.plausibility import implausibility

# Caffe-style VGG16 scaling, as keras.applications.vgg16.preprocess_input: RGB -> BGR, then
# subtract the ImageNet channel means. Written out so that serving does not import Keras for it.
_VGG16_BGR_MEAN = np.array([103.939, 116.779, 123.68], dtype=np.float32)


T = TypeVar("T")

_WHITESPACE = str.maketrans("", "", " \t\n\r\x0b\x0c")

READABLE_FORMATS = ("PNG", "JPEG", "BMP", "TIFF", "GIF", "WEBP")
"""Raster formats only: PIL's other plugins include EPS, which runs Ghostscript on the file."""

DECODE_LONG_SIDE = 1024
"""An image whose long side is at least twice this is shrunk by a whole factor as it is
decoded, to no less than this (JPEG decodes at 1/2, 1/4 or 1/8 scale; other formats are reduced
right after decoding), so the conversions after it cost a fraction: the model sees 224 px. The
archive's largest image is 1200 px: no training image is touched."""

_REDUCIBLE_MODES = frozenset({"L", "LA", "RGB", "RGBA", "I", "F"})
"""Modes PIL's ``reduce`` averages correctly (not palette indices, not 16-bit "I;16")."""


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
        text = text.partition(",")[2]
    try:
        # whitespace deleted in one pass (text.split() would make a string per fragment)
        return base64.b64decode(text.translate(_WHITESPACE), validate=True)
    except (binascii.Error, ValueError, TypeError) as exc:
        raise UnreadableImageError(f"not valid base64: {exc}") from exc


@dataclass(frozen=True)
class SliceSource:
    """Which slice of its file an image is, for DICOM files: the frame (None for a single
    frame) and the identifiers a reader finds the slice by. Never anything naming a patient."""

    frame: int | None = None
    series_uid: str | None = None
    sop_uid: str | None = None
    instance_number: int | None = None
    modality: str | None = None


RASTER = SliceSource()


def slice_source_of(data: bytes) -> SliceSource:
    """The slice a file is, from a DICOM header alone (for a file whose pixels cannot be
    read); ``RASTER`` for anything else."""
    identity = slice_identity(data)
    return RASTER if identity is None else SliceSource(None, **identity)


@dataclass(frozen=True)
class DecodedImage:
    image: Image.Image  # 8-bit RGB
    source: SliceSource


def decode_images(
    data: bytes, max_pixels: int | None = None, dicom_window: Window = DEFAULT_WINDOW
) -> list[DecodedImage]:
    """Every image of a file as 8-bit RGB: one for a raster file, one per frame for DICOM.

    The format is detected from the content, not a file name: a JPEG named ``.png`` reads, and
    so does a DICOM file without an extension. DICOM goes through its modality LUT (Hounsfield
    units for CT) and ``dicom_window`` (``images.dicom``); from there on it takes the raster
    path. RGBA is composited on black (the CT background); greyscale is replicated to three
    channels; 16-bit and float greyscale are rescaled to 0-255 by their own range.

    Raises:
        UnreadableImageError: the bytes are not a readable image (DICOM without pixel data,
            an encoding that cannot be decoded, a corrupt or truncated file included).
        ImageTooLargeError: width x height exceeds ``max_pixels`` (checked from the header,
            before any pixel is decoded).
    """
    if not data:
        raise UnreadableImageError("empty file")
    if not is_dicom(data):
        return [DecodedImage(_decode_raster(data, max_pixels), RASTER)]
    try:
        slices = read_dicom(data, dicom_window, max_pixels)
    except DicomTooLargeError as exc:
        raise ImageTooLargeError(str(exc)) from exc
    except DicomError as exc:
        raise UnreadableImageError(str(exc)) from exc
    return [
        DecodedImage(
            _to_rgb(Image.fromarray(s.pixels)),
            SliceSource(s.frame, s.series_uid, s.sop_uid, s.instance_number, s.modality),
        )
        for s in slices
    ]


def decode_image(
    data: bytes, max_pixels: int | None = None, dicom_window: Window = DEFAULT_WINDOW
) -> Image.Image:
    """The one image of a file (``decode_images``), as 8-bit RGB.

    Raises:
        UnreadableImageError: as ``decode_images``; also for a DICOM file of several frames.
        ImageTooLargeError: as ``decode_images``.
    """
    return _only(decode_images(data, max_pixels, dicom_window)).image


def _decode_raster(data: bytes, max_pixels: int | None) -> Image.Image:
    try:
        image = Image.open(io.BytesIO(data), formats=READABLE_FORMATS)
        width, height = image.size
        if max_pixels is not None and width * height > max_pixels:
            raise ImageTooLargeError(
                f"the image is {width} x {height} pixels, more than the {max_pixels:,} allowed"
            )
        factor = _shrink_factor(image.size)
        if image.format == "JPEG" and factor > 1:
            image.draft(image.mode, (width // factor, height // factor))
        image.load()
        # EXIF orientation and mode conversion read more of the file: broken metadata or
        # palettes fail here, and must fail like any unreadable image. In place: no copy.
        ImageOps.exif_transpose(image, in_place=True)
        factor = _shrink_factor(image.size)  # what the draft left to do
        if factor > 1 and image.mode in _REDUCIBLE_MODES:
            image = image.reduce(factor)
        return _to_rgb(image)
    except UnreadableImageError:
        raise
    except Image.DecompressionBombError as exc:
        raise ImageTooLargeError(str(exc)) from exc
    except UnidentifiedImageError as exc:
        # PIL's message names an in-memory object's address: nothing a reader can use.
        raise UnreadableImageError("not a readable image: unknown or unsupported format") from exc
    except (OSError, SyntaxError, ValueError, struct.error) as exc:
        raise UnreadableImageError(f"not a readable image: {exc}") from exc


def _shrink_factor(size: tuple[int, int]) -> int:
    return max(1, max(size) // DECODE_LONG_SIDE)


def _to_rgb(image: Image.Image) -> Image.Image:
    if image.mode in ("I", "I;16", "I;16B", "I;16L", "F"):
        pixels = np.asarray(image, dtype=np.float32)
        low, high = float(pixels.min()), float(pixels.max())
        scaled = (pixels - low) / (high - low) * 255.0 if high > low else np.zeros_like(pixels)
        image = Image.fromarray(scaled.round().astype(np.uint8), mode="L")
    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        if rgba.getchannel("A").getextrema() == (255, 255):
            # Opaque (most of the public archive's PNGs): compositing would change nothing
            # and costs a millisecond a request.
            return rgba.convert("RGB")
        background = Image.new("RGBA", rgba.size, (0, 0, 0, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return image.convert("RGB")


def image_to_array(image: Image.Image, image_size: int) -> np.ndarray:
    """Crop a decoded RGB image to the body it shows (``body_crop.crop_to_body``), then fit it
    into ``image_size`` x ``image_size``, keeping its aspect ratio (bilinear), centred on black,
    the CT background; uint8 (H, W, 3). An already fitted square is not returned unchanged: its
    margin is cropped again.

    Stretching to a square would distort anatomy by an amount that depends on the picture's
    source: in the public dataset the classes come from sources with different aspect ratios
    (docs/data-quality.md), so a stretched image would teach the source's shape, not the
    anatomy. The black bars still show the aspect ratio; training's ``stretch`` augmentation
    blurs that cue.
    """
    image = crop_to_body(image)
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
    return np.subtract(rgb[..., ::-1], _VGG16_BGR_MEAN, dtype=np.float32)  # one pass, no copy


def fitted_rgb(
    data: bytes,
    image_size: int,
    max_pixels: int | None = None,
    dicom_window: Window = DEFAULT_WINDOW,
) -> np.ndarray:
    """Image bytes -> the uint8 RGB square the model sees, before scaling: what a heatmap is
    drawn over."""
    return image_to_array(decode_image(data, max_pixels, dicom_window), image_size)


def preprocess_image_bytes(
    data: bytes,
    image_size: int,
    max_pixels: int | None = None,
    dicom_window: Window = DEFAULT_WINDOW,
) -> np.ndarray:
    """Image bytes -> float32 model input of shape (image_size, image_size, 3): decoded to RGB
    (DICOM through ``dicom_window``), fitted into the square keeping its aspect ratio,
    VGG16-scaled.

    Raises:
        UnreadableImageError: the bytes cannot be decoded as one image.
        ImageTooLargeError: the image has more than ``max_pixels`` pixels.
    """
    return scale_for_vgg16(fitted_rgb(data, image_size, max_pixels, dicom_window))


@dataclass(frozen=True)
class PreparedImage:
    """One image ready for the model, decoded once.

    Attributes:
        rgb: (size, size, 3) uint8, the square the model sees before scaling (what a heatmap
            is drawn over, and the preview of a DICOM slice).
        model_input: (size, size, 3) float32, ``preprocess_image_bytes``'s output.
        input_problem: why the image cannot be a chest CT slice (``implausibility``, or a
            DICOM file of another modality), or None.
        source: which slice of its file it is (DICOM frames and identifiers).
    """

    rgb: np.ndarray
    model_input: np.ndarray
    input_problem: str | None
    source: SliceSource = RASTER


def prepare_images(
    data: bytes,
    image_size: int,
    max_pixels: int | None = None,
    dicom_window: Window = DEFAULT_WINDOW,
) -> list[PreparedImage]:
    """Every image of a file (one per DICOM frame) -> the model input and the input checks'
    verdict on the decoded image.

    Raises:
        UnreadableImageError: the bytes cannot be decoded as an image.
        ImageTooLargeError: the image has more than ``max_pixels`` pixels.
    """
    prepared = []
    for decoded in decode_images(data, max_pixels, dicom_window):
        rgb = image_to_array(decoded.image, image_size)
        problem = modality_problem(decoded.source.modality) or implausibility(decoded.image)
        prepared.append(PreparedImage(rgb, scale_for_vgg16(rgb), problem, decoded.source))
    return prepared


def prepare_image(
    data: bytes,
    image_size: int,
    max_pixels: int | None = None,
    dicom_window: Window = DEFAULT_WINDOW,
) -> PreparedImage:
    """The one image of a file, as ``prepare_images``.

    Raises:
        UnreadableImageError: as ``prepare_images``; also for a DICOM file of several frames.
        ImageTooLargeError: as ``prepare_images``.
    """
    return _only(prepare_images(data, image_size, max_pixels, dicom_window))


def _only(images: list[T]) -> T:
    """The one image of a file where one slice is expected (not a multi-frame DICOM file)."""
    if len(images) != 1:
        raise UnreadableImageError(
            f"a multi-frame DICOM file ({len(images)} frames) where one slice is expected"
        )
    return images[0]
