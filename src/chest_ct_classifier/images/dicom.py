"""DICOM files to the 8-bit slices the model sees, with patient data left in the file.

CT scanners store each slice as 12-16-bit numbers that the file's modality LUT (RescaleSlope,
RescaleIntercept) turns into Hounsfield units; a reader then chooses a display window, and that
choice decides what the model sees. Here the window is a setting (``preprocessing.dicom_window``)
shared by training, batch inference, the registered model and the app:

- ``lung`` (level -600, width 1500), the default: the archive's slices look like this;
- ``mediastinum`` (40 / 400);
- ``file``: the file's own VOI LUT or WindowCenter/WindowWidth (``lung`` when it has neither);
- ``[level, width]``.

Nothing that names a person leaves this module: a slice is known by its SeriesInstanceUID,
SOPInstanceUID, InstanceNumber and frame, and error messages never quote the file's values.
"""

from __future__ import annotations

import io
import logging
import re
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

logger = logging.getLogger(__name__)

NAMED_WINDOWS = {"lung": (-600.0, 1500.0), "mediastinum": (40.0, 400.0)}
FILE_WINDOW = "file"
DEFAULT_WINDOW = "lung"
DICOM_SUFFIXES = frozenset({".dcm", ".dicom"})
"""Names DICOM files often have; a file without them is DICOM when its content says so."""

Window = str | Sequence[float]
"""``lung``, ``mediastinum``, ``file`` or ``(level, width)``."""

_PREAMBLE_END = 132
_ANY_DATASET_TAGS = ("SOPClassUID", "PixelData", "Modality", "StudyInstanceUID")


class DicomError(ValueError):
    """A DICOM file that gives no image: no pixel data, an unsupported or corrupt encoding,
    a truncated file. The message names the problem, never a value of the file."""


class DicomTooLargeError(DicomError):
    """More pixels per frame, or more frames, than allowed (checked before decoding)."""


MAX_FRAMES = 1024
"""Frames decoded from one file, at most: a whole chest CT series is a few hundred."""


def modality_problem(modality: str | None) -> str | None:
    """Why a DICOM file of this modality cannot be a CT slice (MR, X-ray, ultrasound...), or
    None (CT, or no modality stated)."""
    if modality is None or modality.upper() == "CT":
        return None
    return f"a DICOM image of modality {modality}, not CT"


@dataclass(frozen=True)
class DicomSlice:
    """One frame of a DICOM file, windowed to 8 bits.

    Attributes:
        pixels: (H, W) uint8 grey, or (H, W, 3) uint8 for colour files (no window applied).
        modality: the file's Modality (``CT``, ``MR``, ...), None when it has none.
        series_uid, sop_uid: SeriesInstanceUID and SOPInstanceUID (None when absent).
        instance_number: InstanceNumber (None when absent).
        frame: the frame's index in a multi-frame file; None for a single-frame file.
        window: the (level, width) applied; None for colour files and for the file's own VOI
            LUT table.
    """

    pixels: np.ndarray
    modality: str | None
    series_uid: str | None
    sop_uid: str | None
    instance_number: int | None
    frame: int | None
    window: tuple[float, float] | None


def is_dicom(data: bytes) -> bool:
    """Whether ``data`` is a DICOM file: the ``DICM`` marker after the 128-byte preamble, or,
    for files written without it, a dataset pydicom can parse that has the elements every
    image file has."""
    if len(data) >= _PREAMBLE_END and data[128:_PREAMBLE_END] == b"DICM":
        return True
    if data[:4] in (b"\x89PNG", b"GIF8", b"RIFF") or data[:2] in (b"\xff\xd8", b"BM"):
        return False  # a raster format's signature: not worth parsing as DICOM
    dataset = _parse(data, headers_only=True)
    return dataset is not None and any(tag in dataset for tag in _ANY_DATASET_TAGS)


def slice_identity(data: bytes) -> dict[str, str | int | None] | None:
    """The identifiers of a DICOM file's slice (modality, series and instance UIDs, instance
    number) from its header alone, for a file whose pixels cannot be read; None when it is not
    a DICOM file that can be parsed."""
    dataset = _parse(data, headers_only=True) if is_dicom(data) else None
    if dataset is None:
        return None
    return _identity(dataset)


