"""Out-of-distribution detection: is this image like the chest CT slices the model learned?

The score is the Mahalanobis distance of the head's input vector (``FEATURE_LAYER``) to the
nearest class mean, with one covariance shared by the classes (Lee et al., 2018), estimated with
Ledoit-Wolf shrinkage (the vector has more dimensions than there are training images). Features
are standardized first with the training images' mean and spread. The threshold is the score a
target share of held-out chest CT slices exceed: the false-rejection rate is chosen, not found.

A detector names the model whose features it was fitted on (the weights' fingerprint): a
detector is never applied to another model.

:func:`check` is the one rule every answer follows (the app, batch inference, the registered
model and the evaluation's measurements): the cheap input checks first
(``images.plausibility``), then the score; :func:`answer_status` turns that and the answer's
top probability into the status an answer carries.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from functools import cached_property

import numpy as np

logger = logging.getLogger(__name__)

METHOD = "mahalanobis_shared_covariance"

OK, UNCERTAIN, OUT_OF_DISTRIBUTION = "ok", "uncertain", "out_of_distribution"
STATUSES = (OK, UNCERTAIN, OUT_OF_DISTRIBUTION)


@dataclass(frozen=True)
class OodDetector:
    """Attributes:
    center: (d,) mean of the training features; scale: (d,) their standard deviation.
    class_means: (k, d) mean standardized feature of each class.
    precision: (d, d) inverse of the shared, shrunk covariance of standardized features.
    threshold: scores above it are out of distribution.
    target_false_rejection: the share of held-out in-distribution images above ``threshold``.
    model_fingerprint: the weights the features came from (``architecture.model_fingerprint``).
    """

    center: np.ndarray
    scale: np.ndarray
    class_means: np.ndarray
    precision: np.ndarray
    threshold: float
    target_false_rejection: float
    model_fingerprint: str

    def __post_init__(self) -> None:
        # Float64 and read-only once built: scores() keeps products of these arrays, and one
        # detector is shared by every request thread of the app.
        for name in ("center", "scale", "class_means", "precision"):
            array = np.array(getattr(self, name), dtype=np.float64)
            array.setflags(write=False)
            object.__setattr__(self, name, array)

    def scores(self, features: np.ndarray) -> np.ndarray:
        """(n,) distance of each (n, d) feature vector to its nearest class mean."""
        z = (np.asarray(features, np.float64) - self.center) / self.scale
        # (z - m) P (z - m) = zPz - zPm - mPz + mPm for every class mean m at once: one pass
        # over P (d x d, 18 MB at d = 1536) instead of one per class (4.0 -> 1.0 ms for a
        # batch of 8, Xeon-AMX). The two cross terms stay apart, so the expansion is exact for
        # any P; it agrees with the direct form to rounding, not to the last bit.
        zp = z @ self.precision
        mp, mpm = self._means_through_precision
        squared = (zp * z).sum(axis=1)[:, None] - zp @ self.class_means.T - z @ mp.T + mpm
        return np.sqrt(np.maximum(squared.min(axis=1), 0.0))

    @cached_property
    def _means_through_precision(self) -> tuple[np.ndarray, np.ndarray]:
        """mP (k, d) and mPm (k,) of the class means m: fixed once fitted."""
        mp = self.class_means @ self.precision
        return mp, (mp * self.class_means).sum(axis=1)

    def __deepcopy__(self, memo: dict) -> OodDetector:
        # Read-only once fitted; the served MLflow model deep-copies its inputs on every
        # request, and a copy would cost time and defeat the per-object caches.
        return self

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


MIN_SCALE_FRACTION = 0.1
"""Each feature's spread is floored at this fraction of the median spread. A feature that
barely varies on the training images (a ReLU channel almost never on) would otherwise turn a
tiny change into a huge distance: with the floor, held-out slices of a small model scored
20-130 instead of up to 10^7 (docs/results.md)."""


def fit_detector(
    features: np.ndarray,
    labels: np.ndarray,
    held_out: np.ndarray,
    target_false_rejection: float,
    model_fingerprint: str,
    min_scale_fraction: float = MIN_SCALE_FRACTION,
) -> OodDetector:
    """Fit on training features (n, d) with their class labels; set the threshold on held-out
    in-distribution features so that ``target_false_rejection`` of them score above it."""
    if len(held_out) == 0:
        raise ValueError("no held-out images to set the out-of-distribution threshold on")
    features = np.asarray(features, np.float64)
    center = features.mean(axis=0)
    spread = features.std(axis=0)
    varying = spread[spread > 0]
    floor = min_scale_fraction * float(np.median(varying)) if len(varying) else 0.0
    scale = np.maximum(spread, max(floor, 1e-6))
    z = (features - center) / scale
    classes = np.unique(labels)
    class_means = np.stack([z[labels == c].mean(axis=0) for c in classes])
    within = z - class_means[np.searchsorted(classes, labels)]
    # Imported here: fitting is training's job; serving only scores (and has no scikit-learn).
    from sklearn.covariance import LedoitWolf  # noqa: PLC0415

    precision = LedoitWolf(assume_centered=True).fit(within).precision_
    unset = OodDetector(
        center, scale, class_means, precision, np.inf, target_false_rejection, model_fingerprint
    )
    threshold = float(
        np.quantile(unset.scores(held_out), 1.0 - target_false_rejection, method="higher")
    )
    return dataclasses.replace(unset, threshold=threshold)


@dataclass(frozen=True)
class OodCheck:
    """Whether one image looks like the chest CT slices the model learned, and why not.

    Attributes:
        out_of_distribution: True when the input checks or the score say it does not.
        score: the detector's score (None without a usable detector).
        threshold: the detector's threshold (None without one).
        reason: why it is out of distribution, or why the score was not checked; None when
            it was checked and passed.
    """

    out_of_distribution: bool
    score: float | None
    threshold: float | None
    reason: str | None

    def as_dict(self) -> dict[str, float | str | None]:
        return {"score": self.score, "threshold": self.threshold, "reason": self.reason}


NOT_CHECKED = (
    "not checked: there is no out-of-distribution detector for this model, so whether the image "
    "is a chest CT slice like those it learned is unknown"
)


def check(detector: OodDetector | None, input_problem: str | None, score: float | None) -> OodCheck:
    """The verdict for one image: ``input_problem`` (``images.plausibility.implausibility``),
    then its ``score`` against the ``detector``'s threshold (None: no usable detector)."""
    if detector is None or score is None:
        return OodCheck(input_problem is not None, None, None, input_problem or NOT_CHECKED)
    score, threshold = float(score), float(detector.threshold)
    if input_problem is not None:
        return OodCheck(True, score, threshold, input_problem)
    if not np.isfinite(score) or score > threshold:
        return OodCheck(True, score, threshold, (
            f"unlike the chest CT slices the model learned: its features are {score:.1f} from "
            f"the nearest class, beyond the threshold of {threshold:.1f}"
        ))  # fmt: skip
    return OodCheck(False, score, threshold, None)


def answer_status(top_probability: float, ood: OodCheck, uncertain_below: float) -> str:
    """``out_of_distribution`` (no label is given), else ``uncertain`` when the top probability
    is below ``uncertain_below``, else ``ok``."""
    if ood.out_of_distribution:
        return OUT_OF_DISTRIBUTION
    return UNCERTAIN if top_probability < uncertain_below else OK


def usable_detector(
    detector: OodDetector | None, model_fingerprint: str | None
) -> OodDetector | None:
    """``detector`` when it was fitted on the model of ``model_fingerprint``; None (with a
    warning in the log) when it is missing or belongs to another model."""
    if detector is None:
        logger.warning("No out-of-distribution detector: answers say the check was not made")
        return None
    if detector.model_fingerprint != model_fingerprint:
        logger.warning(
            "The out-of-distribution detector was fitted on other weights (%s) than the model's "
            "(%s): not used, answers say the check was not made",
            detector.model_fingerprint,
            model_fingerprint,
        )
        return None
    return detector
