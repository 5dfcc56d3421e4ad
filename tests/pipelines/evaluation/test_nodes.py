import json

import matplotlib.pyplot as plt
import numpy as np
import pytest

from chest_ct_classifier.images.labels import LABELS
from chest_ct_classifier.model.activation_cache import (
    ActivationCache,
    cached_features,
    features_fingerprint,
)
from chest_ct_classifier.model.architecture import build_classifier
from chest_ct_classifier.model.calibration import apply_temperature
from chest_ct_classifier.pipelines.evaluation.nodes import (
    _spread_scores,
    evaluate_classifier,
    measure_seed_spread,
    metrics_for_mlflow,
    plot_confusion_matrices,
    plot_grad_cam_examples,
    plot_reliability_diagrams,
    plot_roc_curves,
)
from chest_ct_classifier.pipelines.training.nodes import train_classifier
from tests.conftest import bf16_without_a_kernel, settings

WEIGHTS = {
    "requested": "imagenet",
    "used": "hed_bsds500",
    "source": "x",
    "fallback_reason": "offline",
}
CALIBRATION = {"temperature": 2.0, "fitted_on": "valid", "n_images": 4}
OOD = {"detector": {"method": "m", "threshold": 1.0, "target_false_rejection": 0.02},
       "in_distribution": {}, "reference": {}}  # fmt: skip
SPREAD = {"seeds": [42, 43], "served_seed": 42, "subsets": {}}
PARAMS = settings("evaluation", {"batch_size": 3, "calibration_bins": 15})


@pytest.fixture(scope="module")
def cache(tiny_model):
    """Cached block-4 activations (2x2x512 for the 32 px tiny model) of 12 distinct images, and
    the head's input vectors block 5 makes of them."""
    rng = np.random.default_rng(0)
    n = 12
    activations = rng.normal(size=(n, 2, 2, 512)).astype(np.float32)
    # one augmented view of each train and valid image, as cache_activations makes
    views = (activations[:8] + rng.normal(scale=0.1, size=(8, 2, 2, 512))).astype(np.float16)
    return ActivationCache(
        path=np.array([f"{i}.png" for i in range(n)]),
        split=np.array(["train"] * 4 + ["valid"] * 4 + ["test"] * 4),
        label=np.arange(n) % len(LABELS),
        sha256=np.array([f"{i:064x}" for i in range(n)]),
        group=np.arange(n),
        copy_in_train=np.array([False] * 4 + [True, False, False, False] + [False] * 4),
        label_conflict=np.zeros(n, bool),
        content=np.arange(n),
        activations=activations,
        features=cached_features(tiny_model, activations, 4),
        view_content=np.arange(8),
        view_activations=views[:, None],
        view_features=cached_features(tiny_model, views, 4).astype(np.float16)[:, None],
        features_fingerprint=np.asarray(features_fingerprint(tiny_model)),
    )


def test_report_has_each_present_split_and_the_weights(tiny_model, cache):
    report = evaluate_classifier(tiny_model, cache, WEIGHTS, CALIBRATION, OOD, SPREAD, PARAMS)
    assert set(report["splits"]) == {"valid", "test"}
    assert report["weights"]["used"] == "hed_bsds500"
    assert report["splits"]["test"]["n_images"] == 4
    assert np.sum(report["splits"]["valid"]["confusion_matrix"]) == 4
    assert report["leak_free"]["valid"]["n_images"] == 3
    assert report["leak_free"]["test"]["n_images"] == 4


def test_missing_test_split_is_skipped(tiny_model, cache):
    no_test = cache.with_rows(split=np.array(["train"] * 8 + ["valid"] * 4))
    report = evaluate_classifier(tiny_model, no_test, WEIGHTS, CALIBRATION, OOD, SPREAD, PARAMS)
    assert list(report["splits"]) == ["valid"] == list(report["leak_free"])