def header_size(data: bytes) -> tuple[int, int] | None:
    """(width, height) of a DICOM file's frames from its header; None when it has none."""
    dataset = _parse(data, headers_only=True)
    if dataset is None:
        return None
    columns, rows = _integer(dataset, "Columns"), _integer(dataset, "Rows")
    return (columns, rows) if columns and rows else None


def _identity(dataset) -> dict[str, str | int | None]:
    return {
        "modality": _code(dataset, "Modality"),
        "series_uid": _uid(dataset, "SeriesInstanceUID"),
        "sop_uid": _uid(dataset, "SOPInstanceUID"),
        "instance_number": _integer(dataset, "InstanceNumber"),
    }


def validate_window(window: Window) -> Window:
    """``window`` if it is one this module applies.

    Raises:
        ValueError: says what is allowed.
    """
    if isinstance(window, str):
        if window in NAMED_WINDOWS or window == FILE_WINDOW:
            return window
    elif len(window) == 2 and float(window[1]) > 0:
        return (float(window[0]), float(window[1]))
    raise ValueError(
        f"DICOM window {window!r}: use lung, mediastinum, file, or [level, width] with width > 0"
    )


def read_dicom(
    data: bytes, window: Window = DEFAULT_WINDOW, max_pixels: int | None = None
) -> list[DicomSlice]:
    """Every frame of a DICOM file as an 8-bit slice: modality LUT (Hounsfield units for CT),
    then ``window``; MONOCHROME1 (bright means low) is turned the usual way round.

    Raises:
        DicomError: no pixel data, an encoding that cannot be decoded, a corrupt or truncated
            file.
        DicomTooLargeError: a frame of more than ``max_pixels`` pixels, or more than
            ``MAX_FRAMES`` frames (from the header, before any pixel is decoded).
    """
    window = validate_window(window)
    dataset = _parse(data, headers_only=False)
    if dataset is None:
        raise DicomError("a DICOM file that cannot be parsed (corrupt or truncated)")
    if "PixelData" not in dataset and "FloatPixelData" not in dataset:
        kind = _code(dataset, "Modality") or "not stated"
        raise DicomError(f"a DICOM file without an image (no pixel data; modality {kind})")
    frames = _integer(dataset, "NumberOfFrames") or 1
    rows, columns = _integer(dataset, "Rows") or 0, _integer(dataset, "Columns") or 0
    if max_pixels is not None and rows * columns > max_pixels:
        raise DicomTooLargeError(
            f"the image is {columns} x {rows} pixels, more than the {max_pixels:,} allowed"
        )
    if frames > MAX_FRAMES:
        raise DicomTooLargeError(f"{frames} frames, more than the {MAX_FRAMES} allowed")
    pixels = _pixels(dataset)
    colour = int(dataset.get("SamplesPerPixel", 1) or 1) > 1
    if frames == 1:
        pixels = pixels[None]
    identity = _identity(dataset)
    slices = []
    for index, frame in enumerate(pixels):
        if colour:
            image, applied = _colour_to_uint8(frame), None
        else:
            image, applied = _windowed(frame, dataset, window, index)
        slices.append(DicomSlice(image, **identity, frame=index if frames > 1 else None,
                                 window=applied))  # fmt: skip
    return slices


def lung_window_values(pixels: np.ndarray) -> np.ndarray:
    """The Hounsfield units that the ``lung`` window maps to 8-bit ``pixels`` (the window's
    inverse, at each level's centre): how tests make a CT file from a PNG."""
    level, width = NAMED_WINDOWS["lung"]
    return (level - width / 2) + np.asarray(pixels, np.float64) * width / 255.0


def _parse(data: bytes, headers_only: bool):  # -> pydicom Dataset | None
    import pydicom  # noqa: PLC0415 (imported when a DICOM file comes, not with the package)
    from pydicom.errors import InvalidDicomError  # noqa: PLC0415

    try:
        return pydicom.dcmread(io.BytesIO(data), force=True, stop_before_pixels=headers_only)
    except (InvalidDicomError, ValueError, TypeError, KeyError, IndexError, EOFError, OSError,
            AttributeError, NotImplementedError, OverflowError, MemoryError):  # fmt: skip
        return None


