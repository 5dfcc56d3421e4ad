"""Index every image of the source: where it sits, what it is, whether it can be read."""

from __future__ import annotations

import hashlib
import io
import logging
from collections.abc import Callable
from pathlib import PurePosixPath
from typing import Any

import pandas as pd
from PIL import Image

from chest_ct_classifier.image_sources import IMAGE_SUFFIXES
from chest_ct_classifier.labels import LABELS, label_from_folder, split_from_folder
from chest_ct_classifier.preprocessing import UnreadableImageError, decode_image

logger = logging.getLogger(__name__)

INDEX_COLUMNS = [
    "path",
    "split",
    "label",
    "sha256",
    "bytes",
    "width",
    "height",
    "mode",
    "format",
    "readable",
    "error",
]


def locate(path: str) -> tuple[str | None, str | None]:
    """Split and canonical label of an archive path, from its folder names.

    The split is the first folder naming one (train, valid, test and aliases); the label is the
    nearest class folder after it (or anywhere, when no split folder exists).

    >>> locate("Data/test/large.cell.carcinoma/000108.png")
    ('test', 'large_cell_carcinoma')
    """
    folders = PurePosixPath(path).parts[:-1]
    split, split_at = None, -1
    for position, folder in enumerate(folders):
        split = split_from_folder(folder)
        if split is not None:
            split_at = position
            break
    label = None
    for folder in reversed(folders[split_at + 1 :]):
        label = label_from_folder(folder)
        if label is not None:
            break
    return split, label


def describe_image(path: str, data: bytes) -> dict[str, Any]:
    """One index row: location, content hash, size, mode, real format, readability."""
    split, label = locate(path)
    row: dict[str, Any] = {
        "path": path,
        "split": split,
        "label": label,
        "sha256": hashlib.sha256(data).hexdigest(),
        "bytes": len(data),
        "width": None,
        "height": None,
        "mode": None,
        "format": None,
        "readable": False,
        "error": None,
    }
    try:
        with Image.open(io.BytesIO(data)) as header:
            row.update(
                width=header.width, height=header.height, mode=header.mode, format=header.format
            )
        decode_image(data)  # the very decoding training and serving use
        row["readable"] = True
    except (UnreadableImageError, OSError, ValueError) as exc:
        row["error"] = str(exc)
    return row


def index_images(
    image_files: dict[str, Callable[[], bytes]], parameters: dict[str, Any]
) -> tuple[pd.DataFrame, dict[str, Any]]:
    """Index every image file of the source, and summarize what was found.

    Files whose extension is not an image's are listed as skipped; unreadable images are
    indexed with their error, never raised.

    Returns:
        The image index (one row per image file, columns INDEX_COLUMNS) and a JSON summary.
    """
    rows, skipped = [], []
    for path in sorted(image_files):
        if PurePosixPath(path).suffix.lower() not in IMAGE_SUFFIXES:
            skipped.append(path)
            continue
        rows.append(describe_image(path, image_files[path]()))
    index = pd.DataFrame(rows, columns=INDEX_COLUMNS)
    if index.empty:
        raise ValueError(f"no image files found in {parameters.get('source')!r}")

    usable = index[index["readable"] & index["label"].notna() & index["split"].notna()]
    counts = {
        split: {
            label: int(((usable["split"] == split) & (usable["label"] == label)).sum())
            for label in LABELS
        }
        for split in sorted(usable["split"].unique())
    }
    unreadable = index.loc[~index["readable"], ["path", "error"]].to_dict("records")
    unplaced = index.loc[
        index["readable"] & (index["label"].isna() | index["split"].isna()), "path"
    ].tolist()
    for item in unreadable:
        logger.warning("Unreadable image %s: %s", item["path"], item["error"])
    if unplaced:
        logger.warning(
            "%d images have no recognizable split or class folder and are not used: %s",
            len(unplaced),
            unplaced[:5],
        )
    summary = {
        "source": str(parameters.get("source")),
        "n_files": len(image_files),
        "n_images": len(index),
        "n_usable": len(usable),
        "counts": counts,
        "unreadable": unreadable,
        "without_split_or_label": unplaced,
        "skipped_non_images": skipped,
    }
    logger.info(
        "Indexed %d images (%d usable, %d unreadable) from %s",
        len(index),
        len(usable),
        len(unreadable),
        summary["source"],
    )
    return index, summary


def select_usable_images(
    image_files: dict[str, Callable[[], bytes]], image_index: pd.DataFrame
) -> dict[str, bytes]:
    """The bytes of every readable image with a split and a label, keyed by archive path."""
    usable = image_index[
        image_index["readable"] & image_index["label"].notna() & image_index["split"].notna()
    ]
    if "train" not in set(usable["split"]):
        raise ValueError(
            "no readable, labelled training images: expected folders like "
            "<root>/train/<class>/..., with class folders named after the four labels"
        )
    return {path: image_files[path]() for path in usable["path"]}
