"""Training: run the frozen base once per image, then train the head on the cached features."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import keras
import numpy as np
import pandas as pd

from chest_ct_classifier.calibration import (
    apply_temperature,
    fit_temperature,
    negative_log_likelihood,
    scale_probabilities,
)
from chest_ct_classifier.labels import LABELS
from chest_ct_classifier.model_architecture import (
    FEATURE_LAYER,
    feature_extractor,
    image_size_of,
    model_after,
    predict_from_features,
)
from chest_ct_classifier.preprocessing import preprocess_image_bytes

logger = logging.getLogger(__name__)


def cache_frozen_features(
    images: dict[str, Callable[[], bytes]],
    image_table: pd.DataFrame,
    model: keras.Model,
    parameters: dict[str, Any],
) -> dict[str, np.ndarray]:
    """Output of the frozen convolution base for every usable image, computed once.

    Byte-identical files (the archive holds many) are computed once and shared.

    Returns:
        Arrays aligned by row: ``path``, ``split``, ``label`` (index into LABELS), ``sha256``,
        ``copy_in_train`` and ``label_conflict`` (from the image table) and ``features``
        (N, h, w, 512) float32.
    """
    rows = image_table[image_table["path"].isin(list(images))].sort_values("path")
    extractor = feature_extractor(model, FEATURE_LAYER)
    image_size = image_size_of(model)
    batch_size = int(parameters["feature_batch_size"])

    unique_paths = rows.drop_duplicates("sha256")["path"].tolist()
    computed: dict[str, np.ndarray] = {}
    for start in range(0, len(unique_paths), batch_size):
        chunk = unique_paths[start : start + batch_size]
        batch = np.stack([preprocess_image_bytes(images[p](), image_size) for p in chunk])
        outputs = np.asarray(extractor.predict_on_batch(batch), dtype=np.float32)
        computed.update(zip(chunk, outputs, strict=True))
        logger.info("Frozen features: %d/%d images", len(computed), len(unique_paths))
    by_hash = dict(zip(rows.drop_duplicates("sha256")["sha256"], unique_paths, strict=True))
    features = np.stack([computed[by_hash[digest]] for digest in rows["sha256"]])
    return {
        "path": rows["path"].to_numpy(dtype=str),
        "split": rows["split"].to_numpy(dtype=str),
        "label": rows["label"].map(LABELS.index).to_numpy(dtype=np.int64),
        "sha256": rows["sha256"].to_numpy(dtype=str),
        "copy_in_train": rows["copy_in_train"].to_numpy(dtype=bool),
        "label_conflict": rows["label_conflict"].to_numpy(dtype=bool),
        "features": features,
    }


def _split(features: dict[str, np.ndarray], split: str) -> tuple[np.ndarray, np.ndarray]:
    # Files whose exact copies carry another label teach nothing but noise.
    mask = (features["split"] == split) & ~features["label_conflict"]
    return features["features"][mask], features["label"][mask]


def _history_for_mlflow(history: dict[str, list[float]]) -> dict[str, list[dict[str, float]]]:
    names = {
        "loss": "train_loss",
        "accuracy": "train_accuracy",
        "val_loss": "valid_loss",
        "val_accuracy": "valid_accuracy",
    }
    return {
        names[key]: [{"value": float(v), "step": epoch} for epoch, v in enumerate(values, 1)]
        for key, values in history.items()
        if key in names
    }


class _EpochLogger(keras.callbacks.Callback):
    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        shown = ", ".join(f"{k}={v:.4f}" for k, v in (logs or {}).items())
        logger.info("Epoch %d: %s", epoch + 1, shown)


def train_classifier(
    features: dict[str, np.ndarray], model: keras.Model, parameters: dict[str, Any]
) -> tuple[keras.Model, dict[str, list[dict[str, float]]]]:
    """Train the head on cached features; return the whole trained model and its history.

    The history (per-epoch loss and accuracy on train and valid) is shaped for kedro-mlflow's
    metrics history dataset.
    """
    keras.utils.set_random_seed(int(parameters["seed"]))
    trained = keras.models.clone_model(model)
    trained.set_weights(model.get_weights())
    head = model_after(trained, FEATURE_LAYER)
    head.compile(
        optimizer=keras.optimizers.Adam(learning_rate=float(parameters["learning_rate"])),
        loss="sparse_categorical_crossentropy",
        metrics=["accuracy"],
    )
    dropped = features["path"][features["label_conflict"] & (features["split"] == "train")]
    if len(dropped):
        logger.warning(
            "Not training on %d files with conflicting labels: %s", len(dropped), dropped
        )
    x_train, y_train = _split(features, "train")
    x_valid, y_valid = _split(features, "valid")
    if len(x_train) == 0:
        raise ValueError("no training images in the cached features")
    logger.info(
        "Training the head on %d images (validating on %d) for %d epochs",
        len(x_train),
        len(x_valid),
        parameters["epochs"],
    )
    history = head.fit(
        x_train,
        y_train,
        validation_data=(x_valid, y_valid) if len(x_valid) else None,
        epochs=int(parameters["epochs"]),
        batch_size=int(parameters["batch_size"]),
        shuffle=True,
        verbose=0,
        callbacks=[_EpochLogger()],
    )
    return trained, _history_for_mlflow(history.history)


def calibrate_classifier(
    model: keras.Model, features: dict[str, np.ndarray], parameters: dict[str, Any]
) -> tuple[keras.Model, dict[str, Any]]:
    """Temperature-scale the trained model on valid, so that it serves calibrated probabilities.

    Only valid is used (never test). Without valid images the model is left as it is (T = 1).
    """
    x_valid, y_valid = _split(features, "valid")
    if len(x_valid) == 0:
        logger.warning("No valid images: probabilities are NOT calibrated (temperature 1)")
        return model, {"temperature": 1.0, "fitted_on": None, "n_images": 0}
    probabilities = predict_from_features(model, x_valid, int(parameters["batch_size"]))
    temperature = fit_temperature(probabilities, y_valid)
    calibrated = scale_probabilities(probabilities, temperature)
    record = {
        "temperature": temperature,
        "fitted_on": "valid",
        "n_images": len(y_valid),
        "nll_before": negative_log_likelihood(probabilities, y_valid),
        "nll_after": negative_log_likelihood(calibrated, y_valid),
    }
    logger.info(
        "Temperature scaling on %d valid images: T = %.3f, NLL %.3f -> %.3f",
        len(y_valid), temperature, record["nll_before"], record["nll_after"],
    )  # fmt: skip
    return apply_temperature(model, temperature), record
