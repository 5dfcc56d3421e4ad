import numpy as np
import pytest

from chest_ct_classifier.images.labels import LABELS
from chest_ct_classifier.model.activation_cache import (
    cached_view_features,
    content_view_features,
    features_fingerprint,
    row_probabilities,
)
from chest_ct_classifier.model.architecture import model_fingerprint
from chest_ct_classifier.model.calibration import scale_probabilities
from chest_ct_classifier.model.two_phase_training import scores
from chest_ct_classifier.pipelines.data_ingestion.nodes import assess_data_quality, index_images
from chest_ct_classifier.pipelines.training.nodes import (
    cache_activations,
    calibrate_classifier,
    choose_training_schedule,
    fit_ood_detector,
    train_classifier,
)
from tests.conftest import settings

OVERRIDES = {
    "activation_batch_size": 8,
    "batch_size": 8,
    "seed": 1,
    "class_weights": "balanced",
    "augmentation": {
        "views": 2,
        "horizontal_flip": True,
        "rotation_degrees": 10,
        "zoom": 0.1,
        "stretch": 0,
        "brightness": 0,
        "contrast": 0,
    },
    "selection": {"holdout_fraction": 0.25, "seed": 0},
    "calibration": {"fit_on": "holdout"},
    "early_stopping": {"monitor": "loss"},
    "phase1": {"max_epochs": 3, "patience": 1, "learning_rate": 1e-2},
    "phase2": {"max_epochs": 2, "patience": 1, "learning_rate": 1e-4},
}
PARAMS = settings("training", OVERRIDES)
COPY = "Data/valid/normal/copy of n7.png"
CONFLICT = "Data/train/adenocarcinoma_left.lower.lobe_T2_N0_M0_Ib/same as n6.jpg"


@pytest.fixture(scope="module")
def cache(sample_images, tiny_model):
    files = {p: (lambda d=d: d) for p, d in sample_images.items()}
    files[COPY] = files["Data/train/normal/n7.png"]
    files[CONFLICT] = files["Data/train/normal/n6.jpg"]
    params = settings(
        "data_ingestion",
        {"source": "sample", "split": {"mode": "official", "ratios": {"train": 1}, "seed": 0}},
    )
    index, _ = index_images(files, params)
    table, _, _ = assess_data_quality(index, params)
    return cache_activations(files, table, tiny_model, PARAMS)


@pytest.fixture(scope="module")
def schedule(cache, tiny_model):
    return choose_training_schedule(cache, tiny_model, PARAMS)


@pytest.fixture(scope="module")
def refit(cache, schedule, tiny_model):
    """The refit with 2 head epochs and 1 of block 5: block 5 fine-tuned."""
    chosen = {**schedule[0], "phase1_epochs": 2, "phase2_epochs": 1}
    return train_classifier(cache, tiny_model, chosen, PARAMS)


def test_activations_are_cached_once_per_content_with_views_for_train_and_valid(
    cache, sample_images, tiny_model
):
    n = len(sample_images) + 2
    assert len(cache.path) == len(cache.label) == len(cache.content) == n
    assert cache.activations.shape == (len(sample_images), 2, 2, 512)  # 32 px: block 4 is 2x2
    # the head's pooled vector: block 4's average and maximum, block 5's average
    assert cache.features.shape == (len(sample_images), 3 * 512)
    paths = list(cache.path)
    copy, original = paths.index(COPY), paths.index("Data/train/normal/n7.png")
    assert cache.content[copy] == cache.content[original]
    assert cache.copy_in_train[copy] and not cache.label_conflict[copy]
    assert cache.label_conflict.sum() == 2  # n6.jpg and its copy under another label
    # views: every train/valid content without a label conflict, none of test
    trainable = np.isin(cache.split, ["train", "valid"]) & ~cache.label_conflict
    assert set(cache.view_content) == set(cache.content[trainable])
    assert not set(cache.view_content) & set(cache.content[cache.split == "test"])
    assert cache.view_activations.shape == (len(cache.view_content), 2, 2, 2, 512)
    assert cache.view_activations.dtype == np.float16
    first = cache.view_content[0]
    assert not np.allclose(cache.view_activations[0, 0], cache.activations[first])
    # the block 5 that made the head input vectors: later nodes read them while it is the model's
    assert str(cache.features_fingerprint) == features_fingerprint(tiny_model)