def test_mlflow_metrics_are_flat_scalars(tiny_model, cache):
    report = evaluate_classifier(tiny_model, cache, WEIGHTS, CALIBRATION, OOD, SPREAD, PARAMS)
    flat = metrics_for_mlflow(report)
    assert flat["valid_accuracy"] == {"value": report["splits"]["valid"]["accuracy"], "step": 0}
    assert "test_recall_squamous_cell_carcinoma" in flat
    assert "valid_leak_free_macro_f1" in flat
    assert flat["temperature"]["value"] == 2.0
    assert "test_leak_free_ece_uncalibrated" in flat
    if_calibrated = report["splits"]["test"]["ece_if_calibrated"]
    assert 0.0 < if_calibrated["p_value"] <= 1.0
    assert flat["test_ece_p_value"]["value"] == if_calibrated["p_value"]
    assert flat["test_ece_if_calibrated_mean"]["value"] == if_calibrated["mean"]
    assert "valid_leak_free_ece_if_calibrated_high" in flat
    figure = plot_reliability_diagrams(report)
    assert len(figure.axes) == 2
    labels = [line.get_label() for line in figure.axes[0].get_lines()]
    assert any(label.startswith("uncalibrated (ECE") for label in labels)
    # the served curve's bins each have the range a calibrated model's accuracy would fall in
    served = report["reliability"]["valid"]["calibrated"]
    band = report["reliability"]["valid"]["if_calibrated"]
    assert [low is not None for low in band["low"]] == [n > 0 for n in served["count"]]
    (bars,) = figure.axes[0].collections
    assert bars.get_label().startswith("a calibrated model's 95% range (ECE")
    assert len(bars.get_segments()) == sum(n > 0 for n in served["count"])
    plt.close(figure)


def test_without_a_temperature_the_diagram_draws_the_one_curve_it_has(tiny_model, cache):
    none = {"temperature": 1.0, "fitted_on": "none", "n_images": 0}
    report = evaluate_classifier(tiny_model, cache, WEIGHTS, none, OOD, SPREAD, PARAMS)
    test = report["splits"]["test"]
    assert test["ece"] == test["ece_uncalibrated"]
    figure = plot_reliability_diagrams(report)
    labels = [line.get_label() for line in figure.axes[0].get_lines()]
    assert labels == [
        "perfect calibration",
        f"the model, no temperature (ECE {report['splits']['valid']['ece']:.3f})",
    ]
    assert figure.axes[0].get_title() == "valid: no temperature (T = 1)"
    plt.close(figure)


def test_mlflow_metrics_include_balanced_accuracy_and_roc_auc(tiny_model, cache):
    report = evaluate_classifier(tiny_model, cache, WEIGHTS, CALIBRATION, OOD, SPREAD, PARAMS)
    flat = metrics_for_mlflow(report)
    test = report["splits"]["test"]
    assert flat["test_balanced_accuracy"] == {"value": test["balanced_accuracy"], "step": 0}
    assert flat["test_roc_auc_macro"] == {"value": test["roc_auc"]["macro"], "step": 0}
    for label in LABELS:
        assert flat[f"test_roc_auc_{label}"]["value"] == test["roc_auc"]["per_class"][label]
    assert "valid_leak_free_balanced_accuracy" in flat
    # the leak-free valid subset has no adenocarcinoma: its AUC is undefined and not logged
    leak_free_valid = report["leak_free"]["valid"]
    assert leak_free_valid["roc_auc"]["per_class"]["adenocarcinoma"] is None
    assert "valid_leak_free_roc_auc_adenocarcinoma" not in flat
    assert "valid_leak_free_roc_auc_normal" in flat
    assert "valid_leak_free_roc_auc_macro" in flat
    assert all(isinstance(m["value"], float) for m in flat.values())


