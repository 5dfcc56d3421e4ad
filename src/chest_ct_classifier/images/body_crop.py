"""Crop a slice to the body it shows, so that every source's pictures fill the frame alike.

The public archive's train and valid cancer slices are cut tight around the body (the body's
box spans 97-98 % of the picture), while its test slices keep a black margin (87-93 %), and a
DICOM slice keeps the air around the patient (a 512 x 512 field of view). Fitted into the
model's square as they are, the same anatomy comes out at different scales depending on who
made the picture. Cropping to the body first makes the scale a property of the patient, not of
the source (docs/data-quality.md). Text, rulers and markers beside the body are left out when
black rows or columns separate them from it.
"""

from __future__ import annotations

import numpy as np
from PIL import Image

from chest_ct_classifier.images.plausibility import MIN_SIDE

BRIGHT = 30
"""Grey level (0-255) above which a pixel is taken for body rather than background: air
outside the patient is black in the lung window, and JPEG noise stays below this."""

OCCUPIED_SHARE = 0.05
"""A row (column) belongs to the body when at least this share of its pixels is bright."""

GAP_SHARE = 0.02
"""Empty stretches shorter than this share of the side do not split the body (a thin dark
line through a slice, such as a gap between the lungs)."""

MARGIN_SHARE = 0.02
"""Kept around the body's box, as a share of the body's size: the skin's edge stays in
view."""

PASSES = 3
"""At most this many crops, each relative to the last box, until one changes nothing: the
shares above are of the picture's side, so a wide black margin makes the first box a little
loose, and cropping again makes the result the same whatever the margin was (as long as the
body spans ``SMALLEST_BODY_SHARE`` of the picture)."""

SMALLEST_BODY_SHARE = 0.2
"""Content spanning less than this share of either side is not cropped to: a picture that
shows no body (blank, text, a small mark) is left as it is, for the input checks to judge.
Pictures smaller than the input checks' ``MIN_SIDE`` are left as they are too: in a few pixels
one bright pixel would pass for a body."""


def crop_to_body(image: Image.Image) -> Image.Image:
    """The part of ``image`` (RGB) that holds the body, with a small margin; the image itself
    when it is already tight or when no body-sized content is found."""
    if min(image.size) < MIN_SIDE:
        return image
    for _ in range(PASSES):
        cropped = _crop_once(image)
        if cropped is image:
            break
        image = cropped
    return image


def _crop_once(image: Image.Image) -> Image.Image:
    grey = np.asarray(image.convert("L")) > BRIGHT
    height, width = grey.shape
    rows = _longest_run(grey.mean(axis=1) >= OCCUPIED_SHARE, height)
    if rows is None:
        return image
    cols = _longest_run(grey[rows[0] : rows[1]].mean(axis=0) >= OCCUPIED_SHARE, width)
    if cols is None:
        return image
    top, bottom = _with_margin(rows, height)
    left, right = _with_margin(cols, width)
    if (left, top, right, bottom) == (0, 0, width, height):
        return image
    return image.crop((left, top, right, bottom))


def _longest_run(occupied: np.ndarray, side: int) -> tuple[int, int] | None:
    """[start, stop) of the longest stretch of occupied lines, bridging short gaps; None when
    it spans less than ``SMALLEST_BODY_SHARE`` of the side."""
    indices = np.flatnonzero(occupied)
    if indices.size == 0:
        return None
    # Runs split where the gap to the next occupied line is longer than allowed.
    splits = np.flatnonzero(np.diff(indices) > max(1, round(GAP_SHARE * side))) + 1
    runs = [(run[0], run[-1] + 1) for run in np.split(indices, splits)]
    start, stop = max(runs, key=lambda run: run[1] - run[0])
    if stop - start < SMALLEST_BODY_SHARE * side:
        return None
    return int(start), int(stop)


def _with_margin(run: tuple[int, int], side: int) -> tuple[int, int]:
    margin = round(MARGIN_SHARE * (run[1] - run[0]))
    return max(0, run[0] - margin), min(side, run[1] + margin)
