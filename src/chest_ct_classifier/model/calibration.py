"""Temperature scaling: probabilities that mean what they say.

One scalar T divides the logits before the softmax; T is fitted by minimizing the negative
log-likelihood on held-out data (Guo et al., 2017). It never changes which class wins.
"""

from __future__ import annotations

from typing import Any

import keras
import numpy as np
from scipy.optimize import minimize_scalar

from chest_ct_classifier.model.architecture import OUTPUT_LAYER
from chest_ct_classifier.scoring.metrics import negative_log_likelihood

# Finer than the reported loss's floor: scaling by T moves tiny probabilities by orders of
# magnitude, and the fit must see where they really are.
_EPSILON = 1e-12


def scale_probabilities(probabilities: np.ndarray, temperature: float) -> np.ndarray:
    """softmax(log(p) / T): the probabilities a softmax model gives with its logits divided by T.
    At T = 1 they are ``probabilities`` themselves, the same array and not a copy (the round
    trip through logarithms would move their last digits): do not write to the result."""
    if temperature == 1.0:
        return probabilities
    logits = np.log(np.clip(probabilities, _EPSILON, 1.0)) / temperature
    logits -= logits.max(axis=1, keepdims=True)
    scaled = np.exp(logits)
    return scaled / scaled.sum(axis=1, keepdims=True)


def calibration_loss(probabilities: np.ndarray, labels: np.ndarray) -> float:
    """The negative log-likelihood that :func:`fit_temperature` minimizes."""
    return negative_log_likelihood(probabilities, labels, floor=_EPSILON)


def fit_temperature(probabilities: np.ndarray, labels: np.ndarray) -> float:
    """The temperature in [0.05, 20] that minimizes the NLL of the labels."""
    result = minimize_scalar(
        lambda log_t: calibration_loss(
            scale_probabilities(probabilities, float(np.exp(log_t))), labels
        ),
        bounds=(np.log(0.05), np.log(20.0)),
        method="bounded",
    )
    return float(np.exp(result.x))


def _binned(probabilities: np.ndarray, n_bins: int) -> tuple[np.ndarray, np.ndarray]:
    """Each answer's confidence (float64) and its one-hot equal-width bin, (n,) and (n, n_bins)."""
    if len(probabilities) == 0:
        raise ValueError("no answers to bin")
    confidence = probabilities.max(axis=1).astype(np.float64)
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    bins = np.clip(np.digitize(confidence, edges[1:-1], right=True), 0, n_bins - 1)
    return confidence, np.eye(n_bins)[bins]