def _pixels(dataset) -> np.ndarray:
    # the encoding's name (a standard's, never the file's own text) helps say what went wrong
    syntax = getattr(getattr(dataset, "file_meta", None), "TransferSyntaxUID", None)
    encoding = getattr(syntax, "name", None) or "encoding not stated"
    try:
        pixels = dataset.pixel_array
    except NotImplementedError as exc:  # no decoder for the transfer syntax
        raise DicomError(
            f"a DICOM image in an encoding that cannot be decoded ({encoding})"
        ) from exc
    except Exception as exc:  # pydicom and the decoders raise many types on broken data
        logger.debug("DICOM pixel data cannot be decoded", exc_info=True)
        raise DicomError(
            f"a DICOM file whose pixel data cannot be decoded ({encoding}): corrupt, truncated "
            "or not supported"
        ) from exc
    return np.asarray(pixels)


def _windowed(
    frame: np.ndarray, dataset, window: Window, index: int
) -> tuple[np.ndarray, tuple[float, float] | None]:
    from pydicom.pixels import apply_modality_lut, apply_voi_lut  # noqa: PLC0415

    values = np.asarray(apply_modality_lut(frame, dataset), dtype=np.float64)
    level_width = _level_width(dataset, window, index)
    applied: tuple[float, float] | None
    if level_width is None:  # the file's own VOI LUT table, whose output spans its bit depth
        sequence = dataset.VOILUTSequence
        bits = int(sequence[min(index, len(sequence) - 1)].LUTDescriptor[2])
        lut = np.asarray(apply_voi_lut(values, dataset, index=index), dtype=np.float64)
        scaled, applied = np.clip(lut / (2.0**bits - 1.0), 0.0, 1.0), None
    else:
        level, width = level_width
        scaled = np.clip((values - (level - width / 2.0)) / width, 0.0, 1.0)
        applied = (level, width)
    if str(dataset.get("PhotometricInterpretation", "")) == "MONOCHROME1":
        scaled = 1.0 - scaled
    return np.round(scaled * 255.0).astype(np.uint8), applied


def _level_width(dataset, window: Window, index: int) -> tuple[float, float] | None:
    """The (level, width) to apply; None: the file's VOI LUT table."""
    if isinstance(window, str) and window in NAMED_WINDOWS:
        return NAMED_WINDOWS[window]
    if not isinstance(window, str):
        return (float(window[0]), float(window[1]))
    centre, width = dataset.get("WindowCenter"), dataset.get("WindowWidth")
    if centre is not None and width is not None:
        centre, width = _nth(centre, index), _nth(width, index)
        if width > 0:
            return centre, width
    if "VOILUTSequence" in dataset and len(dataset.VOILUTSequence):
        return None
    return NAMED_WINDOWS[DEFAULT_WINDOW]


def _nth(value, index: int) -> float:
    """The ``index``-th of a multi-valued element (one per frame), or its only value."""
    values = list(value) if isinstance(value, Sequence) and not isinstance(value, str) else [value]
    return float(values[min(index, len(values) - 1)])


def _colour_to_uint8(frame: np.ndarray) -> np.ndarray:
    frame = np.asarray(frame)
    if frame.dtype == np.uint8:
        return frame
    high = float(frame.max()) or 1.0
    return np.round(frame.astype(np.float64) / high * 255.0).astype(np.uint8)


# What is read out of a file is checked against its value representation, so that a file that
# puts other text (a name) where a code or UID belongs cannot carry it into an output.
_CODE = re.compile(r"[A-Z0-9_ ]{1,16}")
_UID = re.compile(r"[0-9.]{1,64}")


def _code(dataset, keyword: str) -> str | None:
    """A code string (Modality): None when absent; ``invalid`` when it is not a code."""
    value = str(dataset.get(keyword) or "").strip()
    if not value:
        return None
    return value if _CODE.fullmatch(value) else "invalid"


def _uid(dataset, keyword: str) -> str | None:
    value = str(dataset.get(keyword) or "").strip()
    return value if _UID.fullmatch(value) else None


def _integer(dataset, keyword: str) -> int | None:
    try:
        value = dataset.get(keyword)
        return int(value) if value not in (None, "") else None
    except (TypeError, ValueError):
        return None
