"""Inference: predict every image of a folder or archive, or of a request to the served model."""

from __future__ import annotations

import base64
import json
import logging
import threading
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from typing import Any

import keras
import numpy as np
import pandas as pd

from chest_ct_classifier.images.labels import LABELS, probability_columns
from chest_ct_classifier.images.preprocessing import (
    UnreadableImageError,
    bytes_from_base64,
    preprocess_image_bytes,
)
from chest_ct_classifier.model.architecture import image_size_of
from chest_ct_classifier.model.batches import map_batches
from chest_ct_classifier.model.numeric_precision import Forward, model_fingerprint, select_forward

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
    precision gate allows (``numeric_precision.choose_precision``); fp32 otherwise.
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

    probabilities = map_batches(
        lambda chosen: forward(np.stack([readable[i][1] for i in chosen])),
        np.arange(len(readable)),
        batch_size,
        (len(LABELS),),
        progress=lambda done, total: logger.info("Predicted %d/%d images", done, total),
    )
    for (position, _), p in zip(readable, probabilities, strict=True):
        rows[position]["label"] = LABELS[int(p.argmax())]
        rows[position].update(zip(probability_columns(), map(float, p), strict=True))

    logger.info("Predictions: %d images, %d unreadable", len(rows), len(rows) - len(readable))
    return pd.DataFrame(rows, columns=PREDICTION_COLUMNS)


# Forward passes already built, per model object and request: the served MLflow model calls
# predict_images for every request, and building a path (fingerprinting the weights, tracing,
# converting to bfloat16, loading the int8 interpreter) costs far more than one answer. The
# served model is one object for the life of the process (KerasModelDataset shares it), so
# the cache stays small; it keeps the objects its keys' ids refer to, so an id is never reused.
_FORWARDS: dict[tuple, tuple[Any, Forward]] = {}
_FORWARDS_LOCK = threading.Lock()
_FORWARDS_KEPT = 4


def _forward(
    model: keras.Model,
    requested: str,
    int8_model: bytes | None,
    precision_gate: dict[str, Any] | None,
) -> Forward:
    gate_key = json.dumps(precision_gate, sort_keys=True) if precision_gate else None
    key = (id(model), id(int8_model), requested, gate_key)
    with _FORWARDS_LOCK:
        if key not in _FORWARDS:
            forward, precision, reason = select_forward(
                model, requested, int8_model, precision_gate
            )
            logger.info("Predicting in %s: %s", precision, reason)
            while len(_FORWARDS) >= _FORWARDS_KEPT:
                _FORWARDS.pop(next(iter(_FORWARDS)))
            _FORWARDS[key] = ((model, int8_model), forward)
        return _FORWARDS[key][1]


def audit_record_of_run(
    predictions: pd.DataFrame, model: keras.Model, input_path: str
) -> dict[str, Any]:
    """The audit log's line for one batch inference run: when, what input, how many files,
    what was answered, and which model (its weights' fingerprint)."""
    answered = predictions[predictions["error"].isna()]
    return {
        "time": datetime.now(UTC).isoformat(timespec="milliseconds"),
        "kind": "batch_inference",
        "input": str(input_path),
        "n_files": len(predictions),
        "n_unreadable": int(predictions["error"].notna().sum()),
        "labels": {label: int((answered["label"] == label).sum()) for label in LABELS},
        "model": {"fingerprint": model_fingerprint(model)},
    }


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