def test_schedule_is_chosen_on_a_grouped_hold_out_of_train_and_valid(schedule, cache):
    chosen, history, _ = schedule
    assert 0 <= chosen["phase1_epochs"] <= 3 and 0 <= chosen["phase2_epochs"] <= 2
    losses = [r["value"] for r in history["phase1_monitor_loss"]]
    if chosen["phase1_epochs"]:  # the kept epoch has the lowest hold-out loss
        assert losses[chosen["phase1_epochs"] - 1] == min(losses)
    pool = len(set(cache.content[np.isin(cache.split, ["train", "valid"])
                                    & ~cache.label_conflict]))  # fmt: skip
    assert chosen["fit_images"] + chosen["holdout_images"] == pool
    assert sum(chosen["holdout_per_class"].values()) == chosen["holdout_images"]
    assert all(n > 0 for n in chosen["holdout_per_class"].values())
    steps = [r["step"] for r in history["phase1_monitor_loss"]]
    assert steps == list(range(1, len(steps) + 1))
    assert "phase2_monitor_macro_f1" in history


def test_test_images_never_influence_the_schedule(cache, schedule, tiny_model):
    poisoned = cache.with_rows(activations=cache.activations.copy(), features=cache.features.copy())
    test_contents = cache.content[cache.split == "test"]
    poisoned.activations[test_contents] = np.nan
    poisoned.features[test_contents] = np.nan
    again, history, holdout = choose_training_schedule(poisoned, tiny_model, PARAMS)
    assert again == schedule[0] and holdout == schedule[2]
    assert all(np.isfinite(r["value"]) for values in history.values() for r in values)


def test_refit_trains_on_train_for_the_scheduled_epochs(refit, tiny_model):
    trained, history = refit
    assert [r["step"] for r in history["phase1_train_loss"]] == [1, 2]
    assert [r["step"] for r in history["phase2_valid_accuracy"]] == [1]
    assert not trained.get_layer("block5_conv1").trainable
    changed = {
        w.path.split("/")[0]
        for w, v in zip(tiny_model.weights, trained.weights, strict=True)
        if not np.array_equal(w.numpy(), v.numpy())
    }
    assert {"block5_conv3", "head_output"} <= changed


def test_no_training_split_is_an_error(cache, schedule, tiny_model):
    only_valid = cache.with_rows(split=np.full(len(cache.split), "valid"))
    with pytest.raises(ValueError, match="no training images"):
        train_classifier(only_valid, tiny_model, schedule[0], PARAMS)


def test_hold_out_answers_are_the_schedule_runs_on_held_out_train_and_valid_images(cache, schedule):
    chosen, _, holdout = schedule
    assert len(holdout["paths"]) == len(holdout["labels"]) == chosen["holdout_images"]
    assert np.shape(holdout["probabilities"]) == (chosen["holdout_images"], len(LABELS))
    np.testing.assert_allclose(np.sum(holdout["probabilities"], axis=1), 1.0, atol=1e-5)
    rows = {p: i for i, p in enumerate(cache.path)}
    assert {cache.split[rows[p]] for p in holdout["paths"]} <= {"train", "valid"}
    assert holdout["labels"] == [int(cache.label[rows[p]]) for p in holdout["paths"]]
    # the answers are the kept epochs': scored, they are the schedule's hold-out scores
    kept = chosen["holdout_scores"]["phase2"]
    again = scores(np.array(holdout["labels"]), np.array(holdout["probabilities"], np.float32))
    assert again["loss"] == pytest.approx(kept["monitor_loss"], rel=1e-5)
    assert again["accuracy"] == kept["monitor_accuracy"]


def test_calibration_fits_the_hold_out_answers_and_folds_the_temperature_in(
    cache, schedule, tiny_model
):
    calibrated, record = calibrate_classifier(tiny_model, cache, schedule[2], PARAMS)
    assert record["fitted_on"] == "holdout" and record["n_images"] == schedule[0]["holdout_images"]
    _assert_temperature_folded_in(tiny_model, calibrated, record, cache)