def test_confusion_figure_shows_counts_and_normalized_side_by_side(tiny_model, cache):
    report = evaluate_classifier(tiny_model, cache, WEIGHTS, CALIBRATION, OOD, SPREAD, PARAMS)
    figure = plot_confusion_matrices(report)
    axes = figure.axes
    assert len(axes) == 2 * 4  # valid, test, and their leak-free subsets
    titles = [axis.get_title() for axis in axes]
    assert all("counts" in title for title in titles[0::2])
    assert all("normalized" in title for title in titles[1::2])
    assert titles[0].startswith("valid: counts") and titles[1].startswith("valid: normalized")
    # the leak-free valid subset has no adenocarcinoma: its normalized row reads n/a
    (leak_free_valid,) = [t for t in titles if t.startswith("valid leak-free: normalized")]
    cells = [text.get_text() for text in axes[titles.index(leak_free_valid)].texts]
    assert cells[:4] == ["n/a"] * 4
    assert all(len(cell) == 4 and cell[1] == "." for cell in cells[4:])  # e.g. "0.67"
    plt.close(figure)

    no_test = cache.with_rows(split=np.array(["train"] * 8 + ["valid"] * 4))
    figure = plot_confusion_matrices(
        evaluate_classifier(tiny_model, no_test, WEIGHTS, CALIBRATION, OOD, SPREAD, PARAMS)
    )
    assert len(figure.axes) == 2 * 2
    plt.close(figure)


def test_roc_figure_has_one_panel_per_evaluated_subset(tiny_model, cache):
    report = evaluate_classifier(tiny_model, cache, WEIGHTS, CALIBRATION, OOD, SPREAD, PARAMS)
    figure = plot_roc_curves(report)
    assert len(figure.axes) == 4
    by_title = {axis.get_title().split(" (")[0]: axis for axis in figure.axes}
    assert set(by_title) == {"valid", "test", "valid leak-free", "test leak-free"}
    test = by_title["test"]
    macro = report["splits"]["test"]["roc_auc"]["macro"]
    assert f"macro AUC {macro:.2f}" in test.get_title()
    legend = [text.get_text() for text in test.get_legend().get_texts()]
    assert legend[0].startswith("chance")
    assert [name.split(" (AUC")[0] for name in legend[1:]] == [
        "Adenocarcinoma", "Large cell carcinoma", "Normal", "Squamous cell carcinoma"
    ]  # fmt: skip
    assert len(test.lines) == 1 + len(LABELS)  # the diagonal and one curve per class
    # a subset where a class has no curve: drawn without it, the class named as undefined
    leak_free_valid = by_title["valid leak-free"]
    legend = [text.get_text() for text in leak_free_valid.get_legend().get_texts()]
    assert "Adenocarcinoma (AUC undefined)" in legend
    drawn = [line for line in leak_free_valid.lines if len(line.get_xdata())]
    assert len(drawn) == 1 + len(LABELS) - 1
    plt.close(figure)

    no_test = cache.with_rows(split=np.array(["train"] * 8 + ["valid"] * 4))
    figure = plot_roc_curves(
        evaluate_classifier(tiny_model, no_test, WEIGHTS, CALIBRATION, OOD, SPREAD, PARAMS)
    )
    assert len(figure.axes) == 2
    plt.close(figure)


def test_roc_figure_when_no_class_has_a_curve():
    metrics = {
        "n_images": 1,
        "roc_auc": {"per_class": dict.fromkeys(LABELS), "macro": None},
        "roc_curve": {},
    }
    report = {
        "weights": WEIGHTS,
        "splits": {"valid": metrics, "test": metrics},
        "leak_free": {"valid": metrics},
    }
    figure = plot_roc_curves(report)
    assert len(figure.axes) == 3  # a 2x2 grid less its unused panel
    assert all("macro AUC n/a" in axis.get_title() for axis in figure.axes)
    plt.close(figure)


