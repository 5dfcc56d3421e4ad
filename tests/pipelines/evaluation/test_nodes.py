import matplotlib.pyplot as plt
import numpy as np
import pytest

from chest_ct_classifier.labels import LABELS
from chest_ct_classifier.pipelines.evaluation.nodes import (
    evaluate_classifier,
    metrics_for_mlflow,
    plot_confusion_matrices,
    plot_grad_cam_examples,
    plot_reliability_diagrams,
)

WEIGHTS = {
    "requested": "imagenet",
    "used": "hed_bsds500",
    "source": "x",
    "fallback_reason": "offline",
}
CALIBRATION = {"temperature": 2.0, "fitted_on": "valid", "n_images": 4}
PARAMS = {"batch_size": 3, "calibration_bins": 15}


@pytest.fixture(scope="module")
def features():
    rng = np.random.default_rng(0)
    n = 12
    return {
        "features": rng.normal(size=(n, 1, 1, 512)).astype(np.float32),
        "label": np.arange(n) % len(LABELS),
        "split": np.array(["train"] * 4 + ["valid"] * 4 + ["test"] * 4),
        "path": np.array([f"{i}.png" for i in range(n)]),
        "copy_in_train": np.array([False] * 4 + [True, False, False, False] + [False] * 4),
    }


def test_report_has_each_present_split_and_the_weights(tiny_model, features):
    report = evaluate_classifier(tiny_model, features, WEIGHTS, CALIBRATION, PARAMS)
    assert set(report["splits"]) == {"valid", "test"}
    assert report["weights"]["used"] == "hed_bsds500"
    assert report["splits"]["test"]["n_images"] == 4
    assert np.sum(report["splits"]["valid"]["confusion_matrix"]) == 4
    assert report["leak_free"]["valid"]["n_images"] == 3
    assert report["leak_free"]["test"]["n_images"] == 4


def test_missing_test_split_is_skipped(tiny_model, features):
    no_test = {**features, "split": np.array(["train"] * 8 + ["valid"] * 4)}
    report = evaluate_classifier(tiny_model, no_test, WEIGHTS, CALIBRATION, PARAMS)
    assert list(report["splits"]) == ["valid"] == list(report["leak_free"])


def test_mlflow_metrics_are_flat_scalars(tiny_model, features):
    report = evaluate_classifier(tiny_model, features, WEIGHTS, CALIBRATION, PARAMS)
    flat = metrics_for_mlflow(report)
    assert flat["valid_accuracy"] == {"value": report["splits"]["valid"]["accuracy"], "step": 0}
    assert "test_recall_squamous_cell_carcinoma" in flat
    assert "valid_leak_free_macro_f1" in flat
    assert flat["temperature"]["value"] == 2.0
    assert "test_leak_free_ece_uncalibrated" in flat
    figure = plot_confusion_matrices(report)
    assert len(figure.axes) == 4
    plt.close(figure)
    figure = plot_reliability_diagrams(report)
    assert len(figure.axes) == 2
    plt.close(figure)


def test_ece_before_calibration_is_computed_from_the_temperature(tiny_model, features):
    report = evaluate_classifier(tiny_model, features, WEIGHTS, CALIBRATION, PARAMS)
    unit = evaluate_classifier(
        tiny_model, features, WEIGHTS, {**CALIBRATION, "temperature": 1.0}, PARAMS
    )
    valid = report["splits"]["valid"]
    assert 0.0 <= valid["ece"] <= 1.0
    assert unit["splits"]["valid"]["ece"] == unit["splits"]["valid"]["ece_uncalibrated"]
    assert valid["ece"] == unit["splits"]["valid"]["ece"]  # same model, same probabilities


def test_grad_cam_examples_show_a_correct_and_a_wrong_answer_per_class(tiny_model, sample_images):
    from chest_ct_classifier.pipelines.data_ingestion.nodes import (
        assess_data_quality,
        index_images,
    )
    from chest_ct_classifier.pipelines.training.nodes import cache_frozen_features

    files = {p: (lambda d=d: d) for p, d in sample_images.items()}
    params = {
        "source": "sample",
        "near_duplicate_max_distance": 2,
        "split": {"mode": "official", "ratios": {"train": 1}, "seed": 0},
    }
    table, _, _ = assess_data_quality(index_images(files, params)[0], params)
    real = cache_frozen_features(files, table, tiny_model, {"feature_batch_size": 16})

    figure = plot_grad_cam_examples(tiny_model, files, real, PARAMS)
    assert figure.get_suptitle().startswith("Grad-CAM on test")
    axes = figure.axes
    assert len(axes) == 2 * len(LABELS)
    shown = [axis for axis in axes if axis.images]
    titles = " ".join(axis.get_title() for axis in axes)
    # 3 test images per class: every class has a correct or a wrong answer, never both missing
    assert len(shown) >= len(LABELS)
    assert len(shown) + titles.count(" answer") == 2 * len(LABELS)
    plt.close(figure)
