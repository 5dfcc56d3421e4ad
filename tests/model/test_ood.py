import numpy as np
import pytest

from chest_ct_classifier.model.ood import OodDetector, fit_detector


def _clusters(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    labels = np.arange(n) % 4
    centres = np.eye(4, 40) * 6
    return centres[labels] + rng.normal(size=(n, 40)), labels


def test_the_threshold_lets_the_target_share_of_held_out_images_through():
    features, labels = _clusters(400, 0)
    held_out, _ = _clusters(200, 1)
    detector = fit_detector(features, labels, held_out, 0.05, "abc")
    assert np.mean(detector.scores(held_out) > detector.threshold) <= 0.05
    fresh, _ = _clusters(400, 2)  # new images of the same kind: about the target share flagged
    assert np.mean(detector.scores(fresh) > detector.threshold) < 0.15
    far = np.random.default_rng(3).normal(8, 3, size=(50, 40))
    assert np.mean(detector.scores(far) > detector.threshold) > 0.95
    assert detector.model_fingerprint == "abc"


def test_a_detector_round_trips_through_its_arrays_and_refuses_others():
    features, labels = _clusters(100, 0)
    detector = fit_detector(features, labels, features[:20], 0.02, "f00d")
    again = OodDetector.from_arrays(detector.arrays())
    np.testing.assert_allclose(again.scores(features), detector.scores(features))
    assert again.threshold == detector.threshold and again.model_fingerprint == "f00d"
    with pytest.raises(ValueError, match="not an out-of-distribution detector"):
        OodDetector.from_arrays({"threshold": np.array(1.0)})
    with pytest.raises(ValueError, match="no held-out images"):
        fit_detector(features, labels, features[:0], 0.02, "x")