def test_ece_before_calibration_is_computed_from_the_temperature(tiny_model, cache):
    report = evaluate_classifier(tiny_model, cache, WEIGHTS, CALIBRATION, OOD, SPREAD, PARAMS)
    unit = evaluate_classifier(
        tiny_model, cache, WEIGHTS, {**CALIBRATION, "temperature": 1.0}, OOD, SPREAD, PARAMS
    )
    valid = report["splits"]["valid"]
    assert 0.0 <= valid["ece"] <= 1.0
    assert unit["splits"]["valid"]["ece"] == pytest.approx(
        unit["splits"]["valid"]["ece_uncalibrated"], abs=1e-6
    )
    assert valid["ece"] == unit["splits"]["valid"]["ece"]  # same model, same probabilities


def _sample_cache(tiny_model, sample_images, training_overrides: dict):
    """The bundled sample (official split) as readers and as the training pipeline caches it."""
    from chest_ct_classifier.pipelines.data_ingestion.nodes import (
        assess_data_quality,
        index_images,
    )
    from chest_ct_classifier.pipelines.training.nodes import cache_activations

    files = {p: (lambda d=d: d) for p, d in sample_images.items()}
    params = settings(
        "data_ingestion",
        {"source": "sample", "split": {"mode": "official", "ratios": {"train": 1}, "seed": 0}},
    )
    table, _, _ = assess_data_quality(index_images(files, params)[0], params)
    return files, cache_activations(
        files, table, tiny_model, settings("training", training_overrides)
    )


def test_grad_cam_examples_show_a_correct_and_a_wrong_answer_per_class(tiny_model, sample_images):
    files, real = _sample_cache(
        tiny_model,
        sample_images,
        {"activation_batch_size": 16, "seed": 0, "augmentation": {"views": 0}},
    )

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


def _sample_table_and_readers(sample_images: dict[str, bytes]):
    """The sample's image table (split and label from the folders, no conflicts) and a reader
    of each file, as the evaluation pipeline's gate gets them."""
    import pandas as pd

    from chest_ct_classifier.images.labels import label_from_folder

    table = pd.DataFrame(
        {"path": list(sample_images),
         "split": [p.split("/")[1] for p in sample_images],
         "label": [label_from_folder(p.split("/")[2]) for p in sample_images],
         "label_conflict": False}
    )  # fmt: skip
    return table, {p: (lambda p=p: sample_images[p]) for p in sample_images}


def test_reduced_precisions_are_checked_against_fp32_on_valid_and_test(tiny_model, sample_images):
    from chest_ct_classifier.model.numeric_precision import int8_feature_extractor
    from chest_ct_classifier.pipelines.evaluation.nodes import check_reduced_precisions

    table, images = _sample_table_and_readers(sample_images)
    params = settings(
        "evaluation",
        {"precision_gate": {"decided_margin": 0.05, "max_accuracy_drop": 0.01, "batch_size": 5,
                            "timing_batch_size": 4, "timing_repeats": 1}},
    )  # fmt: skip
    report, logged = check_reduced_precisions(
        tiny_model, int8_feature_extractor(tiny_model), images, table, params
    )
    assert set(report["paths"]) == {"fp32", "bf16", "int8"}
    n_valid, n_test = (table["split"] == "valid").sum(), (table["split"] == "test").sum()
    for precision in ("bf16", "int8"):
        path = report["paths"][precision]
        assert set(path["splits"]) == {"valid", "test"}
        assert path["splits"]["valid"]["n_images"] == n_valid
        assert path["splits"]["test"]["n_images"] == n_test
        decided_flips = sum(c["decided_disagreements"] for c in path["splits"].values())
        drops = [c["accuracy_drop"] for c in path["splits"].values()]
        assert path["passed"] == (decided_flips == 0 and max(drops) <= 0.01)
        assert path["ms_per_image"] > 0 and path["ms_batch_1"] > 0
        valid_agreement = path["splits"]["valid"]["agreement"]
        assert logged[f"{precision}_valid_agreement"] == [{"value": valid_agreement, "step": 0}]
    assert report["fastest_passing"] in ("fp32", "bf16", "int8")
    assert report["gate"] == {"decided_margin": 0.05, "max_accuracy_drop": 0.01}
    from chest_ct_classifier.model.architecture import model_fingerprint

    assert report["model_fingerprint"] == model_fingerprint(tiny_model)
    assert len(report["int8_fingerprint"]) == 16


