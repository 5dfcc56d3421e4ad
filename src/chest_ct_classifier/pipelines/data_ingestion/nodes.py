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

from chest_ct_classifier.config.data_ingestion import DataIngestionParameters, SplitSettings
from chest_ct_classifier.images.dicom import (
    DEFAULT_WINDOW,
    DICOM_SUFFIXES,
    Window,
    is_dicom,
    modality_problem,
)
from chest_ct_classifier.images.duplicates import near_duplicate_groups, perceptual_hash
from chest_ct_classifier.images.labels import LABELS, label_from_folder, split_from_folder
from chest_ct_classifier.images.preprocessing import UnreadableImageError, decode_images
from chest_ct_classifier.images.sources import IMAGE_SUFFIXES
from chest_ct_classifier.images.splitting import grouped_split
from chest_ct_classifier.redaction import redact_url

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
    "phash",
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


def describe_image(path: str, data: bytes, dicom_window: Window = DEFAULT_WINDOW) -> dict[str, Any]:
    """One index row: location, content hash, size, mode, real format (``DICOM`` for DICOM
    files), readability."""
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
        "phash": None,
    }
    try:
        if is_dicom(data):
            row.update(mode="DICOM", format="DICOM")
        else:
            with Image.open(io.BytesIO(data)) as header:
                row.update(mode=header.mode, format=header.format)
        # the very decoding training and serving use
        decoded = decode_images(data, dicom_window=dicom_window)
        if len(decoded) != 1:
            raise UnreadableImageError(
                f"a multi-frame DICOM file ({len(decoded)} frames): a training slice is one image"
            )
        problem = modality_problem(decoded[0].source.modality)
        if problem:  # an MR or X-ray slice must not be learned as a chest CT slice
            raise UnreadableImageError(problem)
        image = decoded[0].image
        row.update(width=image.width, height=image.height)
        row["phash"] = perceptual_hash(image)
        row["readable"] = True
    except (UnreadableImageError, OSError, ValueError) as exc:
        row["error"] = str(exc)
    return row


def index_images(
    image_files: dict[str, Callable[[], bytes]],
    parameters: DataIngestionParameters,
    dicom_window: Window = DEFAULT_WINDOW,
) -> tuple[pd.DataFrame, dict[str, Any]]:
    """Index every image file of the source, and summarize what was found.

    Image files are known by their extension, DICOM files also by their content (scanners
    often write them without an extension); other files are listed as skipped. Unreadable
    images are indexed with their error, never raised.

    Returns:
        The image index (one row per image file, columns INDEX_COLUMNS) and a JSON summary.
    """
    rows, skipped = [], []
    for path in sorted(image_files):
        suffix = PurePosixPath(path).suffix.lower()
        data = None
        if suffix not in IMAGE_SUFFIXES | DICOM_SUFFIXES:
            data = image_files[path]()
            if not is_dicom(data):
                skipped.append(path)
                continue
        data = image_files[path]() if data is None else data
        rows.append(describe_image(path, data, dicom_window))
    index = pd.DataFrame(rows, columns=INDEX_COLUMNS)
    if index.empty:
        raise ValueError(f"no image files found in {redact_url(parameters.source)!r}")

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
        "source": redact_url(parameters.source),
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
    image_files: dict[str, Callable[[], bytes]], image_table: pd.DataFrame
) -> dict[str, bytes]:
    """The bytes of every usable image (readable, labelled, in a split), keyed by archive path."""
    if "train" not in set(image_table["split"]):
        raise ValueError(
            "no readable, labelled training images: expected folders like "
            "<root>/train/<class>/... or <root>/<class>/..., with class folders named after "
            "the four labels"
        )
    return {path: image_files[path]() for path in image_table["path"]}


EXPECTED_FORMATS = {
    ".png": "PNG", ".jpg": "JPEG", ".jpeg": "JPEG", ".bmp": "BMP",
    ".tif": "TIFF", ".tiff": "TIFF", ".gif": "GIF", ".webp": "WEBP",
    ".dcm": "DICOM", ".dicom": "DICOM",
}  # fmt: skip
IMAGE_TABLE_COLUMNS = [
    "path", "split", "label", "sha256", "phash", "group", "copy_in_train", "label_conflict",
]  # fmt: skip


