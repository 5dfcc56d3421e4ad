"""The cross-validation script runs the pipeline's recipe on grouped folds of train+valid, on a
real cache of the sample, and never reads a test image."""

import importlib.util
import json

import keras
import numpy as np
import pytest

from chest_ct_classifier.datasets.activation_cache_dataset import ActivationCacheDataset
from chest_ct_classifier.pipelines.data_ingestion.nodes import assess_data_quality, index_images
from chest_ct_classifier.pipelines.training.nodes import cache_activations

from ..conftest import PROJECT_ROOT, settings

pytestmark = pytest.mark.slow  # trains 2 x 2 folds of heads


def _script():
    spec = importlib.util.spec_from_file_location(
        "cross_validate_heads", PROJECT_ROOT / "scripts" / "cross_validate_heads.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def files(tiny_model, sample_images, tmp_path_factory):
    """The sample's activation cache and the tiny model, as a run leaves them on disk."""
    readers = {p: (lambda d=d: d) for p, d in sample_images.items()}
    params = settings(
        "data_ingestion",
        {"source": "sample", "split": {"mode": "official", "ratios": {"train": 1}, "seed": 0}},
    )
    table, _, _ = assess_data_quality(index_images(readers, params)[0], params)
    training = settings("training", {"activation_batch_size": 16, "augmentation": {"views": 1}})
    cache = cache_activations(readers, table, tiny_model, training)
    folder = tmp_path_factory.mktemp("cv")
    ActivationCacheDataset(str(folder / "activations.npz")).save(cache)
    tiny_model.save(folder / "untrained.keras")
    return folder, cache


def test_folds_cover_train_and_valid_and_more_heads_share_the_first_heads_schedule(files):
    folder, cache = files
    script = _script()
    report = script.main([
        "--cache", str(folder / "activations.npz"), "--model", str(folder / "untrained.keras"),
        "--heads", "1", "2", "--folds", "2", "--phase2-max-epochs", "0",
        "--label-smoothing", "0.1", "--report", str(folder / "report" / "cv"),
    ])  # fmt: skip
    pool = np.isin(cache.split, ("train", "valid")) & ~cache.label_conflict
    assert report["images"] == len(np.unique(cache.content[pool]))
    assert set(report["summary"]) == {"1 head", "2 heads"}
    one, two = report["per_fold"]["1 head"], report["per_fold"]["2 heads"]
    assert [r["phase1_epochs"] for r in one] == [r["phase1_epochs"] for r in two]
    assert all(r["phase2_epochs"] == 0 for r in one)  # --phase2-max-epochs 0
    assert report["label_smoothing"] == 0.1
    for record in one + two:
        assert 0.0 <= record["accuracy"] <= 1.0 and record["loss"] > 0
        assert 0.0 <= record["ece_cross_fitted"] <= 1.0
    written = json.loads((folder / "report" / "cv.json").read_text())
    assert written["summary"] == report["summary"]
    assert "| 2 heads |" in (folder / "report" / "cv.md").read_text()


def test_test_images_change_nothing(files, tiny_model):
    _, cache = files
    script = _script()
    parameters = script.project_training_parameters()
    parameters = parameters.model_copy(
        update={"phase1": parameters.phase1.model_copy(update={"max_epochs": 3})}
    )
    test = cache.split == "test"
    poisoned = cache.with_rows(label=np.where(test, (cache.label + 1) % 4, cache.label))
    # and the activations and head input vectors of every content only test holds
    contents = np.setdiff1d(cache.content[test], cache.content[~test])
    assert len(contents) > 0
    activations, features = cache.activations.copy(), cache.features.copy()
    activations[contents] = activations[contents][::-1] * 3.0
    features[contents] = features[contents][::-1] * 3.0
    poisoned = poisoned.with_rows(activations=activations, features=features)
    model = keras.models.clone_model(tiny_model)
    model.set_weights(tiny_model.get_weights())
    ours = script.cross_validate(cache, model, parameters, [1], 2, 0)
    theirs = script.cross_validate(poisoned, model, parameters, [1], 2, 0)
    for a, b in zip(ours["per_fold"]["1 head"], theirs["per_fold"]["1 head"], strict=True):
        assert {k: v for k, v in a.items() if k != "seconds"} == {
            k: v for k, v in b.items() if k != "seconds"
        }


def test_the_cross_fitted_temperature_of_a_fold_comes_from_the_other_folds_alone():
    from chest_ct_classifier.model.calibration import (
        expected_calibration_error,
        fit_temperature,
        scale_probabilities,
    )

    script = _script()
    rng = np.random.default_rng(0)
    labels = [rng.integers(0, 4, 40) for _ in range(3)]
    # overconfident answers, right three times in four
    probabilities = []
    for fold_labels in labels:
        chosen = np.where(rng.random(40) < 0.75, fold_labels, (fold_labels + 1) % 4)
        answers = np.full((40, 4), 0.02)
        answers[np.arange(40), chosen] = 0.94
        probabilities.append(answers)
    records = [{} for _ in labels]
    script.add_cross_fitted_ece(records, probabilities, labels)
    expected = fit_temperature(np.concatenate(probabilities[1:]), np.concatenate(labels[1:]))
    assert records[0]["temperature_cross_fitted"] == pytest.approx(expected)
    assert expected > 1  # the overconfident answers are softened
    assert records[0]["ece_cross_fitted"] == pytest.approx(
        expected_calibration_error(scale_probabilities(probabilities[0], expected), labels[0])
    )


def test_phase2_epochs_come_from_the_project_unless_given_and_are_validated():
    from chest_ct_classifier.config.parameters import ParameterError

    script = _script()
    assert script.project_training_parameters().phase2.max_epochs == 0  # conf/base
    assert script.project_training_parameters(6).phase2.max_epochs == 6
    with pytest.raises(ParameterError, match="max_epochs"):
        script.project_training_parameters(-3)
