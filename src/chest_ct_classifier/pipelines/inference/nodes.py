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

from chest_ct_classifier.images.dicom import DEFAULT_WINDOW, Window
from chest_ct_classifier.images.labels import LABELS, probability_columns
from chest_ct_classifier.images.preprocessing import (
    PreparedImage,
    SliceSource,
    UnreadableImageError,
    bytes_from_base64,
    prepare_images,
    slice_source_of,
)
from chest_ct_classifier.model.architecture import image_size_of, model_fingerprint
from chest_ct_classifier.model.batches import map_batches
from chest_ct_classifier.model.numeric_precision import Forward, select_forward
from chest_ct_classifier.model.ood import (
    OK,
    OUT_OF_DISTRIBUTION,
    STATUSES,
    UNCERTAIN,
    OodDetector,
    answer_status,
    check,
    usable_detector,
)
from chest_ct_classifier.redaction import redact_url

logger = logging.getLogger(__name__)

UNREADABLE = "unreadable"
"""The status of a file that could not be read (``error`` says why)."""
SLICE_COLUMNS = ["frame", "series_uid", "sop_uid", "instance_number"]
"""Which slice of a DICOM file a row is (empty for other images): never anything naming a
patient."""
PREDICTION_COLUMNS = [
    "image", *SLICE_COLUMNS, "status", "label", *probability_columns(), "ood_score",
    "ood_reason", "error",
]  # fmt: skip
"""One row per image (per frame of a multi-frame DICOM file). ``status``: ok, uncertain,
out_of_distribution (``label`` empty, the probabilities kept for reference) or unreadable
(``error`` says why). ``ood_reason``: why an image was refused, or why it was not checked."""


def predict_images(
    images: Mapping[str, Callable[[], bytes]],
    model: keras.Model,
    batch_size: int,
    int8_model: bytes | None = None,
    precision_gate: dict[str, Any] | None = None,
    precision: str = "fp32",
    ood_detector: OodDetector | None = None,
    uncertain_below: float = 0.5,
    dicom_window: Window = DEFAULT_WINDOW,
) -> pd.DataFrame:
    """One row per image, in the order given (``PREDICTION_COLUMNS``): its status, predicted
    label and class probabilities, the out-of-distribution score, or why it could not be read.
    A multi-frame DICOM file gives a row per frame; DICOM goes through ``dicom_window``.

    Images that cannot be read are reported in ``error`` and do not stop the run.
    ``precision`` (``auto``, ``fp32``, ``bf16`` or ``int8``) is served only as far as the
    precision gate allows (``numeric_precision.choose_precision``); fp32 otherwise. The
    out-of-distribution check (``ood.check``) uses ``ood_detector`` only if it was fitted on
    this model; without one, only the input checks can refuse an image, and ``ood_reason``
    says the score was not checked.
    """
    image_size = image_size_of(model)
    forward = _forward(model, precision, int8_model, precision_gate)
    detector = _detector(ood_detector, model)
    rows: list[dict[str, Any]] = []
    readable: list[tuple[int, PreparedImage]] = []
    for path in images:
        data = b""
        try:
            data = images[path]()
            prepared = prepare_images(data, image_size, dicom_window=dicom_window)
        except (UnreadableImageError, OSError) as exc:
            logger.warning("Cannot predict %s: %s", path, exc)
            rows.append({"image": path, **_slice_of(slice_source_of(data)),
                         "status": UNREADABLE, "error": str(exc)})  # fmt: skip
            continue
        for image in prepared:
            readable.append((len(rows), image))
            rows.append({"image": path, **_slice_of(image.source)})

    def answer(chosen: np.ndarray) -> np.ndarray:
        probabilities, features = forward.with_features(
            np.stack([readable[i][1].model_input for i in chosen])
        )
        scores = detector.scores(features) if detector else np.full(len(chosen), np.nan)
        return np.column_stack([probabilities, scores])

    answers = map_batches(
        answer,
        np.arange(len(readable)),
        int(batch_size),
        (len(LABELS) + 1,),
        progress=lambda done, total: logger.info("Predicted %d/%d images", done, total),
    )
    for (position, image), row in zip(readable, answers, strict=True):
        probabilities, score = row[:-1], row[-1]
        ood = check(detector, image.input_problem, None if np.isnan(score) else float(score))
        status = answer_status(float(probabilities.max()), ood, uncertain_below)
        rows[position].update(
            status=status,
            label=None if status == OUT_OF_DISTRIBUTION else LABELS[int(probabilities.argmax())],
            ood_score=ood.score,
            ood_reason=ood.reason,
        )
        rows[position].update(zip(probability_columns(), map(float, probabilities), strict=True))

    table = pd.DataFrame(rows, columns=PREDICTION_COLUMNS)
    table[["frame", "instance_number"]] = table[["frame", "instance_number"]].astype("Int64")
    logger.info("Predictions: %s", table["status"].value_counts().to_dict())
    return table