def _choose_splits(readable: pd.DataFrame, split: SplitSettings) -> tuple[pd.Series, str]:
    """The official split, or a duplicate-grouped re-split (mode resplit, or auto without one)."""
    mode = split.mode
    has_split = readable["split"].notna().any()
    if mode == "official" or (mode == "auto" and has_split):
        return readable["split"], "official"
    labelled = readable["label"].notna()
    resplit = pd.Series(None, index=readable.index, dtype=object)
    resplit[labelled] = grouped_split(
        readable.loc[labelled, "group"], readable.loc[labelled, "label"],
        split.ratios, split.seed,
    )  # fmt: skip
    logger.warning(
        "Re-splitting %d images by duplicate group (ratios %s, seed %s)%s",
        int(labelled.sum()), split.ratios, split.seed,
        "" if mode == "resplit" else ": the data has no train/valid/test folders",
    )  # fmt: skip
    return resplit, "resplit"


def _groups_with_several(rows: pd.DataFrame, by: str, column: str) -> pd.DataFrame:
    """The rows of every ``by`` group holding more than one distinct ``column`` value."""
    distinct = rows.groupby(by)[column].nunique()
    return rows[rows[by].isin(distinct.index[distinct > 1])]


def _describe_groups(rows: pd.DataFrame, key: str) -> list[dict[str, Any]]:
    return [
        {
            key: name if isinstance(name, str) else int(name),
            "files": sorted(group["path"]),
            "splits": sorted(group["split"].dropna().unique()),
            "labels": sorted(group["label"].dropna().unique()),
        }
        for name, group in rows.groupby(key, sort=True)
    ]


def assess_data_quality(
    image_index: pd.DataFrame, parameters: DataIngestionParameters
) -> tuple[pd.DataFrame, dict[str, Any], str]:
    """Duplicates, near duplicates, leakage across splits, label conflicts, format mismatches.

    Returns:
        The image table (one row per usable image, with its near-duplicate ``group``, whether a
        copy of it is in train, and whether its exact copies carry another label); the
        data-quality report (JSON); and the same report as Markdown.
    """
    max_distance = parameters.near_duplicate_max_distance
    readable = image_index[image_index["readable"]].copy()
    readable["group"] = near_duplicate_groups(readable["phash"].tolist(), max_distance)
    readable["split"], split_source = _choose_splits(readable, parameters.split)

    exact = readable[readable.duplicated("sha256", keep=False)]
    near = _groups_with_several(readable, "group", "sha256")
    crossing = _groups_with_several(readable, "group", "split")
    conflicting = _groups_with_several(readable, "sha256", "label")

    train_paths_per_group = readable[readable["split"] == "train"].groupby("group")["path"]
    train_members = train_paths_per_group.apply(set).to_dict()
    readable["copy_in_train"] = [
        bool(train_members.get(group, set()) - {path})
        for group, path in zip(readable["group"], readable["path"], strict=True)
    ]
    readable["label_conflict"] = readable["sha256"].isin(conflicting["sha256"])

    usable = readable[readable["label"].notna() & readable["split"].notna()]
    image_table = usable[IMAGE_TABLE_COLUMNS].sort_values("path").reset_index(drop=True)

    suffixes = image_index["path"].map(lambda p: PurePosixPath(p).suffix.lower())
    expected = suffixes.map(EXPECTED_FORMATS)
    mismatched = image_index[image_index["readable"] & (expected != image_index["format"])]

    counts, leak_free = {}, {}
    for split, rows in usable.groupby("split"):
        counts[split] = {label: int((rows["label"] == label).sum()) for label in LABELS}
        if split != "train":
            clean = rows[~rows["copy_in_train"]]
            leak_free[split] = {
                "official": len(rows),
                "leak_free": len(clean),
                "per_class": {label: int((clean["label"] == label).sum()) for label in LABELS},
            }
    report = {
        "parameters": {
            "near_duplicate_max_distance": max_distance,
            "split": parameters.split.model_dump(),
        },
        "split_source": split_source,
        "n_images": len(image_index),
        "n_distinct_contents": int(readable["sha256"].nunique()),
        "counts": counts,
        "leak_free": leak_free,
        "exact_duplicate_groups": _describe_groups(exact, "sha256"),
        "near_duplicate_groups": _describe_groups(near, "group"),
        "cross_split_groups": _describe_groups(crossing, "group"),
        "conflicting_labels": _describe_groups(conflicting, "sha256"),
        "unreadable": image_index.loc[~image_index["readable"], ["path", "error"]].to_dict(
            "records"
        ),
        "format_mismatches": [
            {"path": path, "extension": suffix, "format": fmt}
            for path, suffix, fmt in zip(
                mismatched["path"], suffixes[mismatched.index], mismatched["format"], strict=True
            )
        ],
    }
    logger.info(
        "Data quality: %d files, %d distinct; %d exact-duplicate groups, %d near-duplicate "
        "groups, %d groups across splits, %d conflicting-label groups, %d format mismatches",
        report["n_images"], report["n_distinct_contents"],
        len(report["exact_duplicate_groups"]), len(report["near_duplicate_groups"]),
        len(report["cross_split_groups"]), len(report["conflicting_labels"]),
        len(report["format_mismatches"]),
    )  # fmt: skip
    return image_table, report, render_data_quality_markdown(report)