def test_calibration_none_serves_the_model_as_trained(cache, schedule, tiny_model):
    none = settings("training", {**OVERRIDES, "calibration": {"fit_on": "none"}})
    model, record = calibrate_classifier(tiny_model, cache, schedule[2], none)
    assert model is tiny_model
    assert record == {"temperature": 1.0, "fitted_on": "none", "n_images": 0}


def test_calibration_can_fit_on_leak_free_valid(cache, schedule, tiny_model):
    on_valid = settings("training", {**OVERRIDES, "calibration": {"fit_on": "valid"}})
    calibrated, record = calibrate_classifier(tiny_model, cache, schedule[2], on_valid)
    # 13 valid files, of which the copy of a train image is left out
    assert record["fitted_on"] == "valid" and record["n_images"] == 12
    _assert_temperature_folded_in(tiny_model, calibrated, record, cache)


def _assert_temperature_folded_in(model, calibrated, record, cache) -> None:
    """The fit lowered the NLL, and the calibrated model answers softmax(logits / T)."""
    assert record["nll_after"] <= record["nll_before"] + 1e-9
    rows = np.ones(len(cache.path), dtype=bool)
    uncalibrated = row_probabilities(model, cache, rows, 8)
    expected = scale_probabilities(uncalibrated, record["temperature"])
    assert expected.shape == (len(cache.path), len(LABELS))
    # the untrained tiny model saturates some softmaxes: a probability that underflowed float32
    # cannot be rescaled from the outside, only from the logits (which the fold does)
    representable = (uncalibrated > 1e-9).all(axis=1)
    assert representable.sum() >= 10
    np.testing.assert_allclose(
        row_probabilities(calibrated, cache, rows, 8)[representable],
        expected[representable],
        atol=1e-5,
    )


def test_row_probabilities_equal_the_model_on_each_file(cache, sample_images, tiny_model):
    from chest_ct_classifier.images.preprocessing import preprocess_image_bytes

    files = {**sample_images}
    files[COPY] = files["Data/train/normal/n7.png"]
    files[CONFLICT] = files["Data/train/normal/n6.jpg"]
    rows = np.ones(len(cache.path), dtype=bool)
    direct = tiny_model.predict_on_batch(
        np.stack([preprocess_image_bytes(files[p], 32) for p in cache.path])
    )
    np.testing.assert_allclose(row_probabilities(tiny_model, cache, rows, 8), direct, atol=1e-5)


def test_without_valid_images_nothing_is_calibrated(cache, schedule, tiny_model):
    no_valid = cache.with_rows(split=np.where(cache.split == "valid", "test", cache.split))
    on_valid = settings("training", {**OVERRIDES, "calibration": {"fit_on": "valid"}})
    model, record = calibrate_classifier(tiny_model, no_valid, schedule[2], on_valid)
    assert model is tiny_model and record["temperature"] == 1.0 and record["fitted_on"] is None


def test_a_fine_tuned_block_5_gives_the_detector_its_own_view_vectors(cache, schedule, refit):
    trained, _ = refit
    at = np.arange(len(cache.view_content))
    own = content_view_features(trained, cache, at, 8)
    np.testing.assert_array_equal(own, cached_view_features(trained, cache.view_activations, 8))
    assert not np.allclose(own, cache.view_features.astype(np.float32))
    detector = fit_ood_detector(trained, cache, schedule[2], PARAMS)
    assert detector.model_fingerprint == model_fingerprint(trained)


def test_the_recipe_runs_on_a_cache_without_views(cache, tiny_model):
    """The default caches no view: (N, 0, ...) arrays, block 5 fine-tuned or not."""
    no_views = cache.with_rows(
        view_activations=cache.view_activations[:, :0], view_features=cache.view_features[:, :0]
    )
    assert no_views.n_views == 0
    params = PARAMS.model_copy(update={"heads": 2})
    chosen, _, holdout = choose_training_schedule(no_views, tiny_model, params)
    for phase2_epochs in (0, 1):
        trained, _ = train_classifier(
            no_views, tiny_model, {"phase1_epochs": 1, "phase2_epochs": phase2_epochs}, params
        )
        detector = fit_ood_detector(trained, no_views, holdout, params)
        assert np.isfinite(detector.threshold)
    assert chosen["holdout_images"] == len(holdout["paths"])
