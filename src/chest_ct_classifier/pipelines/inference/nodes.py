"""Inference: predict every image of a folder or archive, or of a request to the served model."""

from __future__ import annotations

import base64
import hashlib
import logging
import threading
import weakref
from collections.abc import Callable, Mapping
from typing import Any

import keras
import numpy as np
import pandas as pd

from chest_ct_classifier.labels import LABELS, probability_columns
from chest_ct_classifier.model_architecture import image_size_of
from chest_ct_classifier.precision import Forward, choose_precision, forward_for
from chest_ct_classifier.preprocessing import (
    UnreadableImageError,
    bytes_from_base64,
    preprocess_image_bytes,
)

logger = logging.getLogger(__name__)

PREDICTION_COLUMNS = ["image", "label", *probability_columns(), "error"]


def predict_images(
    images: Mapping[str, Callable[[], bytes]],
    model: keras.Model,
    batch_size: int,
    int8_model: bytes | None = None,
    precision_gate: dict[str, Any] | None = None,
    precision: str = "fp32",
) -> pd.DataFrame:
    """One row per image, in the order given: predicted label and class probabilities, or why
    it could not be read.

    Images that cannot be read are reported in ``error`` and do not stop the run.
    ``precision`` (``auto``, ``fp32``, ``bf16`` or ``int8``) is served only as far as the
    precision gate allows (``precision.choose_precision``); fp32 otherwise.
    """
    image_size = image_size_of(model)
    forward = _forward(model, precision, int8_model, precision_gate)
    batch_size = int(batch_size)
    rows: list[dict[str, Any]] = []
    readable: list[tuple[int, np.ndarray]] = []
    for path in images:
        row = {"image": path, "label": None, "error": None}
        try:
            readable.append((len(rows), preprocess_image_bytes(images[path](), image_size)))
        except (UnreadableImageError, OSError) as exc:
            row["error"] = str(exc)
            logger.warning("Cannot predict %s: %s", path, exc)
        rows.append(row)

    for start in range(0, len(readable), batch_size):
        chunk = readable[start : start + batch_size]
        probabilities = forward(np.stack([x for _, x in chunk]))
        for (position, _), p in zip(chunk, probabilities, strict=True):
            rows[position]["label"] = LABELS[int(p.argmax())]
            rows[position].update(zip(probability_columns(), map(float, p), strict=True))
        logger.info("Predicted %d/%d images", min(start + batch_size, len(readable)), len(readable))

    logger.info("Predictions: %d images, %d unreadable", len(rows), len(rows) - len(readable))
    return pd.DataFrame(rows, columns=PREDICTION_COLUMNS)


# Forward passes already built, per model object: the served MLflow model calls predict_images
# for every request, and building a path (tracing, converting to bfloat16, loading the int8
# interpreter) costs far more than one answer.
_FORWARDS: weakref.WeakKeyDictionary[keras.Model, dict[tuple, Forward]] = (
    weakref.WeakKeyDictionary()
)
_FORWARDS_LOCK = threading.Lock()


def _forward(
    model: keras.Model,
    requested: str,
    int8_model: bytes | None,
    precision_gate: dict[str, Any] | None,
) -> Forward:
    precision, reason = choose_precision(requested, precision_gate)
    key = (precision, hashlib.sha256(int8_model).digest() if precision == "int8" else None)
    with _FORWARDS_LOCK:
        built = _FORWARDS.setdefault(model, {})
        if key not in built:
            logger.info("Predicting in %s: %s", precision, reason)
            built[key] = forward_for(model, precision, int8_model)
        return built[key]


def images_from_request(request: pd.DataFrame) -> dict[str, Callable[[], bytes]]:
    """The images of a request to the served model: one per row, base64 file bytes in column
    ``image``, named by the row's position (``0``, ``1``, ...) in the predictions."""
    if "image" not in request.columns:
        raise ValueError(f"the request needs an 'image' column, got {list(request.columns)}")
    return {
        str(position): (lambda text=text: bytes_from_base64(str(text)))
        for position, text in enumerate(request["image"])
    }


def serving_input_example(
    images: Mapping[str, Callable[[], bytes]], image_table: pd.DataFrame
) -> pd.DataFrame:
    """A request to the served model, written at training time: MLflow infers the model's input
    signature from it. One image per class, from valid (train when there is no valid)."""
    split = "valid" if (image_table["split"] == "valid").any() else "train"
    chosen = image_table[image_table["split"] == split].sort_values("path")
    chosen = chosen.drop_duplicates("label")["path"]
    encoded = [base64.b64encode(images[path]()).decode("ascii") for path in chosen]
    return pd.DataFrame({"image": encoded})
