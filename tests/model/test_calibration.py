import numpy as np
import pytest

from chest_ct_classifier.model.calibration import (
    apply_temperature,
    calibration_loss,
    ece_if_calibrated,
    expected_calibration_error,
    fit_temperature,
    reliability_bands,
    reliability_bins,
    scale_probabilities,
)


def _softmax(z):
    e = np.exp(z - z.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


@pytest.fixture(scope="module")
def overconfident():
    """Labels drawn from softmax(z); the model reports softmax(3 z): too sure, true T = 3."""
    rng = np.random.default_rng(0)
    z = rng.normal(0, 1.5, size=(4000, 4))
    labels = np.array([rng.choice(4, p=p) for p in _softmax(z)])
    return _softmax(3 * z), labels


def test_temperature_recovers_the_overconfidence_and_improves_nll_and_ece(overconfident):
    probabilities, labels = overconfident
    temperature = fit_temperature(probabilities, labels)
    assert temperature == pytest.approx(3.0, rel=0.1)
    calibrated = scale_probabilities(probabilities, temperature)
    assert calibration_loss(calibrated, labels) < calibration_loss(probabilities, labels)
    assert expected_calibration_error(calibrated, labels) < 0.03
    assert expected_calibration_error(probabilities, labels) > 0.1
    np.testing.assert_array_equal(calibrated.argmax(1), probabilities.argmax(1))


def test_scaling_by_one_is_identity_and_inverse_undoes_it(overconfident):
    probabilities, _ = overconfident
    assert scale_probabilities(probabilities, 1.0) is probabilities  # exactly, not nearly
    round_trip = scale_probabilities(scale_probabilities(probabilities, 2.5), 1 / 2.5)
    np.testing.assert_allclose(round_trip, probabilities, atol=1e-9)


def test_ece_of_a_known_case():
    # two bins used: confidence 0.9 (2 images, 1 right) and 0.6 (2 images, 2 right)
    probabilities = np.array([[0.9, 0.1], [0.9, 0.1], [0.6, 0.4], [0.4, 0.6]])
    labels = np.array([0, 1, 0, 1])
    assert expected_calibration_error(probabilities, labels, n_bins=10) == pytest.approx(
        0.5 * abs(0.5 - 0.9) + 0.5 * abs(1.0 - 0.6)
    )
    bins = reliability_bins(probabilities, labels, n_bins=10)
    assert sum(bins["count"]) == 4 and bins["accuracy"][8] == 0.5


def test_chance_is_told_from_miscalibration(overconfident):
    probabilities, labels = overconfident
    rng = np.random.default_rng(2)
    floors = []
    for n in (150, 2000):
        # right with their own probabilities: calibrated by construction, yet ECE is not 0
        drawn = np.array([rng.choice(4, p=p) for p in probabilities[:n]])
        ece = expected_calibration_error(probabilities[:n], drawn)
        calibrated = ece_if_calibrated(probabilities[:n], drawn)
        assert 0.0 < ece <= calibrated["high"] and calibrated["p_value"] > 0.05
        # the model that is too sure (true T = 3) is caught
        too_sure = ece_if_calibrated(probabilities[:n], labels[:n])
        assert too_sure["p_value"] < 0.01
        assert expected_calibration_error(probabilities[:n], labels[:n]) > too_sure["high"]
        # the same draws whatever the labels: only the confidences matter
        assert too_sure["mean"] == calibrated["mean"]
        floors.append(calibrated["mean"])
    assert floors[1] < floors[0] / 2  # the chance floor shrinks with the number of images


def test_an_exactly_calibrated_answer_set_ties_with_every_draw_like_it():
    # 10 answers at 0.7, 7 right: calibrated to the last digit, in float32 as models answer
    probabilities = np.tile([0.7, 0.1, 0.1, 0.1], (10, 1))
    labels = np.array([0] * 7 + [1] * 3)
    for dtype in (np.float32, np.float64):
        result = ece_if_calibrated(probabilities.astype(dtype), labels, resamples=500)
        assert result["p_value"] == 1.0
        assert expected_calibration_error(probabilities.astype(dtype), labels) < 1e-7
    # all sure and right: ECE 0, and p counts the observation itself, so it is never 0
    sure = np.eye(4)[[0, 1, 2, 3]]
    assert ece_if_calibrated(sure, np.arange(4))["p_value"] == 1.0
    assert ece_if_calibrated(sure, np.array([1, 2, 3, 0]), resamples=99)["p_value"] == 0.01


def test_answers_equal_to_a_draw_tie_with_it_over_many_bins():
    confidence = np.random.default_rng(1).uniform(0.26, 1.0, 200)  # most of 15 bins filled
    probabilities = np.stack([confidence, *[(1 - confidence) / 3] * 3], axis=1)
    right = np.random.default_rng(0).random((50, 200)) < confidence  # the function's draws
    eces = [expected_calibration_error(probabilities, np.where(r, 0, 1)) for r in right]
    worst = int(np.argmax(eces))  # only this draw (and its copies) reads as much
    result = ece_if_calibrated(probabilities, np.where(right[worst], 0, 1), resamples=50)
    assert result["p_value"] >= 2 / 51


def test_the_level_of_the_calibrated_models_ece_and_bands():
    # 100 answers at 0.8 in one bin: ECE = |K / 100 - 0.8| with K ~ Binomial(100, 0.8);
    # P(|K - 80| <= 8) = 0.967 and P(|K - 80| <= 7) = 0.941, so 95 % of draws read at most 0.08
    probabilities = np.tile([0.8, 0.2 / 3, 0.2 / 3, 0.2 / 3], (100, 1))
    labels = np.r_[np.zeros(80), np.ones(20)].astype(int)  # 80 right: ECE 0
    result = ece_if_calibrated(probabilities, labels, resamples=4000)
    assert result["high"] == pytest.approx(0.08)
    assert not result["above"] and result["p_value"] == 1.0
    wrong = ece_if_calibrated(probabilities, np.r_[np.zeros(60), np.ones(40)].astype(int))
    assert wrong["above"] and wrong["p_value"] == 1 / 1001
    # the accuracy's central 95 %: K from 72 to 87 (P(K < 72) = 0.022, P(K > 87) = 0.026)
    bands = reliability_bands(probabilities, resamples=4000)
    assert (bands["low"][11], bands["high"][11]) == pytest.approx((0.72, 0.88), abs=0.011)
    # other bins, other seeds: the same answers binned by 10 read their own figures
    assert ece_if_calibrated(probabilities, labels, n_bins=10)["p_value"] == 1.0
    assert reliability_bands(probabilities, n_bins=10, seed=1)["low"][7] is not None
    with pytest.raises(ValueError, match="no answers"):
        ece_if_calibrated(probabilities[:0], labels[:0])


def test_reliability_bands_follow_the_bins_and_the_binomial():
    probabilities = np.array([[0.9, 0.1], [0.9, 0.1], [0.6, 0.4], [0.4, 0.6]])
    labels = np.array([0, 1, 0, 1])
    bands = reliability_bands(probabilities, n_bins=10, seed=3)
    filled = [i for i, n in enumerate(reliability_bins(probabilities, labels, 10)["count"]) if n]
    assert filled == [5, 8]
    assert [i for i in range(10) if bands["low"][i] is not None] == filled
    assert [i for i in range(10) if bands["high"][i] is not None] == filled
    # two answers at 0.9: both right 81 %, one 18 %, none 1 % of the time
    assert (bands["low"][8], bands["high"][8]) == (0.5, 1.0)
    # two at 0.6 (bin 5): none right 16 %, one 48 %, both 36 %
    assert (bands["low"][5], bands["high"][5]) == (0.0, 1.0)
    assert bands == reliability_bands(probabilities, n_bins=10, seed=3)


def test_temperature_folded_into_the_model_equals_scaled_probabilities(tiny_model):
    x = np.random.default_rng(1).normal(0, 50, size=(5, 32, 32, 3)).astype(np.float32)
    calibrated = apply_temperature(tiny_model, 2.0)
    expected = scale_probabilities(np.asarray(tiny_model(x)), 2.0)
    np.testing.assert_allclose(np.asarray(calibrated(x)), expected, atol=1e-5)
    assert calibrated.count_params() == tiny_model.count_params()
