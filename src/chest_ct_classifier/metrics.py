"""Classification metrics for the four labels, from true labels and predicted probabilities."""

from __future__ import annotations

import numpy as np
from sklearn.metrics import confusion_matrix, f1_score, precision_recall_fscore_support

from chest_ct_classifier.labels import LABELS

_EPSILON = 1e-7


def classification_metrics(y_true: np.ndarray, probabilities: np.ndarray) -> dict:
    """Loss, accuracy, macro-F1, per-class precision/recall/F1/support and the confusion matrix.

    Args:
        y_true: (N,) integer class indices into LABELS.
        probabilities: (N, len(LABELS)) predicted class probabilities.

    Returns:
        A JSON-friendly dict. ``confusion_matrix[i][j]`` counts images of true class i predicted
        as class j, in LABELS order.
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
    true_class_probability = probabilities[np.arange(len(y_true)), y_true]
    return {
        "n_images": len(y_true),
        "loss": float(-np.mean(np.log(np.clip(true_class_probability, _EPSILON, 1.0)))),
        "accuracy": float(np.mean(y_pred == y_true)),
        "macro_f1": float(
            f1_score(y_true, y_pred, labels=classes, average="macro", zero_division=0)
        ),
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
    }
