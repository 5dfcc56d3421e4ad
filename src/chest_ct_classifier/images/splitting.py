"""Re-splitting data that comes without a split, so that copies never straddle two splits."""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import pandas as pd


def grouped_split(
    groups: pd.Series, labels: pd.Series, ratios: Mapping[str, float], seed: int
) -> pd.Series:
    """Assign each row a split so that every group lands whole in one split.

    Groups (e.g. near-duplicate groups) are dealt class by class, in a seeded random order, each
    to the split furthest below its target share, so every class follows ``ratios`` as closely
    as whole groups allow. A group's class is its most common label.

    Returns:
        The split name of each row, indexed like ``groups``.
    """
    names = list(ratios)
    weights = np.array([float(ratios[n]) for n in names])
    if (weights < 0).any() or weights.sum() <= 0:
        raise ValueError(f"split ratios must be non-negative and not all zero: {dict(ratios)}")
    weights = weights / weights.sum()
    frame = pd.DataFrame({"group": groups, "label": labels})
    sizes = frame.groupby("group").size()
    group_label = frame.groupby("group")["label"].agg(lambda s: s.value_counts().index[0])
    rng = np.random.default_rng(seed)
    assignment: dict[int, str] = {}
    for label in sorted(group_label.unique()):
        members = group_label.index[group_label == label].to_numpy()
        counts = np.zeros(len(names))
        for group in rng.permutation(members):
            size = sizes[group]
            deficit = weights * (counts.sum() + size) - counts
            chosen = int(np.argmax(deficit))
            counts[chosen] += size
            assignment[group] = names[chosen]
    return frame["group"].map(assignment)