def test_a_reduced_path_that_cannot_run_here_fails_the_gate_and_the_run_goes_on(
    tiny_model, sample_images, monkeypatch
):
    from chest_ct_classifier.pipelines.evaluation import nodes

    bf16_without_a_kernel(
        monkeypatch, nodes, "could not create a primitive descriptor for the convolution"
    )
    table, images = _sample_table_and_readers(sample_images)
    params = settings(
        "evaluation", {"precision_gate": {"timing_batch_size": 2, "timing_repeats": 1}}
    )
    # bf16 fails at its first batch, int8 when its (broken) file is loaded
    report, logged = nodes.check_reduced_precisions(
        tiny_model, b"not a tflite model", images, table, params
    )
    bf16, int8 = report["paths"]["bf16"], report["paths"]["int8"]
    assert bf16 == {
        "passed": False,
        "reason": "it could not run on the evaluation machine (RuntimeError: could not create "
        "a primitive descriptor for the convolution)",
    }
    assert not int8["passed"]
    assert int8["reason"].startswith("it could not be loaded on the evaluation machine (")
    assert report["paths"]["fp32"]["ms_per_image"] > 0
    assert report["fastest_passing"] == "fp32"
    assert logged["bf16_passed"] == [{"value": 0.0, "step": 0}]
    assert "bf16_ms_per_image" not in logged


def test_the_ood_detector_is_fitted_on_train_and_measured_on_what_it_never_chose_on(
    tiny_model, sample_images
):
    from chest_ct_classifier.datasets.reference_images_dataset import ReferenceImagesDataset
    from chest_ct_classifier.model.architecture import model_fingerprint
    from chest_ct_classifier.pipelines.evaluation.nodes import measure_ood_detector
    from chest_ct_classifier.pipelines.training.nodes import fit_ood_detector

    overrides = {"activation_batch_size": 16, "augmentation": {"views": 1}}
    training = settings("training", overrides)
    files, cache = _sample_cache(tiny_model, sample_images, overrides)
    held_out = {"paths": [p for p in cache.path if p.startswith("Data/valid/")]}
    detector = fit_ood_detector(tiny_model, cache, held_out, training)
    assert detector.model_fingerprint == model_fingerprint(tiny_model)
    assert detector.target_false_rejection == training.ood.target_false_rejection

    reference = ReferenceImagesDataset({"photo": ["chelsea"], "near": ["shepp_logan_phantom"]})
    report = measure_ood_detector(tiny_model, detector, cache, files, reference.load(), PARAMS)
    json.dumps(report)  # written by a JSON dataset: plain Python values only
    assert set(report["in_distribution"]) == {"valid", "test"}
    for subsets in report["in_distribution"].values():
        assert subsets["official"]["n_images"] == 12
        assert 0.0 <= subsets["official"]["flagged_share"] <= 1.0
    far = {r["image"]: r for r in report["reference"]["images"] if r["kind"] != "near"}
    assert far["photo/chelsea"]["detected"] and "colour" in far["photo/chelsea"]["input_check"]
    assert far["flat/black"]["detected"] and "blank" in far["flat/black"]["input_check"]
    assert report["reference"]["far"]["n_images"] == len(far)
    assert 0.0 <= report["reference"]["far"]["auroc_of_score"] <= 1.0
    assert report["reference"]["near"]["n_images"] == 1

    other = build_classifier(32, None, dense_units=4, seed=1)
    with pytest.raises(ValueError, match="fitted on other weights"):
        measure_ood_detector(other, detector, cache, files, reference.load(), PARAMS)


