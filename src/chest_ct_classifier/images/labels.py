"""The four classes: canonical names, display names, and the archive's folder-name aliases.

Every other module imports labels from here. The class order below is the order of the model's
outputs and of every probability column.
"""

from __future__ import annotations

import re

LABELS: tuple[str, ...] = (
    "adenocarcinoma",
    "large_cell_carcinoma",
    "normal",
    "squamous_cell_carcinoma",
)

DISPLAY_NAMES: dict[str, str] = {
    "adenocarcinoma": "Adenocarcinoma",
    "large_cell_carcinoma": "Large cell carcinoma",
    "normal": "Normal",
    "squamous_cell_carcinoma": "Squamous cell carcinoma",
}

# The original archive names train/valid class folders after a case
# ("adenocarcinoma_left.lower.lobe_T2_N0_M0_Ib") and test folders after the class alone
# ("large.cell.carcinoma"). Both reduce to a canonical label once separators are unified.
_SEPARATORS = re.compile(r"[.\-\s]+")

SPLIT_ALIASES: dict[str, str] = {
    "train": "train",
    "training": "train",
    "valid": "valid",
    "val": "valid",
    "validation": "valid",
    "test": "test",
    "testing": "test",
}


def label_from_folder(folder_name: str) -> str | None:
    """Canonical label for a class folder name of either archive style, or None if unknown.

    >>> label_from_folder("large.cell.carcinoma_left.hilum_T2_N2_M0_IIIa")
    'large_cell_carcinoma'
    >>> label_from_folder("squamous.cell.carcinoma")
    'squamous_cell_carcinoma'
    """
    normalized = _SEPARATORS.sub("_", folder_name.strip().lower())
    for label in LABELS:
        if normalized == label or normalized.startswith(label + "_"):
            return label
    return None


def split_from_folder(folder_name: str) -> str | None:
    """Canonical split (train, valid, test) for a folder name, or None if it names no split."""
    return SPLIT_ALIASES.get(folder_name.strip().lower())


def probability_columns() -> list[str]:
    """Column names for per-class probabilities, in model output order."""
    return [f"p_{label}" for label in LABELS]
