"""Bootstrap confidence intervals: how far a score on a few hundred images may be from the
score on all images like them."""

from __future__ import annotations

from typing import Any

import numpy as np

from chest_ct_classifier.images.labels import LABELS
from chest_ct_classifier.scoring.metrics import macro_f1_of_rows


def bootstrap_intervals(
    y_true: np.ndarray,
    probabilities: np.ndarray,
    resamples: int = 1000,
    confidence: float = 0.95,
    seed: int = 0,
) -> dict[str, Any]:
    """Percentile intervals of accuracy, macro-F1 and each class's recall over ``resamples``
    resamplings of the images with replacement.

    A class absent from a resample has no recall there; its interval comes from the resamples
    that have it (None when it is absent from the data).

    Returns:
        ``{"confidence", "resamples", "accuracy": {"low", "high"}, "macro_f1": {...},
        "recall": {label: {"low", "high"} | None}}``.
    """
    y_true = np.asarray(y_true, dtype=int)
    predicted = np.asarray(probabilities).argmax(axis=1)
    n = len(y_true)
    if n == 0:
        raise ValueError("no images to resample")
    rng = np.random.default_rng(seed)
    picks = rng.integers(0, n, size=(resamples, n))
    truth, answer = y_true[picks], predicted[picks]
    correct = truth == answer
    tail = (1.0 - confidence) / 2 * 100

    def interval(values: np.ndarray) -> dict[str, float] | None:
        values = values[~np.isnan(values)]
        if values.size == 0:
            return None
        low, high = np.percentile(values, [tail, 100 - tail])
        return {"low": float(low), "high": float(high)}

    recalls = {}
    for index, label in enumerate(LABELS):
        of_class = truth == index
        counts = of_class.sum(axis=1)
        with np.errstate(invalid="ignore", divide="ignore"):
            recall = np.where(counts > 0, (correct & of_class).sum(axis=1) / counts, np.nan)
        recalls[label] = interval(recall)
    return {
        "confidence": confidence,
        "resamples": resamples,
        "accuracy": interval(correct.mean(axis=1)),
        "macro_f1": interval(macro_f1_of_rows(truth, answer)),
        "recall": recalls,
    }