def test_a_seed_spreads_its_headline_metrics_and_the_recall_of_each_class_it_holds():
    per_class = {
        "adenocarcinoma": {"precision": 0.9, "recall": 0.5, "f1": 0.64, "support": 8},
        "large_cell_carcinoma": {"precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 0},
        "normal": {"precision": 0.6, "recall": 1.0, "f1": 0.75, "support": 3},
    }
    metrics = {"accuracy": 0.7, "macro_f1": 0.6, "ece": 0.1, "loss": 0.9, "per_class": per_class}
    assert _spread_scores(metrics) == {
        "accuracy": 0.7, "macro_f1": 0.6, "ece": 0.1,
        "recall_adenocarcinoma": 0.5, "recall_normal": 1.0,
    }  # fmt: skip


def _spread_value(metrics: dict, key: str) -> float:
    """A seed-spread key's figure in an evaluation's metrics: ``recall_<label>`` is the class's."""
    if key.startswith("recall_"):
        return metrics["per_class"][key.removeprefix("recall_")]["recall"]
    return metrics[key]


def test_seed_spread_repeats_the_final_training_the_served_seed_first(tiny_model, cache):
    schedule = {"phase1_epochs": 3, "phase2_epochs": 1}
    training = settings("training", {"batch_size": 4, "seed": 7, "heads": 2})
    served, _ = train_classifier(cache, tiny_model, schedule, training)
    calibrated = apply_temperature(served, CALIBRATION["temperature"])
    params = settings("evaluation", {"batch_size": 3, "seed_spread": {"runs": 2}})  # 1 more
    spread = measure_seed_spread(
        calibrated, cache, tiny_model, schedule, CALIBRATION, training, params
    )
    runs = params.seed_spread.runs
    assert spread["seeds"] == [7 + run for run in range(runs)] and spread["served_seed"] == 7
    assert set(spread["subsets"]) == {"valid", "valid_leak_free", "test", "test_leak_free"}
    # the first is the served model; the next is the same recipe trained with the next seed
    report = evaluate_classifier(calibrated, cache, WEIGHTS, CALIBRATION, OOD, spread, params)
    assert report["seed_spread"] is spread
    next_seed, _ = train_classifier(
        cache, tiny_model, schedule, training.model_copy(update={"seed": 8})
    )
    other = evaluate_classifier(
        apply_temperature(next_seed, CALIBRATION["temperature"]),
        cache, WEIGHTS, CALIBRATION, OOD, spread, params,
    )  # fmt: skip
    for name, (subset, split) in {
        "test": ("splits", "test"), "valid": ("splits", "valid"),
        "valid_leak_free": ("leak_free", "valid"),
    }.items():  # fmt: skip
        served, next_one = report[subset][split], other[subset][split]
        # each class's recall beside the headline metrics, where the images hold the class
        keys = ["accuracy", "macro_f1", "ece"] + [
            f"recall_{label}" for label, scores in served["per_class"].items() if scores["support"]
        ]
        assert set(spread["subsets"][name]) == set(keys)
        for key in keys:
            values = spread["subsets"][name][key]
            assert len(values["per_seed"]) == runs
            assert values["per_seed"][0] == pytest.approx(_spread_value(served, key), abs=1e-9)
            assert values["per_seed"][1] == pytest.approx(_spread_value(next_one, key), abs=1e-6)
            assert values["mean"] == pytest.approx(np.mean(values["per_seed"]))
            assert values["std"] == pytest.approx(np.std(values["per_seed"], ddof=1))
            assert values["min"] <= values["mean"] <= values["max"]
    # leak-free valid has no adenocarcinoma (its one is a copy of a train image); valid has one
    assert "recall_adenocarcinoma" not in spread["subsets"]["valid_leak_free"]
    assert "recall_adenocarcinoma" in spread["subsets"]["valid"]
    flat = metrics_for_mlflow(report)
    for key in ("accuracy", "recall_adenocarcinoma"):
        mean = spread["subsets"]["test"][key]["mean"]
        assert flat[f"seed_spread.test_{key}_mean"]["value"] == mean
    assert "seed_spread.valid_leak_free_recall_adenocarcinoma_mean" not in flat
