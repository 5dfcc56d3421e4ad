"""How good the served model measured on held-out images: what the app tells users beside every
answer, so a probability is never read without the model's track record.

Taken from the evaluation of the same training run: the project's ``metrics.json`` (file
serving) or the registered version's run metrics (registry serving). The test split when it was
evaluated, else valid; None when there is no evaluation of this model.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from chest_ct_classifier.images.labels import LABELS


def from_metrics_file(path: Path, model_path: Path) -> dict[str, Any] | None:
    """The record in an evaluation report, if it is about this model file: written after it
    (evaluation runs after training; a model trained later has no report yet)."""
    try:
        if path.stat().st_mtime < model_path.stat().st_mtime:
            return None
        splits = json.loads(path.read_text())["splits"]
        split = "test" if "test" in splits else "valid"
        scores = splits[split]
        return {
            "split": split,
            "images": int(scores["n_images"]),
            "accuracy": float(scores["accuracy"]),
            "macro_f1": float(scores["macro_f1"]),
            "recall": {label: float(scores["per_class"][label]["recall"]) for label in LABELS},
            "ece": float(scores["ece"]),
        }
    except (OSError, ValueError, KeyError, TypeError):
        return None


def from_run_metrics(metrics: Mapping[str, float]) -> dict[str, Any] | None:
    """The record in an MLflow run's metrics (``test_accuracy``, ``test_recall_<label>``...)."""
    for split in ("test", "valid"):
        names = [f"{split}_accuracy", f"{split}_macro_f1", f"{split}_ece"]
        names += [f"{split}_recall_{label}" for label in LABELS]
        if all(name in metrics for name in names):
            return {
                "split": split,
                "images": None,
                "accuracy": float(metrics[f"{split}_accuracy"]),
                "macro_f1": float(metrics[f"{split}_macro_f1"]),
                "recall": {label: float(metrics[f"{split}_recall_{label}"]) for label in LABELS},
                "ece": float(metrics[f"{split}_ece"]),
            }
    return None