def _group_lines(groups: list[dict[str, Any]], limit: int = 50) -> list[str]:
    lines = [
        f"- {', '.join(f'`{f}`' for f in g['files'])} "
        f"(splits: {', '.join(g['splits'])}; labels: {', '.join(g['labels'])})"
        for g in groups[:limit]
    ]
    if len(groups) > limit:
        lines.append(f"- ... and {len(groups) - limit} more (see data_quality.json)")
    return lines or ["None."]


def render_data_quality_markdown(report: dict[str, Any]) -> str:
    """The data-quality report as a page a person reads."""
    splits = list(report["counts"])
    lines = [
        "# Data quality report",
        "",
        f"{report['n_images']} image files, {report['n_distinct_contents']} distinct contents. "
        f"Near duplicates: perceptual hashes at most "
        f"{report['parameters']['near_duplicate_max_distance']} bits apart.",
        "",
        "## Usable images per split and class",
        "",
        "| class | " + " | ".join(splits) + " |",
        "|---|" + "---|" * len(splits),
    ]
    for label in LABELS:
        row = " | ".join(str(report["counts"][s][label]) for s in splits)
        lines.append(f"| {label} | {row} |")
    lines += ["", "## Leak-free evaluation subsets (no exact or near copy in train)", ""]
    for split, numbers in report["leak_free"].items():
        lines.append(
            f"- {split}: {numbers['leak_free']} of {numbers['official']} images are leak-free "
            f"({', '.join(f'{k}: {v}' for k, v in numbers['per_class'].items())})"
        )
    sections = [
        ("Groups across splits (leakage)", "cross_split_groups"),
        ("Files carrying two labels (dropped from training)", "conflicting_labels"),
        ("Exact duplicate groups", "exact_duplicate_groups"),
        ("Near-duplicate groups", "near_duplicate_groups"),
    ]
    for title, key in sections:
        lines += ["", f"## {title}: {len(report[key])}", "", *_group_lines(report[key])]
    lines += ["", f"## Unreadable files: {len(report['unreadable'])}", ""]
    lines += [f"- `{u['path']}`: {u['error']}" for u in report["unreadable"]] or ["None."]
    lines += ["", f"## Format does not match extension: {len(report['format_mismatches'])}", ""]
    lines += [
        f"- `{m['path']}`: {m['format']} content behind a `{m['extension']}` name"
        for m in report["format_mismatches"]
    ] or ["None."]
    return "\n".join(lines) + "\n"
