import numpy as np
import pytest

from chest_ct_classifier.calibration import scale_probabilities
from chest_ct_classifier.labels import LABELS
from chest_ct_classifier.model_architecture import predict_from_features
from chest_ct_classifier.pipelines.data_ingestion.nodes import assess_data_quality, index_images
from chest_ct_classifier.pipelines.training.nodes import (
    cache_frozen_features,
    calibrate_classifier,
    train_classifier,
)

PARAMS = {"feature_batch_size": 8, "epochs": 3, "batch_size": 8, "learning_rate": 1e-3, "seed": 1}


@pytest.fixture(scope="module")
def features(sample_images, tiny_model):
    files = {p: (lambda d=d: d) for p, d in sample_images.items()}
    duplicate = "Data/valid/normal/copy of n7.png"
    files[duplicate] = files["Data/train/normal/n7.png"]
    conflict = "Data/train/adenocarcinoma_left.lower.lobe_T2_N0_M0_Ib/same as n6.jpg"
    files[conflict] = files["Data/train/normal/n6.jpg"]
    params = {
        "source": "sample",
        "near_duplicate_max_distance": 2,
        "split": {"mode": "official", "ratios": {"train": 1}, "seed": 0},
    }
    index, _ = index_images(files, params)
    table, _, _ = assess_data_quality(index, params)
    return cache_frozen_features(files, table, tiny_model, PARAMS)


def test_features_are_cached_once_per_image_and_aligned(features, sample_images):
    n = len(sample_images) + 2
    assert features["features"].shape == (n, 1, 1, 512)  # 32 px input -> 1x1 after 5 pools
    assert len(features["path"]) == len(features["label"]) == len(features["split"]) == n
    paths = list(features["path"])
    copy, original = (
        paths.index("Data/valid/normal/copy of n7.png"),
        paths.index("Data/train/normal/n7.png"),
    )
    np.testing.assert_array_equal(features["features"][copy], features["features"][original])
    assert features["label"][copy] == LABELS.index("normal")
    assert features["copy_in_train"][copy] and not features["label_conflict"][copy]
    assert features["label_conflict"].sum() == 2  # n6.jpg and its copy under another label


def test_training_fits_the_head_only_and_reports_each_epoch(features, tiny_model):
    before = {w.path: w.numpy().copy() for w in tiny_model.weights}
    trained, history = train_classifier(features, tiny_model, PARAMS)

    assert set(history) == {"train_loss", "train_accuracy", "valid_loss", "valid_accuracy"}
    assert [item["step"] for item in history["train_loss"]] == [1, 2, 3]
    after = {w.path: w.numpy() for w in trained.weights}
    changed = {
        path.split("/")[0] for path in before if not np.array_equal(before[path], after[path])
    }
    assert changed == {"head_norm", "head_hidden", "head_output"}
    # the input model is left as it was
    for w in tiny_model.weights:
        np.testing.assert_array_equal(w.numpy(), before[w.path])


def test_training_is_reproducible_with_a_seed(features, tiny_model):
    _, first = train_classifier(features, tiny_model, PARAMS)
    _, second = train_classifier(features, tiny_model, PARAMS)
    assert first["train_loss"] == second["train_loss"]


def test_no_training_split_is_an_error(features, tiny_model):
    only_valid = {**features, "split": np.full(len(features["split"]), "valid")}
    with pytest.raises(ValueError, match="no training images"):
        train_classifier(only_valid, tiny_model, PARAMS)


def test_calibration_fits_on_valid_and_folds_the_temperature_into_the_model(features, tiny_model):
    trained, _ = train_classifier(features, tiny_model, PARAMS)
    calibrated, record = calibrate_classifier(trained, features, PARAMS)
    assert record["fitted_on"] == "valid" and record["n_images"] == 13
    assert record["nll_after"] <= record["nll_before"] + 1e-9
    x = features["features"]
    expected = scale_probabilities(predict_from_features(trained, x, 8), record["temperature"])
    np.testing.assert_allclose(predict_from_features(calibrated, x, 8), expected, atol=1e-5)


def test_without_valid_images_nothing_is_calibrated(features, tiny_model):
    no_valid = {
        **features,
        "split": np.where(features["split"] == "valid", "test", features["split"]),
    }
    model, record = calibrate_classifier(tiny_model, no_valid, PARAMS)
    assert model is tiny_model and record["temperature"] == 1.0 and record["fitted_on"] is None