# Built once per model object: the served MLflow model calls predict_images for every request,
# and building a forward pass (fingerprinting the weights, tracing, converting to bfloat16,
# loading the int8 interpreter) or checking a detector's fingerprint costs far more than one
# answer. The served model is one object for the life of the process (KerasModelDataset shares
# it), so the cache stays small; it keeps the objects its keys' ids refer to, so an id is never
# reused.
_BUILT: dict[tuple, tuple[Any, Any]] = {}
_BUILT_LOCK = threading.Lock()
_BUILT_KEPT = 8


def _built(key: tuple, keep: tuple, build: Callable[[], Any]) -> Any:
    with _BUILT_LOCK:
        if key not in _BUILT:
            while len(_BUILT) >= _BUILT_KEPT:
                _BUILT.pop(next(iter(_BUILT)))
            _BUILT[key] = (keep, build())
        return _BUILT[key][1]


def _forward(
    model: keras.Model,
    requested: str,
    int8_model: bytes | None,
    precision_gate: dict[str, Any] | None,
) -> Forward:
    def build() -> Forward:
        forward, precision, reason = select_forward(model, requested, int8_model, precision_gate)
        logger.info("Predicting in %s: %s", precision, reason)
        return forward

    gate_key = json.dumps(precision_gate, sort_keys=True) if precision_gate else None
    key = ("forward", id(model), id(int8_model), requested, gate_key)
    return _built(key, (model, int8_model), build)


SERIES_COLUMNS = [
    "series_uid", "n_slices", "n_out_of_distribution", "n_unreadable",
    *[f"{stat}_{column}" for column in probability_columns() for stat in ("mean", "max")],
    *[f"top_slice_{label}" for label in LABELS],
]  # fmt: skip


def summarize_series(predictions: pd.DataFrame) -> pd.DataFrame:
    """One row per DICOM series (SeriesInstanceUID) of the predictions: how many slices were
    answered, refused as out of distribution, or unreadable; each class's mean and largest
    probability over the answered slices; and for each class the slice with the largest
    probability (``image`` path, ``#frame`` for a frame of a multi-frame file).

    A slice classifier says nothing about the series as a whole: these are summaries of slice
    answers, not a diagnosis of the scan. Images without a series (PNG, JPEG) have no row.
    """
    rows = []
    dicom = predictions[predictions["series_uid"].notna()]
    for series, group in dicom.groupby("series_uid", sort=True):
        answered = group[group["status"].isin([OK, UNCERTAIN])]
        row: dict[str, Any] = {
            "series_uid": series,
            "n_slices": len(group),
            "n_out_of_distribution": int((group["status"] == OUT_OF_DISTRIBUTION).sum()),
            "n_unreadable": int((group["status"] == UNREADABLE).sum()),
        }
        for column, label in zip(probability_columns(), LABELS, strict=True):
            values = answered[column].astype(float)
            row[f"mean_{column}"] = float(values.mean()) if len(values) else None
            row[f"max_{column}"] = float(values.max()) if len(values) else None
            row[f"top_slice_{label}"] = _slice_name(answered.loc[values.idxmax()]) if len(
                values) else None  # fmt: skip
        rows.append(row)
    return pd.DataFrame(rows, columns=SERIES_COLUMNS)


def _slice_name(row: pd.Series) -> str:
    frame = row["frame"]
    return row["image"] if pd.isna(frame) else f"{row['image']}#{int(frame)}"


def _slice_of(source: SliceSource) -> dict[str, Any]:
    return {column: getattr(source, column) for column in SLICE_COLUMNS}


def _detector(detector: OodDetector | None, model: keras.Model) -> OodDetector | None:
    return _built(
        ("detector", id(detector), id(model)),
        (detector, model),
        lambda: usable_detector(detector, model_fingerprint(model) if detector else None),
    )


def audit_record_of_run(
    predictions: pd.DataFrame, model: keras.Model, input_path: str
) -> dict[str, Any]:
    """The audit log's line for one batch inference run: when, what input, how many files,
    what was answered, and which model (its weights' fingerprint)."""
    statuses = predictions["status"].value_counts()
    return {
        "time": datetime.now(UTC).isoformat(timespec="milliseconds"),
        "kind": "batch_inference",
        "input": redact_url(str(input_path)),
        "n_files": len(predictions),
        "n_unreadable": int(statuses.get(UNREADABLE, 0)),
        "statuses": {status: int(statuses.get(status, 0)) for status in (*STATUSES, UNREADABLE)},
        "labels": {label: int((predictions["label"] == label).sum()) for label in LABELS},
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
