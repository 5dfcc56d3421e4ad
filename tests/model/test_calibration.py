import numpy as np
import pytest

from chest_ct_classifier.model.calibration import (
    apply_temperature,
    calibration_loss,
    expected_calibration_error,
    fit_temperature,
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


def test_temperature_folded_into_the_model_equals_scaled_probabilities(tiny_model):
    x = np.random.default_rng(1).normal(0, 50, size=(5, 32, 32, 3)).astype(np.float32)
    calibrated = apply_temperature(tiny_model, 2.0)
    expected = scale_probabilities(np.asarray(tiny_model(x)), 2.0)
    np.testing.assert_allclose(np.asarray(calibrated(x)), expected, atol=1e-5)
    assert calibrated.count_params() == tiny_model.count_params()
