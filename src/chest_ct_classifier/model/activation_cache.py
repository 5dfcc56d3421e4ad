"""Reading the cached activations that the training pipeline's ``cache_activations`` writes.

The cache holds one entry per *content* (byte-identical files share one) and row arrays for
every usable file, with ``content`` mapping a row to its content.
"""

from __future__ import annotations

from typing import Any

import keras
import numpy as np

from chest_ct_classifier.model.architecture import CACHED_LAYER, model_after
from chest_ct_classifier.model.two_phase_training import CachedImages, predict_in_batches


def contents_of(cache: dict[str, Any], rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Distinct contents among the selected rows (boolean mask) and the label of each."""
    content, first = np.unique(cache["content"][rows], return_index=True)
    return content, cache["label"][rows][first]


def cached_images(
    cache: dict[str, Any], content: np.ndarray, labels: np.ndarray, with_views: bool
) -> CachedImages:
    """The cached activations of some contents, with their augmented views if asked."""
    if not with_views:
        return CachedImages(cache["activations"][content], cache["features"][content], labels)
    position = {c: i for i, c in enumerate(cache["view_content"])}
    missing = [int(c) for c in content if c not in position]
    if missing:
        raise ValueError(f"no cached views for contents {missing[:5]}")
    at = np.array([position[c] for c in content], dtype=int).reshape(-1)
    return CachedImages(
        cache["activations"][content],
        cache["features"][content],
        labels,
        cache["view_activations"][at],
        cache["view_features"][at],
    )


def content_probabilities(
    model: keras.Model, cache: dict[str, Any], content: np.ndarray, batch_size: int
) -> np.ndarray:
    """The model's class probabilities for some contents, from their cached block-4
    activations: the same computation as the whole model on the images."""
    return predict_in_batches(
        model_after(model, CACHED_LAYER), cache["activations"][content], batch_size
    )


def row_probabilities(
    model: keras.Model, cache: dict[str, Any], rows: np.ndarray, batch_size: int
) -> np.ndarray:
    """The model's class probabilities for the selected rows (boolean mask), each distinct
    content computed once."""
    content, inverse = np.unique(cache["content"][rows], return_inverse=True)
    return content_probabilities(model, cache, content, batch_size)[inverse]
