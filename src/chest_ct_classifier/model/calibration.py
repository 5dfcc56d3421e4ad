"""Temperature scaling: probabilities that mean what they say.

One scalar T divides the logits before the softmax; T is fitted by minimizing the negative
log-likelihood on held-out data (Guo et al., 2017). It never changes which class wins.
"""

from __future__ import annotations

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


def reliability_bins(probabilities: np.ndarray, labels: np.ndarray, n_bins: int = 15) -> dict:
    """Per equal-width confidence bin: mean confidence, accuracy and count (None when empty)."""
    confidence = probabilities.max(axis=1)
    correct = probabilities.argmax(axis=1) == labels
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    bins = np.clip(np.digitize(confidence, edges[1:-1], right=True), 0, n_bins - 1)
    members = [bins == b for b in range(n_bins)]
    return {
        "edges": edges.tolist(),
        "confidence": [float(confidence[m].mean()) if m.any() else None for m in members],
        "accuracy": [float(correct[m].mean()) if m.any() else None for m in members],
        "count": [int(m.sum()) for m in members],
    }


def expected_calibration_error(
    probabilities: np.ndarray, labels: np.ndarray, n_bins: int = 15
) -> float:
    """ECE: the gap between confidence and accuracy, averaged over equal-width confidence bins."""
    bins = reliability_bins(probabilities, labels, n_bins)
    total = sum(bins["count"])
    return float(
        sum(
            count / total * abs(accuracy - confidence)
            for count, accuracy, confidence in zip(
                bins["count"], bins["accuracy"], bins["confidence"], strict=True
            )
            if count
        )
    )


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
