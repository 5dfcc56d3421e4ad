import copy

import numpy as np
import pytest

from chest_ct_classifier.model.ood import (
    NOT_CHECKED,
    OodCheck,
    OodDetector,
    answer_status,
    check,
    fit_detector,
    usable_detector,
)


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


def test_the_score_is_the_mahalanobis_distance_to_the_nearest_class_mean():
    features, labels = _clusters(200, 0)
    detector = fit_detector(features, labels, features[:20], 0.02, "x")
    fresh = np.vstack([_clusters(30, 1)[0], np.random.default_rng(2).normal(5, 2, (10, 40))])
    z = (fresh - detector.center) / detector.scale
    expected = np.sqrt(
        np.min(
            [np.einsum("nd,de,ne->n", z - m, detector.precision, z - m)
             for m in detector.class_means],
            axis=0,
        )
    )  # fmt: skip
    np.testing.assert_allclose(detector.scores(fresh), expected, rtol=1e-10)
    # the same one image at a time as in a batch (the app scores batches of any size)
    np.testing.assert_allclose(
        np.concatenate([detector.scores(row[None]) for row in fresh]), expected, rtol=1e-10
    )


def test_any_precision_matrix_scores_as_its_quadratic_form_and_the_arrays_stay_read_only():
    rng = np.random.default_rng(4)
    d = 6
    lopsided = rng.normal(size=(d, d)) + 3 * np.eye(d)  # not symmetric
    detector = OodDetector(
        np.zeros(d), np.ones(d), rng.normal(size=(3, d)), lopsided, 1.0, 0.02, "x"
    )
    features = rng.normal(size=(5, d))
    quadratic = [[(f - m) @ lopsided @ (f - m) for m in detector.class_means] for f in features]
    expected = np.sqrt(np.maximum(np.min(quadratic, axis=1), 0.0))
    np.testing.assert_allclose(detector.scores(features), expected, rtol=1e-10)
    with pytest.raises(ValueError, match="read-only"):
        detector.precision[0, 0] = 0.0


def test_a_feature_that_barely_varies_in_training_does_not_dominate_the_score():
    features, labels = _clusters(400, 0)
    features[:, 0] = 0.0  # a ReLU channel that is never on in training...
    detector = fit_detector(features, labels, features[:50], 0.02, "x")
    fresh, _ = _clusters(200, 1)
    fresh[:, 0] = 0.01  # ...and barely on later: the image is no less a chest CT slice
    assert np.mean(detector.scores(fresh) > detector.threshold) < 0.15
    assert detector.scale[0] == pytest.approx(0.1 * np.median(features[:, 1:].std(axis=0)))


def test_the_check_reports_input_problems_first_then_the_score():
    features, labels = _clusters(100, 0)
    detector = fit_detector(features, labels, features[:20], 0.02, "f")
    threshold = detector.threshold
    inside = check(detector, None, threshold * 0.5)
    assert not inside.out_of_distribution and inside.reason is None
    assert inside.as_dict() == {"score": threshold * 0.5, "threshold": threshold, "reason": None}
    beyond = check(detector, None, threshold * 2)
    assert beyond.out_of_distribution and "beyond the threshold" in beyond.reason
    colour = check(detector, "a colour image: CT slices are grey", threshold * 0.5)
    assert colour.out_of_distribution and colour.reason.startswith("a colour image")
    assert colour.score == threshold * 0.5  # still reported
    unchecked = check(None, None, None)
    assert not unchecked.out_of_distribution and unchecked.reason == NOT_CHECKED
    assert unchecked.score is None and unchecked.threshold is None
    assert check(None, "nearly blank", None).out_of_distribution
    assert check(detector, None, float("nan")).out_of_distribution


@pytest.mark.parametrize(
    ("top", "out", "status"),
    [(0.9, False, "ok"), (0.45, False, "uncertain"), (0.5, False, "ok"),
     (0.99, True, "out_of_distribution"), (0.3, True, "out_of_distribution")],
)  # fmt: skip
def test_answer_status(top, out, status):
    verdict = OodCheck(out, 1.0, 2.0, "why" if out else None)
    assert answer_status(top, verdict, 0.5) == status


def test_only_the_detector_of_the_same_model_is_used(caplog):
    features, labels = _clusters(60, 0)
    detector = fit_detector(features, labels, features[:10], 0.02, "mine")
    assert usable_detector(detector, "mine") is detector
    assert usable_detector(detector, "other") is None
    assert "fitted on other weights" in caplog.text
    assert usable_detector(None, None) is None
    assert copy.deepcopy(detector) is detector  # read-only: the served model shares it
