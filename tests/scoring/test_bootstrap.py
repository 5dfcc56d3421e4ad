import numpy as np
import pytest

from chest_ct_classifier.images.labels import LABELS
from chest_ct_classifier.scoring.bootstrap import bootstrap_intervals
from chest_ct_classifier.scoring.metrics import classification_metrics


def _answers(n: int, right: float, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    truth = rng.integers(0, len(LABELS), n)
    answer = np.where(rng.random(n) < right, truth, (truth + 1) % len(LABELS))
    return truth, np.eye(len(LABELS))[answer]


def test_intervals_hold_the_estimate_and_shrink_with_more_images():
    truth, probabilities = _answers(150, 0.8)
    point = classification_metrics(truth, probabilities)
    small = bootstrap_intervals(truth, probabilities, resamples=500, seed=1)
    assert small["confidence"] == 0.95 and small["resamples"] == 500
    for key in ("accuracy", "macro_f1"):
        assert small[key]["low"] <= point[key] <= small[key]["high"]
    for label in LABELS:
        recall = point["per_class"][label]["recall"]
        assert small["recall"][label]["low"] <= recall <= small["recall"][label]["high"]
    big_truth, big_probabilities = _answers(2000, 0.8)
    big = bootstrap_intervals(big_truth, big_probabilities, resamples=500, seed=1)
    width = lambda r: r["accuracy"]["high"] - r["accuracy"]["low"]  # noqa: E731
    assert width(big) < width(small) / 2


def test_the_same_seed_gives_the_same_intervals_and_an_absent_class_has_none():
    truth, probabilities = _answers(40, 0.7)
    truth[truth == 2] = 0
    first = bootstrap_intervals(truth, probabilities, resamples=200, seed=3)
    assert first == bootstrap_intervals(truth, probabilities, resamples=200, seed=3)
    assert first["recall"][LABELS[2]] is None


def test_no_images_is_an_error():
    with pytest.raises(ValueError, match="no images"):
        bootstrap_intervals(np.zeros(0, int), np.zeros((0, 4)))
