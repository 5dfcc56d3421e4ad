"""Batch inference: predict every file under a folder or archive with the trained model."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import keras
import numpy as np
import pandas as pd

from chest_ct_classifier.labels import LABELS, probability_columns
from chest_ct_classifier.model_architecture import image_size_of
from chest_ct_classifier.preprocessing import UnreadableImageError, preprocess_image_bytes

logger = logging.getLogger(__name__)

PREDICTION_COLUMNS = ["image", "label", *probability_columns(), "error"]


def predict_images(
    images: dict[str, Callable[[], bytes]], model: keras.Model, parameters: dict[str, Any]
) -> pd.DataFrame:
    """One row per file: predicted label and class probabilities, or why it could not be read.

    Files that cannot be read as images are reported in ``error`` and do not stop the run.
    """
    image_size = image_size_of(model)
    batch_size = int(parameters["batch_size"])
    rows: list[dict[str, Any]] = []
    readable: list[tuple[int, np.ndarray]] = []
    for path in sorted(images):
        row = {"image": path, "label": None, "error": None}
        try:
            readable.append((len(rows), preprocess_image_bytes(images[path](), image_size)))
        except (UnreadableImageError, OSError) as exc:
            row["error"] = str(exc)
            logger.warning("Cannot predict %s: %s", path, exc)
        rows.append(row)

    for start in range(0, len(readable), batch_size):
        chunk = readable[start : start + batch_size]
        probabilities = np.asarray(model.predict_on_batch(np.stack([x for _, x in chunk])))
        for (position, _), p in zip(chunk, probabilities, strict=True):
            rows[position]["label"] = LABELS[int(p.argmax())]
            rows[position].update(zip(probability_columns(), map(float, p), strict=True))
        logger.info("Predicted %d/%d images", min(start + batch_size, len(readable)), len(readable))

    logger.info("Predictions: %d images, %d unreadable", len(rows), len(rows) - len(readable))
    return pd.DataFrame(rows, columns=PREDICTION_COLUMNS)
