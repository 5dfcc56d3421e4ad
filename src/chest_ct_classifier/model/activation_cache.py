"""The activation cache: what the frozen layers computed once, for training and evaluation.

``cache_activations`` (training pipeline) builds an :class:`ActivationCache`; the catalog's
``ActivationCacheDataset`` stores it as an ``.npz`` of plain arrays (never a pickle: loading
runs no code). Byte-identical files share one *content*: rows describe files, contents hold the
activations, ``content`` maps a row to its content.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass

import keras
import numpy as np

from chest_ct_classifier.model.architecture import (
    CACHED_LAYER,
    FEATURE_LAYER,
    model_after,
    model_fingerprint,
)
from chest_ct_classifier.model.two_phase_training import (
    CachedImages,
    cached_features,
    cached_view_features,
    predict_in_batches,
)


@dataclass(frozen=True)
class ActivationCache:
    """R usable files (rows, sorted by path), C distinct contents, A contents with V augmented
    views each (the train and valid contents without a label conflict).

    Attributes:
        path: (R,) str, the file's path inside the source.
        split: (R,) str, ``train``, ``valid`` or ``test``.
        label: (R,) int64, index into LABELS.
        sha256: (R,) str, of the file's bytes.
        group: (R,) int64, near-duplicate group (data ingestion).
        copy_in_train: (R,) bool, an exact or near copy of the file is in train.
        label_conflict: (R,) bool, an exact copy carries another label.
        content: (R,) int64, the row's content index into ``activations``.
        activations: (C, h, w, c) float32, block 4's output (``CACHED_LAYER``).
        features: (C, d) float32, the head's input vector with block 5 frozen.
        view_content: (A,) int64, the contents that have augmented views.
        view_activations: (A, V, h, w, c) float16, block 4's output of each view.
        view_features: (A, V, d) float16, the head's input vector of each view.
        features_fingerprint: () str, :func:`features_fingerprint` of the model that computed
            ``features`` and ``view_features``.
    """

    path: np.ndarray
    split: np.ndarray
    label: np.ndarray
    sha256: np.ndarray
    group: np.ndarray
    copy_in_train: np.ndarray
    label_conflict: np.ndarray
    content: np.ndarray
    activations: np.ndarray
    features: np.ndarray
    view_content: np.ndarray
    view_activations: np.ndarray
    view_features: np.ndarray
    features_fingerprint: np.ndarray

    def __post_init__(self) -> None:
        rows = {name: len(getattr(self, name)) for name in _ROW_FIELDS}
        if len(set(rows.values())) > 1:
            raise ValueError(f"the cache's row arrays differ in length: {rows}")
        if len(self.features) != len(self.activations):
            raise ValueError("the cache has a different number of activations and features")
        if not len(self.view_content) == len(self.view_activations) == len(self.view_features):
            raise ValueError("the cache's view arrays differ in length")
        if len(self.content) and self.content.max() >= len(self.activations):
            raise ValueError("a row of the cache points to a content it does not hold")

    @property
    def n_views(self) -> int:
        return int(self.view_activations.shape[1]) if self.view_activations.ndim > 1 else 0

    def arrays(self) -> dict[str, np.ndarray]:
        """Every field by name: what the ``.npz`` file holds."""
        return {field.name: getattr(self, field.name) for field in dataclasses.fields(self)}

    @classmethod
    def from_arrays(cls, arrays: Mapping[str, np.ndarray]) -> ActivationCache:
        """The cache from its named arrays; a missing or unknown name is an error."""
        names = {field.name for field in dataclasses.fields(cls)}
        if set(arrays) != names:
            raise ValueError(
                f"not an activation cache: missing {sorted(names - set(arrays))}, "
                f"unknown {sorted(set(arrays) - names)}"
            )
        return cls(**{name: np.asarray(arrays[name]) for name in names})

    def with_rows(self, **fields: np.ndarray) -> ActivationCache:
        """A copy with some fields replaced (tests poison or relabel rows with it)."""
        return dataclasses.replace(self, **fields)


_ROW_FIELDS = (
    "path", "split", "label", "sha256", "group", "copy_in_train", "label_conflict", "content",
)  # fmt: skip


def contents_of(cache: ActivationCache, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Distinct contents among the selected rows (boolean mask) and the label of each."""
    content, first = np.unique(cache.content[rows], return_index=True)
    return content, cache.label[rows][first]


def cached_images(
    cache: ActivationCache, content: np.ndarray, labels: np.ndarray, with_views: bool
) -> CachedImages:
    """The cached activations of some contents, with their augmented views if asked."""
    if not with_views:
        return CachedImages(cache.activations[content], cache.features[content], labels)
    position = {c: i for i, c in enumerate(cache.view_content)}
    missing = [int(c) for c in content if c not in position]
    if missing:
        raise ValueError(f"no cached views for contents {missing[:5]}")
    at = np.array([position[c] for c in content], dtype=int).reshape(-1)
    return CachedImages(
        cache.activations[content],
        cache.features[content],
        labels,
        cache.view_activations[at],
        cache.view_features[at],
    )


def features_fingerprint(model: keras.Model) -> str:
    """``model_fingerprint`` of the layers that make the head's input vector of block 4's output
    (block 5): two models with the same one make the same vectors of the same activations."""
    return model_fingerprint(model_after(model, CACHED_LAYER, until=FEATURE_LAYER))


def _cached_features_are_the_models(model: keras.Model, cache: ActivationCache) -> bool:
    """Whether the cache's head input vectors are the model's: its block 5 is the one that
    computed them (phase 2 did not fine-tune it). Then they need not be computed again."""
    return str(cache.features_fingerprint) == features_fingerprint(model)


def content_features(
    model: keras.Model, cache: ActivationCache, content: np.ndarray, batch_size: int
) -> np.ndarray:
    """The model's head input vectors for some contents: the cache's own when they are the
    model's (measured: the same bits as computing them again), else computed from the cached
    block-4 activations."""
    if _cached_features_are_the_models(model, cache):
        return cache.features[content]
    return cached_features(model, cache.activations[content], batch_size)


def content_view_features(
    model: keras.Model, cache: ActivationCache, at: np.ndarray, batch_size: int
) -> np.ndarray:
    """:func:`content_features` of the augmented views at positions ``at`` of
    ``cache.view_content``: (m, V, d). The cache's are the float16 of the vectors training
    used; computed again (block 5 fine-tuned) they come from the float16 block-4 views."""
    if _cached_features_are_the_models(model, cache):
        return cache.view_features[at].astype(np.float32)
    return cached_view_features(model, cache.view_activations[at], batch_size)


def content_probabilities(
    model: keras.Model, cache: ActivationCache, content: np.ndarray, batch_size: int
) -> np.ndarray:
    """The model's class probabilities for some contents, from their cached activations: the
    same computation as the whole model on the images."""
    return predict_in_batches(
        model_after(model, FEATURE_LAYER),
        content_features(model, cache, content, batch_size),
        batch_size,
    )


def row_probabilities(
    model: keras.Model, cache: ActivationCache, rows: np.ndarray, batch_size: int
) -> np.ndarray:
    """The model's class probabilities for the selected rows (boolean mask), each distinct
    content computed once."""
    content, inverse = np.unique(cache.content[rows], return_inverse=True)
    return content_probabilities(model, cache, content, batch_size)[inverse]
