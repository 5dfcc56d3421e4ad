"""Evaluation on valid and, when the data has one, test: metrics, confusion matrices, registry."""

from __future__ import annotations

import logging
from typing import Any

import keras
import matplotlib

matplotlib.use("Agg")  # headless: figures are written to files, never shown
import matplotlib.pyplot as plt
import numpy as np

from chest_ct_classifier.labels import DISPLAY_NAMES, LABELS
from chest_ct_classifier.metrics import classification_metrics
from chest_ct_classifier.model_architecture import FEATURE_LAYER, model_after

logger = logging.getLogger(__name__)

EVALUATED_SPLITS = ("valid", "test")


def evaluate_classifier(
    model: keras.Model,
    features: dict[str, np.ndarray],
    weights_info: dict[str, Any],
    parameters: dict[str, Any],
) -> dict[str, Any]:
    """Metrics of the trained model on each evaluated split present in the data.

    The trained head is applied to the cached output of the frozen base: the same computation
    as the whole model on the images, without running VGG16 again.
    """
    head = model_after(model, FEATURE_LAYER)
    batch_size = int(parameters["batch_size"])
    report: dict[str, Any] = {"weights": weights_info, "splits": {}}
    for split in EVALUATED_SPLITS:
        mask = features["split"] == split
        if not mask.any():
            logger.info("No %s images: %s metrics skipped", split, split)
            continue
        x = features["features"][mask]
        probabilities = np.concatenate(
            [head.predict_on_batch(x[i : i + batch_size]) for i in range(0, len(x), batch_size)]
        )
        metrics = classification_metrics(features["label"][mask], probabilities)
        report["splits"][split] = metrics
        logger.info(
            "%s: accuracy %.3f, macro-F1 %.3f, loss %.3f on %d images",
            split,
            metrics["accuracy"],
            metrics["macro_f1"],
            metrics["loss"],
            metrics["n_images"],
        )
    if not report["splits"]:
        raise ValueError("no valid or test images to evaluate on")
    return report


def metrics_for_mlflow(report: dict[str, Any]) -> dict[str, dict[str, float]]:
    """Flat scalar metrics (``valid_accuracy``, ``test_f1_normal``, ...) for MLflow."""
    flat: dict[str, float] = {}
    for split, metrics in report["splits"].items():
        for key in ("accuracy", "macro_f1", "loss"):
            flat[f"{split}_{key}"] = metrics[key]
        for label, scores in metrics["per_class"].items():
            for key in ("precision", "recall", "f1"):
                flat[f"{split}_{key}_{label}"] = scores[key]
    return {name: {"value": float(value), "step": 0} for name, value in flat.items()}


def plot_confusion_matrices(report: dict[str, Any]) -> plt.Figure:
    """One confusion matrix per evaluated split, side by side (counts, rows = true class)."""
    splits = list(report["splits"])
    figure, axes = plt.subplots(1, len(splits), figsize=(6.5 * len(splits), 6), squeeze=False)
    names = [DISPLAY_NAMES[label].replace(" ", "\n", 1) for label in LABELS]
    for axis, split in zip(axes[0], splits, strict=True):
        matrix = np.asarray(report["splits"][split]["confusion_matrix"])
        axis.imshow(matrix, cmap="Blues")
        for (row, column), count in np.ndenumerate(matrix):
            colour = "white" if count > matrix.max() / 2 else "black"
            axis.text(column, row, str(count), ha="center", va="center", color=colour)
        axis.set_xticks(range(len(LABELS)), names, fontsize=8)
        axis.set_yticks(range(len(LABELS)), names, fontsize=8)
        axis.set_xlabel("predicted")
        axis.set_ylabel("true")
        metrics = report["splits"][split]
        axis.set_title(
            f"{split} ({metrics['n_images']} images): accuracy {metrics['accuracy']:.2f}, "
            f"macro-F1 {metrics['macro_f1']:.2f}",
            fontsize=10,
        )
    figure.suptitle(f"Confusion matrices (VGG16 weights: {report['weights']['used']})")
    figure.tight_layout()
    return figure


def model_for_registry(model: keras.Model) -> keras.Model:
    """The trained model, handed to MLflow to log and register (identity)."""
    return model