def _right(probabilities: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """1.0 for each answer whose top class is its label, else 0.0 (float64, as ``_binned``)."""
    return (probabilities.argmax(axis=1) == labels).astype(np.float64)


def _ece(correct: np.ndarray, confidence: np.ndarray, members: np.ndarray) -> np.ndarray:
    """ECE of each (rows, n) row of right/wrong answers, the confidences binned by ``members``.
    Rows of one call are summed alike: equal rows give equal bits."""
    counts = members.sum(axis=0)
    filled = counts > 0
    accuracy = (correct @ members)[..., filled] / counts[filled]
    gap = np.abs(accuracy - (confidence @ members)[filled] / counts[filled])
    return (gap * counts[filled]).sum(axis=-1) / len(confidence)


def reliability_bins(probabilities: np.ndarray, labels: np.ndarray, n_bins: int = 15) -> dict:
    """Per equal-width confidence bin: mean confidence, accuracy and count (None when empty)."""
    confidence, members = _binned(probabilities, n_bins)
    correct = _right(probabilities, labels)
    counts = members.sum(axis=0)

    def per_bin(totals: np.ndarray) -> list[float | None]:
        return [float(t / n) if n else None for t, n in zip(totals, counts, strict=True)]

    return {
        "edges": np.linspace(0.0, 1.0, n_bins + 1).tolist(),
        "confidence": per_bin(confidence @ members),
        "accuracy": per_bin(correct @ members),
        "count": [int(n) for n in counts],
    }


def expected_calibration_error(
    probabilities: np.ndarray, labels: np.ndarray, n_bins: int = 15
) -> float:
    """ECE: the gap between confidence and accuracy, averaged over equal-width confidence bins."""
    confidence, members = _binned(probabilities, n_bins)
    correct = _right(probabilities, labels)
    return float(_ece(correct[None], confidence, members)[0])


def _calibrated_draws(
    probabilities: np.ndarray, n_bins: int, resamples: int, seed: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The confidences, their bins, and ``resamples`` rows of right/wrong answers of a perfectly
    calibrated model with these confidences: each answer right with its confidence's
    probability (consistency resampling, Bröcker and Smith, 2007)."""
    confidence, members = _binned(probabilities, n_bins)
    rng = np.random.default_rng(seed)
    right = (rng.random((resamples, len(confidence))) < confidence).astype(np.float64)
    return confidence, members, right


def ece_if_calibrated(
    probabilities: np.ndarray,
    labels: np.ndarray,
    n_bins: int = 15,
    resamples: int = 1000,
    confidence: float = 0.95,
    seed: int = 0,
) -> dict[str, Any]:
    """The ECE a perfectly calibrated model with the same confidences would read on as many
    images, and whether the observed one is above it.

    On a few hundred images a calibrated model's ECE is not 0: bins of a few answers miss their
    confidence by chance. The observed ECE is evidence of miscalibration only where few of the
    draws read as much.

    Returns:
        ``{"resamples", "confidence", "mean", "high", "p_value", "above"}``: the draws' mean
        ECE; the ECE that ``confidence`` of them stay at or below (one-sided: only an excess
        says the probabilities are off); the share of draws reading at least the observed ECE,
        the observation counted ((k + 1) / (resamples + 1): never 0); and whether the observed
        ECE is above ``high``.
    """
    top, members, right = _calibrated_draws(probabilities, n_bins, resamples, seed)
    correct = _right(probabilities, labels)
    # one call: a draw equal to the observed answers reads the same bits, so ties count
    eces = _ece(np.vstack([correct, right]), top, members)
    observed, drawn = eces[0], eces[1:]
    high = float(np.percentile(drawn, 100 * confidence))
    return {
        "resamples": resamples,
        "confidence": confidence,
        "mean": float(drawn.mean()),
        "high": high,
        "p_value": float((np.sum(drawn >= observed) + 1) / (resamples + 1)),
        "above": bool(observed > high),
    }


def reliability_bands(
    probabilities: np.ndarray,
    n_bins: int = 15,
    resamples: int = 1000,
    confidence: float = 0.95,
    seed: int = 0,
) -> dict[str, list[float | None]]:
    """Per confidence bin, the central ``confidence`` range of the accuracy a perfectly
    calibrated model with these confidences would read (None for an empty bin): a bin's
    accuracy can miss in either direction."""
    _, members, right = _calibrated_draws(probabilities, n_bins, resamples, seed)
    counts = members.sum(axis=0)
    filled = counts > 0
    accuracy = (right @ members)[:, filled] / counts[filled]
    tail = (1.0 - confidence) / 2 * 100
    low, high = np.percentile(accuracy, [tail, 100 - tail], axis=0)
    bands: dict[str, list[float | None]] = {"low": [None] * n_bins, "high": [None] * n_bins}
    for index, bin_low, bin_high in zip(np.flatnonzero(filled), low, high, strict=True):
        bands["low"][index], bands["high"][index] = float(bin_low), float(bin_high)
    return bands


def apply_temperature(model: keras.Model, temperature: float) -> keras.Model:
    """A copy of the model whose softmax output is temperature-scaled.

    Dividing the output layer's kernel and bias by T divides its logits by T, so the calibrated
    model has the same architecture and serves calibrated probabilities with no extra layer.
    """
    calibrated = keras.models.clone_model(model)
    calibrated.set_weights(model.get_weights())
    output = calibrated.get_layer(OUTPUT_LAYER)
    kernel, bias = output.get_weights()
    output.set_weights([kernel / temperature, bias / temperature])
    return calibrated
