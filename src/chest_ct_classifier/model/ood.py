"""Out-of-distribution detection: is this image like the chest CT slices the model learned?

The score is the Mahalanobis distance of the head's input vector (``FEATURE_LAYER``) to the
nearest class mean, with one covariance shared by the classes (Lee et al., 2018), estimated with
Ledoit-Wolf shrinkage (the vector has more dimensions than there are training images). Features
are standardized first with the training images' mean and spread. The threshold is the score a
target share of held-out chest CT slices exceed: the false-rejection rate is chosen, not found.

A detector names the model whose features it was fitted on (the weights' fingerprint): a
detector is never applied to another model.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
from sklearn.covariance import LedoitWolf

METHOD = "mahalanobis_shared_covariance"


@dataclass(frozen=True)
class OodDetector:
    """Attributes:
    center: (d,) mean of the training features; scale: (d,) their standard deviation.
    class_means: (k, d) mean standardized feature of each class.
    precision: (d, d) inverse of the shared, shrunk covariance of standardized features.
    threshold: scores above it are out of distribution.
    target_false_rejection: the share of held-out in-distribution images above ``threshold``.
    model_fingerprint: the weights the features came from (``numeric_precision``).
    """

    center: np.ndarray
    scale: np.ndarray
    class_means: np.ndarray
    precision: np.ndarray
    threshold: float
    target_false_rejection: float
    model_fingerprint: str

    def scores(self, features: np.ndarray) -> np.ndarray:
        """(n,) distance of each (n, d) feature vector to its nearest class mean."""
        z = (np.asarray(features, np.float64) - self.center) / self.scale
        distances = []
        for mean in self.class_means:
            diff = z - mean
            distances.append(np.einsum("ij,jk,ik->i", diff, self.precision, diff))
        return np.sqrt(np.maximum(np.min(distances, axis=0), 0.0))

    def arrays(self) -> dict[str, np.ndarray]:
        """Every field as an array: what the ``.npz`` file holds."""
        return {f.name: np.asarray(getattr(self, f.name)) for f in dataclasses.fields(self)}

    @classmethod
    def from_arrays(cls, arrays: Mapping[str, np.ndarray]) -> OodDetector:
        names = {f.name for f in dataclasses.fields(cls)}
        if set(arrays) != names:
            raise ValueError(f"not an out-of-distribution detector: fields {sorted(arrays)}")
        values = {name: np.asarray(arrays[name]) for name in names}
        for name in ("threshold", "target_false_rejection"):
            values[name] = float(values[name])
        values["model_fingerprint"] = str(values["model_fingerprint"])
        return cls(**values)


def fit_detector(
    features: np.ndarray,
    labels: np.ndarray,
    held_out: np.ndarray,
    target_false_rejection: float,
    model_fingerprint: str,
) -> OodDetector:
    """Fit on training features (n, d) with their class labels; set the threshold on held-out
    in-distribution features so that ``target_false_rejection`` of them score above it."""
    if len(held_out) == 0:
        raise ValueError("no held-out images to set the out-of-distribution threshold on")
    features = np.asarray(features, np.float64)
    center = features.mean(axis=0)
    scale = features.std(axis=0) + 1e-6
    z = (features - center) / scale
    classes = np.unique(labels)
    class_means = np.stack([z[labels == c].mean(axis=0) for c in classes])
    within = z - class_means[np.searchsorted(classes, labels)]
    precision = LedoitWolf(assume_centered=True).fit(within).precision_
    unset = OodDetector(
        center, scale, class_means, precision, np.inf, target_false_rejection, model_fingerprint
    )
    threshold = float(
        np.quantile(unset.scores(held_out), 1.0 - target_false_rejection, method="higher")
    )
    return dataclasses.replace(unset, threshold=threshold)
