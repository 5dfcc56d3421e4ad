"""Classification metrics for the four labels, from true labels and predicted probabilities."""

from __future__ import annotations

import numpy as np
from sklearn.metrics import (
    confusion_matrix,
    precision_recall_fscore_support,
    roc_auc_score,
    roc_curve,
)

from chest_ct_classifier.images.labels import LABELS

LOSS_FLOOR = 1e-7
"""Probabilities are clipped here before the log, as Keras' cross-entropy does, so one
confidently wrong answer gives a large but finite loss."""


def negative_log_likelihood(
    probabilities: np.ndarray, labels: np.ndarray, floor: float = LOSS_FLOOR
) -> float:
    """Mean -log(probability of the true class): the loss training minimizes.

    Args:
        probabilities: (N, n_classes); labels: (N,) class indices.
        floor: the smallest probability taken at face value.
    """
    picked = np.asarray(probabilities)[np.arange(len(labels)), np.asarray(labels, dtype=int)]
    return float(-np.mean(np.log(np.clip(picked, floor, 1.0))))


def macro_f1(labels: np.ndarray, predicted: np.ndarray) -> float:
    """F1 averaged over all of LABELS with equal weight; a class never seen nor predicted
    scores 0 (it is not left out, so the score cannot look better on fewer classes)."""
    return float(macro_f1_of_rows(np.asarray(labels)[None], np.asarray(predicted)[None])[0])


def macro_f1_of_rows(labels: np.ndarray, predicted: np.ndarray) -> np.ndarray:
    """``macro_f1`` of every row of two (R, N) arrays of class indices at once.

    The same numbers as scikit-learn's ``f1_score(average="macro", zero_division=0)`` over
    ``labels=range(len(LABELS))`` (2 TP / (2 TP + FP + FN) per class, the mean of the classes),
    without its checks per call: the bootstrap scores a thousand resamples with it. Rows with
    no image score 0.

    Raises:
        ValueError: the two arrays are not of one (R, N) shape.
    """
    labels, predicted = np.asarray(labels), np.asarray(predicted)
    if labels.ndim != 2 or labels.shape != predicted.shape:
        raise ValueError(
            f"labels and predictions must be (R, N) arrays of one shape, got {labels.shape} "
            f"and {predicted.shape}"
        )
    per_class = np.zeros((len(labels), len(LABELS)))
    for index in range(len(LABELS)):
        is_true, is_predicted = labels == index, predicted == index
        true_positives = (is_true & is_predicted).sum(axis=1)
        denominator = is_true.sum(axis=1) + is_predicted.sum(axis=1)
        np.divide(2 * true_positives, denominator, out=per_class[:, index], where=denominator > 0)
    return per_class.mean(axis=1)


def classification_metrics(y_true: np.ndarray, probabilities: np.ndarray) -> dict:
    """Loss, accuracy, balanced accuracy, macro-F1, per-class precision/recall/F1/support, the
    confusion matrix (counts and row-normalized), and one-vs-rest ROC AUC and ROC curves.

    Args:
        y_true: (N,) integer class indices into LABELS.
        probabilities: (N, len(LABELS)) predicted class probabilities.

    Returns:
        A JSON-friendly dict (plain ints, floats, lists, None), every per-class entry in LABELS
        order or keyed by label:

        - ``confusion_matrix[i][j]`` counts images of true class i predicted as class j.
        - ``confusion_matrix_normalized[i][j]``: the same row divided by the number of images
          of true class i, so each row of a class present in ``y_true`` sums to 1 and its
          diagonal is that class's recall. The row of a class absent from ``y_true`` is all
          0.0 (as scikit-learn's ``normalize="true"``); its ``per_class`` support is 0.
        - ``balanced_accuracy``: mean recall over the classes present in ``y_true`` (the same
          as scikit-learn's ``balanced_accuracy_score``, without its warning when a class is
          predicted but absent from ``y_true``).
        - ``roc_auc``: ``{"per_class": {label: float | None}, "macro": float | None}``, each
          class one-vs-rest on its probability column. A class with no positive or no negative
          image has no ROC curve: its AUC is None and it is left out of the macro mean, which
          is None when no class has an AUC.
        - ``roc_curve``: ``{label: {"fpr": [...], "tpr": [...]}}`` one-vs-rest, with
          scikit-learn's ``drop_intermediate=True``, only for classes whose AUC is defined.
          Thresholds are left out (the first one is infinite, which JSON cannot hold).

    Raises:
        ValueError: when there are no images.
    """
    y_true = np.asarray(y_true, dtype=int)
    probabilities = np.asarray(probabilities, dtype=np.float64)
    if len(y_true) == 0:
        raise ValueError("no images to evaluate")
    y_pred = probabilities.argmax(axis=1)
    classes = list(range(len(LABELS)))
    precision, recall, f1, support = precision_recall_fscore_support(
        y_true, y_pred, labels=classes, zero_division=0
    )
    roc_auc, curves = _one_vs_rest_roc(y_true, probabilities)
    defined = [auc for auc in roc_auc.values() if auc is not None]
    return {
        "n_images": len(y_true),
        "loss": negative_log_likelihood(probabilities, y_true),
        "accuracy": float(np.mean(y_pred == y_true)),
        "balanced_accuracy": float(np.mean(recall[support > 0])),
        "macro_f1": macro_f1(y_true, y_pred),
        "per_class": {
            label: {
                "precision": float(precision[i]),
                "recall": float(recall[i]),
                "f1": float(f1[i]),
                "support": int(support[i]),
            }
            for i, label in enumerate(LABELS)
        },
        "labels": list(LABELS),
        "confusion_matrix": confusion_matrix(y_true, y_pred, labels=classes).tolist(),
        "confusion_matrix_normalized": confusion_matrix(
            y_true, y_pred, labels=classes, normalize="true"
        ).tolist(),
        "roc_auc": {
            "per_class": roc_auc,
            "macro": float(np.mean(defined)) if defined else None,
        },
        "roc_curve": curves,
    }


def _one_vs_rest_roc(
    y_true: np.ndarray, probabilities: np.ndarray
) -> tuple[dict[str, float | None], dict[str, dict[str, list[float]]]]:
    """Per-class one-vs-rest AUC (None where undefined) and ROC curves (only where defined).

    scikit-learn is not called for a class with no positive or no negative image: it would warn
    or raise there, and the AUC is undefined anyway.
    """
    roc_auc: dict[str, float | None] = {}
    curves: dict[str, dict[str, list[float]]] = {}
    for i, label in enumerate(LABELS):
        positive = y_true == i
        if positive.all() or not positive.any():
            roc_auc[label] = None
            continue
        scores = probabilities[:, i]
        roc_auc[label] = float(roc_auc_score(positive, scores))
        fpr, tpr, _ = roc_curve(positive, scores, drop_intermediate=True)
        curves[label] = {"fpr": fpr.tolist(), "tpr": tpr.tolist()}
    return roc_auc, curves
