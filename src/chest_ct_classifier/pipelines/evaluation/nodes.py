"""Evaluation on valid and, when the data has one, test: metrics, confusion matrices, registry."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from typing import Any

import keras
import matplotlib

matplotlib.use("Agg")  # headless: figures are written to files, never shown
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from sklearn.metrics import roc_auc_score

from chest_ct_classifier.config.evaluation import EvaluationParameters, PrecisionGateSettings
from chest_ct_classifier.config.training import TrainingParameters
from chest_ct_classifier.images.dicom import DEFAULT_WINDOW, Window
from chest_ct_classifier.images.labels import DISPLAY_NAMES, LABELS
from chest_ct_classifier.images.preprocessing import (
    decode_image,
    image_to_array,
    prepare_image,
    preprocess_image_bytes,
    scale_for_vgg16,
)
from chest_ct_classifier.model.activation_cache import (
    ActivationCache,
    content_features,
    row_probabilities,
)
from chest_ct_classifier.model.architecture import (
    FEATURE_LAYER,
    feature_extractor,
    image_size_of,
    model_fingerprint,
)
from chest_ct_classifier.model.batches import map_batches
from chest_ct_classifier.model.calibration import (
    apply_temperature,
    ece_if_calibrated,
    expected_calibration_error,
    reliability_bands,
    reliability_bins,
    scale_probabilities,
)
from chest_ct_classifier.model.explanation import grad_cam, overlay_heatmap
from chest_ct_classifier.model.numeric_precision import (
    AUTO,
    PRECISIONS,
    Forward,
    agreement_with_fp32,
    choose_precision,
    failure_summary,
    forward_for,
    int8_fingerprint,
    median_seconds,
    passes_gate,
)
from chest_ct_classifier.model.ood import METHOD as OOD_METHOD
from chest_ct_classifier.model.ood import OodDetector
from chest_ct_classifier.model.two_phase_training import predict_in_batches
from chest_ct_classifier.pipelines.training.nodes import train_classifier
from chest_ct_classifier.registry.champion_gate import MODEL_NAME
from chest_ct_classifier.scoring.bootstrap import bootstrap_intervals
from chest_ct_classifier.scoring.metrics import classification_metrics
from chest_ct_classifier.scoring.model_card import (
    build_model_card,
    render_markdown,
    temperature_scaled,
)

logger = logging.getLogger(__name__)

EVALUATED_SPLITS = ("valid", "test")


def evaluate_classifier(
    model: keras.Model,
    cache: ActivationCache,
    weights_info: dict[str, Any],
    calibration: dict[str, Any],
    ood_report: dict[str, Any],
    seed_spread: dict[str, Any],
    parameters: EvaluationParameters,
) -> dict[str, Any]:
    """Metrics of the trained model on each evaluated split present in the data, on the official
    split and on its leak-free subset (images with no exact or near copy in train).

    The head runs on the cache's input vectors (block 5 too, on the cached block-4 activations,
    when phase 2 fine-tuned it): the same computation as the whole model on the images, without
    running VGG16 again. When training folded a temperature in (``training.calibration.fit_on``
    holdout or valid), the model serves temperature-scaled probabilities and
    ``ece_uncalibrated`` is the ECE the same model had before; with none (the default) the two
    are the same number. ``ece_if_calibrated`` is what a perfectly calibrated model with the
    same confidences would read on as many images, and how often it would read as much
    (``p_value``): on a few hundred images ECE is never 0, and only its excess says the
    probabilities are off.
    """
    batch_size = parameters.batch_size
    n_bins = parameters.calibration_bins
    bootstrap = parameters.bootstrap
    resampling = (bootstrap.resamples, bootstrap.confidence, bootstrap.seed)
    temperature = float(calibration["temperature"])
    scaled = temperature_scaled(calibration)
    report: dict[str, Any] = {
        "weights": weights_info,
        "calibration": calibration,
        "out_of_distribution": {
            "detector": ood_report["detector"],
            "in_distribution": ood_report["in_distribution"],
            "reference": {k: v for k, v in ood_report["reference"].items() if k != "images"},
        },
        "splits": {},
        "leak_free": {},
        "reliability": {},
        "seed_spread": seed_spread,
    }
    for split in EVALUATED_SPLITS:
        in_split = cache.split == split
        if not in_split.any():
            logger.info("No %s images: %s metrics skipped", split, split)
            continue
        probabilities = row_probabilities(model, cache, in_split, batch_size)
        uncalibrated = scale_probabilities(probabilities, 1.0 / temperature)
        labels = cache.label[in_split]
        leak_free = ~cache.copy_in_train[in_split]
        subsets = _scored_subsets(labels, probabilities, leak_free, n_bins)
        for is_leak_free, mask, metrics in subsets:
            subset = "leak_free" if is_leak_free else "splits"
            metrics["ece_uncalibrated"] = expected_calibration_error(
                uncalibrated[mask], labels[mask], n_bins
            )
            metrics["intervals"] = bootstrap_intervals(
                labels[mask], probabilities[mask], *resampling
            )
            metrics["ece_if_calibrated"] = ece_if_calibrated(
                probabilities[mask], labels[mask], n_bins, *resampling
            )
            report[subset][split] = metrics
            logger.info(
                "%s%s: accuracy %.3f, macro-F1 %.3f, loss %.3f, ECE %.3f%s on %d images",
                split, " (leak-free)" if subset == "leak_free" else "",
                metrics["accuracy"], metrics["macro_f1"], metrics["loss"], metrics["ece"],
                f" ({metrics['ece_uncalibrated']:.3f} before the temperature)" if scaled else "",
                metrics["n_images"],
            )  # fmt: skip
        report["reliability"][split] = {
            "calibrated": reliability_bins(probabilities, labels, n_bins),
            "uncalibrated": reliability_bins(uncalibrated, labels, n_bins),
            # what each bin's accuracy would read if the served probabilities were calibrated
            "if_calibrated": reliability_bands(probabilities, n_bins, *resampling),
        }
    if not report["splits"]:
        raise ValueError("no valid or test images to evaluate on")
    return report


def _scored_subsets(
    labels: np.ndarray, probabilities: np.ndarray, leak_free: np.ndarray, n_bins: int
) -> Iterator[tuple[bool, np.ndarray | slice, dict[str, Any]]]:
    """A split's answers scored whole, then on its leak-free part (skipped when empty): whether
    leak-free, the rows, and the classification metrics with the ECE."""
    for is_leak_free, mask in ((False, slice(None)), (True, leak_free)):
        if len(labels[mask]) == 0:
            continue
        metrics = classification_metrics(labels[mask], probabilities[mask])
        metrics["ece"] = expected_calibration_error(probabilities[mask], labels[mask], n_bins)
        yield is_leak_free, mask, metrics


SPREAD_METRICS = ("accuracy", "macro_f1", "ece")
"""The headline metrics a seed spread reports, beside each class's recall (``recall_<label>``)."""


def _spread_scores(metrics: dict[str, Any]) -> dict[str, float]:
    """The headline metrics and the recall of every class present: a class the images lack
    has no recall to spread (scikit-learn's 0.0 would read as every one missed)."""
    scores = {key: float(metrics[key]) for key in SPREAD_METRICS}
    for label, per_class in metrics["per_class"].items():
        if per_class["support"]:
            scores[f"recall_{label}"] = float(per_class["recall"])
    return scores


def measure_seed_spread(
    model: keras.Model,
    cache: ActivationCache,
    untrained_model: keras.Model,
    schedule: dict[str, Any],
    calibration: dict[str, Any],
    training: TrainingParameters,
    parameters: EvaluationParameters,
) -> dict[str, Any]:
    """How much the headline metrics owe to the training seed: the final training (the same
    images, epochs and temperature as the served model) repeated with the served seed and the
    next ``seed_spread.runs - 1`` integers, each scored on valid and test (and their leak-free
    subsets): accuracy, macro-F1, ECE and each class's recall (``recall_<label>``). From the
    cached activations: with the head alone it costs seconds.

    The served seed's training is ``model`` itself (the candidate, with its temperature if it
    has one), not run again.
    Nothing is chosen with these figures: they describe the served model's recipe, not a
    better model.
    """
    seeds = [training.seed + run for run in range(parameters.seed_spread.runs)]
    temperature = float(calibration["temperature"])
    per_seed: dict[str, dict[str, list[float]]] = {}
    for seed in seeds:
        if seed == training.seed:
            calibrated = model
        else:
            trained, _ = train_classifier(
                cache, untrained_model, schedule, training.model_copy(update={"seed": seed})
            )
            calibrated = apply_temperature(trained, temperature)
        for split in EVALUATED_SPLITS:
            in_split = cache.split == split
            if not in_split.any():
                continue
            probabilities = row_probabilities(calibrated, cache, in_split, parameters.batch_size)
            labels = cache.label[in_split]
            leak_free = ~cache.copy_in_train[in_split]
            subsets = _scored_subsets(labels, probabilities, leak_free, parameters.calibration_bins)
            for is_leak_free, _, metrics in subsets:
                name = f"{split}_leak_free" if is_leak_free else split
                scores = per_seed.setdefault(name, {})
                for key, value in _spread_scores(metrics).items():
                    scores.setdefault(key, []).append(value)
    spread = {
        name: {
            key: {
                "mean": float(np.mean(values)),
                "std": float(np.std(values, ddof=1)),
                "min": float(np.min(values)),
                "max": float(np.max(values)),
                "per_seed": values,
            }
            for key, values in scores.items()
        }
        for name, scores in per_seed.items()
    }
    for name, scores in spread.items():
        logger.info(
            "Seed spread over %d trainings, %s: %s",
            len(seeds), name,
            ", ".join(f"{k} {v['mean']:.3f} ± {v['std']:.3f}" for k, v in scores.items()),
        )  # fmt: skip
    return {"seeds": seeds, "served_seed": training.seed, "subsets": spread}


NEAR_KINDS = ("near",)
"""Reference kinds that are medical or CT-like (a CT phantom): reported apart from the far ones."""


def measure_ood_detector(
    model: keras.Model,
    detector: OodDetector,
    cache: ActivationCache,
    images: dict[str, Callable[[], bytes]],
    reference_images: dict[str, Callable[[], bytes]],
    parameters: EvaluationParameters,
    dicom_window: Window = DEFAULT_WINDOW,
) -> dict[str, Any]:
    """How the out-of-distribution check (input checks, then the detector's score) treats valid
    and test chest CT slices (it should let them through) and images that are not CT (it
    should stop them).

    Nothing here is fitted or tuned: the input checks' limits were set from train and valid
    images' statistics and the score's threshold on the schedule's hold-out, so every figure is
    a measurement on images the check never chose anything on.
    """
    if detector.model_fingerprint != model_fingerprint(model):
        raise ValueError(
            f"the detector was fitted on other weights ({detector.model_fingerprint}) than the "
            f"model's ({model_fingerprint(model)})"
        )
    batch, size = parameters.batch_size, image_size_of(model)
    report: dict[str, Any] = {
        "detector": {
            "method": OOD_METHOD,
            "threshold": detector.threshold,
            "target_false_rejection": detector.target_false_rejection,
            "tuned_on": "nothing measured here: the score's threshold was set on the "
            "schedule's held-out train+valid images, the input checks' limits on train and "
            "valid images",
        },
        "in_distribution": {},
        "reference": {},
    }
    in_scores = []
    for split in EVALUATED_SPLITS:
        rows = cache.split == split
        if not rows.any():
            continue
        content, inverse = np.unique(cache.content[rows], return_inverse=True)
        scores = detector.scores(content_features(model, cache, content, batch))
        scores = scores[inverse]
        implausible = np.array([
            prepare_image(images[p](), size, dicom_window=dicom_window).input_problem is not None
            for p in cache.path[rows]
        ])  # fmt: skip
        flagged = implausible | (scores > detector.threshold)
        in_scores.append(scores)
        report["in_distribution"][split] = {
            subset: {
                "n_images": int(mask.sum()),
                "flagged": int(flagged[mask].sum()),
                "flagged_share": float(flagged[mask].mean()) if mask.any() else None,
                "flagged_by_input_checks": int(implausible[mask].sum()),
            }
            for subset, mask in (
                ("official", np.ones(rows.sum(), bool)),
                ("leak_free", ~cache.copy_in_train[rows]),
            )
        }
    keys = sorted(reference_images)
    prepared = [prepare_image(reference_images[key](), size, dicom_window=dicom_window)
                for key in keys]  # fmt: skip
    reasons = [image.input_problem for image in prepared]
    scores = detector.scores(
        predict_in_batches(
            feature_extractor(model, FEATURE_LAYER),
            np.stack([image.model_input for image in prepared]),
            batch,
        )
    )
    per_image = [
        {"image": key, "kind": key.split("/")[0], "score": float(score), "input_check": reason,
         "detected": bool(reason is not None or score > detector.threshold)}
        for key, reason, score in zip(keys, reasons, scores, strict=True)
    ]  # fmt: skip
    report["reference"]["images"] = per_image
    in_all = np.concatenate(in_scores) if in_scores else np.zeros(0)
    for group, members in (
        ("far", [r for r in per_image if r["kind"] not in NEAR_KINDS]),
        ("near", [r for r in per_image if r["kind"] in NEAR_KINDS]),
    ):
        if not members:
            continue
        ood_scores = np.array([r["score"] for r in members])
        auroc = (
            float(roc_auc_score(np.r_[np.zeros(len(in_all)), np.ones(len(ood_scores))],
                                np.r_[in_all, ood_scores]))
            if len(in_all) else None
        )  # fmt: skip
        report["reference"][group] = {
            "n_images": len(members),
            "detected": sum(r["detected"] for r in members),
            "detection_rate": float(np.mean([r["detected"] for r in members])),
            "detection_rate_by_score_alone": float(np.mean(ood_scores > detector.threshold)),
            "auroc_of_score": auroc,
        }
    logger.info(
        "Out-of-distribution check: flagged %s of valid/test slices; detected %s",
        {s: v["official"]["flagged_share"] for s, v in report["in_distribution"].items()},
        {g: report["reference"][g]["detection_rate"] for g in ("far", "near")
         if g in report["reference"]},
    )  # fmt: skip
    return report


def _evaluated(report: dict[str, Any]) -> list[tuple[str, str, dict[str, Any]]]:
    """(name for MLflow, title, metrics) of every evaluated subset."""
    return [
        (f"{split}{'_leak_free' if subset == 'leak_free' else ''}",
         f"{split}{' leak-free' if subset == 'leak_free' else ''}", metrics)
        for subset in ("splits", "leak_free")
        for split, metrics in report[subset].items()
    ]  # fmt: skip


def metrics_for_mlflow(report: dict[str, Any]) -> dict[str, dict[str, float]]:
    """Flat scalar metrics (``valid_accuracy``, ``test_leak_free_macro_f1``,
    ``valid_roc_auc_normal``, ...) for MLflow; undefined ROC AUCs (None) are not logged.
    Every class's precision, recall and F1 are logged (scikit-learn's 0.0 where undefined):
    a registered model's measured record (``serving.measured_quality``) reads all four
    recalls."""
    flat: dict[str, float] = {}
    for name, _, metrics in _evaluated(report):
        for key in ("accuracy", "balanced_accuracy", "macro_f1", "loss", "ece", "ece_uncalibrated"):
            flat[f"{name}_{key}"] = metrics[key]
        for label, scores in metrics["per_class"].items():
            for key in ("precision", "recall", "f1"):
                flat[f"{name}_{key}_{label}"] = scores[key]
        roc_auc = metrics["roc_auc"]
        if roc_auc["macro"] is not None:
            flat[f"{name}_roc_auc_macro"] = roc_auc["macro"]
        for label, auc in roc_auc["per_class"].items():
            if auc is not None:
                flat[f"{name}_roc_auc_{label}"] = auc
        if_calibrated = metrics["ece_if_calibrated"]
        flat[f"{name}_ece_if_calibrated_mean"] = if_calibrated["mean"]
        flat[f"{name}_ece_if_calibrated_high"] = if_calibrated["high"]
        flat[f"{name}_ece_p_value"] = if_calibrated["p_value"]
        intervals = metrics.get("intervals", {})
        for key in ("accuracy", "macro_f1"):
            if intervals.get(key):
                flat[f"{name}_{key}_ci_low"] = intervals[key]["low"]
                flat[f"{name}_{key}_ci_high"] = intervals[key]["high"]
    flat["temperature"] = report["calibration"]["temperature"]
    for name, scores in (report.get("seed_spread") or {}).get("subsets", {}).items():
        for key, values in scores.items():
            flat[f"seed_spread.{name}_{key}_mean"] = values["mean"]
            flat[f"seed_spread.{name}_{key}_std"] = values["std"]
    ood = report.get("out_of_distribution") or {}
    for split, subsets in ood.get("in_distribution", {}).items():
        for subset, counts in subsets.items():
            if counts["flagged_share"] is not None:
                name = f"{split}{'_leak_free' if subset == 'leak_free' else ''}"
                flat[f"ood.{name}_flagged_share"] = counts["flagged_share"]
    for group, result in ood.get("reference", {}).items():
        flat[f"ood.{group}_detection_rate"] = result["detection_rate"]
        if result["auroc_of_score"] is not None:
            flat[f"ood.{group}_auroc"] = result["auroc_of_score"]
    return {name: {"value": float(value), "step": 0} for name, value in flat.items()}


def write_model_card(
    model: keras.Model,
    metrics: dict[str, Any],
    data_quality: dict[str, Any],
    ingestion_summary: dict[str, Any],
    training_schedule: dict[str, Any],
    precision_gate: dict[str, Any],
) -> tuple[dict[str, Any], str]:
    """The run's model card, as JSON and as Markdown, from the reports the run wrote; it names
    the model by its weights' fingerprint, so a card is never shown for another model."""
    card = build_model_card(
        MODEL_NAME,
        model_fingerprint(model),
        metrics,
        data_quality,
        ingestion_summary,
        training_schedule,
        precision_gate,
    )
    return card, render_markdown(card)


def plot_confusion_matrices(report: dict[str, Any]) -> plt.Figure:
    """Per evaluated subset, one row of two panels: the confusion matrix in counts, and the same
    matrix normalized by true class (each row divided by its class's image count, so the
    diagonal is the per-class recall). Rows of a class with no images read "n/a"."""
    panels = _evaluated(report)
    figure, axes = plt.subplots(
        len(panels), 2, figsize=(12.5, 6 * len(panels)), squeeze=False, layout="constrained"
    )
    names = [DISPLAY_NAMES[label].replace(" ", "\n", 1) for label in LABELS]
    for row_axes, (_, title, metrics) in zip(axes, panels, strict=True):
        counts = np.asarray(metrics["confusion_matrix"])
        normalized = np.asarray(metrics["confusion_matrix_normalized"], dtype=float)
        fractions = np.char.mod("%.2f", normalized)
        fractions[counts.sum(axis=1) == 0] = "n/a"  # a class with no images: no fractions
        drawn = (
            (counts, max(int(counts.max()), 1), counts.astype(str),
             f"{title}: counts ({metrics['n_images']} images)\n"
             f"accuracy {metrics['accuracy']:.2f}, macro-F1 {metrics['macro_f1']:.2f}"),
            (normalized, 1.0, fractions,
             f"{title}: normalized by true class (rows sum to 1)\n"
             f"balanced accuracy {metrics['balanced_accuracy']:.2f}"),
        )  # fmt: skip
        for axis, (matrix, vmax, cells, panel_title) in zip(row_axes, drawn, strict=True):
            axis.imshow(matrix, cmap="Blues", vmin=0, vmax=vmax)
            for (row, column), value in np.ndenumerate(matrix):
                colour = "white" if value > vmax / 2 else "black"
                axis.text(column, row, cells[row, column], ha="center", va="center", color=colour)
            axis.set_xticks(range(len(LABELS)), names, fontsize=8)
            axis.set_yticks(range(len(LABELS)), names, fontsize=8)
            axis.set_xlabel("predicted")
            axis.set_ylabel("true")
            axis.set_title(panel_title, fontsize=10)
    figure.suptitle(f"Confusion matrices (VGG16 weights: {report['weights']['used']})")
    return figure


def plot_roc_curves(report: dict[str, Any]) -> plt.Figure:
    """One-vs-rest ROC curves, one panel per evaluated subset and one curve per class, drawn
    from the metrics report alone; a class with no curve there (no positive or no negative
    image) is named in the legend with its AUC undefined."""
    panels = _evaluated(report)
    columns = min(2, len(panels))
    rows = -(-len(panels) // columns)
    figure, axes = plt.subplots(
        rows, columns, figsize=(6 * columns, 6 * rows), squeeze=False, layout="constrained"
    )
    for axis in axes.flat[len(panels) :]:
        figure.delaxes(axis)  # exactly one axes per subset
    colours = plt.get_cmap("tab10").colors
    for axis, (_, title, metrics) in zip(axes.flat, panels, strict=False):
        axis.plot([0, 1], [0, 1], color="grey", linestyle=":", label="chance (AUC 0.50)")
        for index, label in enumerate(LABELS):
            curve = metrics["roc_curve"].get(label)
            auc = metrics["roc_auc"]["per_class"][label]
            if curve is None or auc is None:
                axis.plot([], [], " ", label=f"{DISPLAY_NAMES[label]} (AUC undefined)")
                continue
            axis.plot(
                curve["fpr"],
                curve["tpr"],
                color=colours[index % len(colours)],
                label=f"{DISPLAY_NAMES[label]} (AUC {auc:.2f})",
            )
        axis.set_xlim(0, 1)
        axis.set_ylim(0, 1.01)
        axis.set_aspect("equal")
        axis.set_xlabel("false positive rate")
        axis.set_ylabel("true positive rate")
        macro = metrics["roc_auc"]["macro"]
        axis.set_title(
            f"{title} ({metrics['n_images']} images): macro AUC "
            f"{'n/a' if macro is None else f'{macro:.2f}'}",
            fontsize=10,
        )
        axis.legend(loc="lower right", fontsize=8)
    figure.suptitle(
        f"ROC curves, each class against the rest (VGG16 weights: {report['weights']['used']})"
    )
    return figure


def plot_reliability_diagrams(report: dict[str, Any]) -> plt.Figure:
    """Reliability diagram per evaluated split: accuracy against confidence, before and after
    temperature scaling; the diagonal is perfect calibration, and the grey bars are where a
    perfectly calibrated model's accuracy would fall in each bin on this many images."""
    splits = list(report["reliability"])
    figure, axes = plt.subplots(1, len(splits), figsize=(6 * len(splits), 5.5), squeeze=False)
    scaled = temperature_scaled(report["calibration"])
    # without a temperature the two curves are one: drawn once, named for what it is
    curves = (
        (("uncalibrated", "s--", "uncalibrated"), ("calibrated", "o-", "calibrated"))
        if scaled
        else (("calibrated", "o-", "the model, no temperature"),)
    )
    for axis, split in zip(axes[0], splits, strict=True):
        axis.plot([0, 1], [0, 1], color="grey", linestyle=":", label="perfect calibration")
        served = report["reliability"][split]["calibrated"]
        band = report["reliability"][split]["if_calibrated"]
        drawn = [(c, low, high) for c, low, high in zip(served["confidence"], band["low"],
                 band["high"], strict=True) if c is not None]  # fmt: skip
        if_calibrated = report["splits"][split]["ece_if_calibrated"]
        axis.vlines(
            [c for c, _, _ in drawn],
            [low for _, low, _ in drawn],
            [high for _, _, high in drawn],
            color="lightgrey",
            linewidth=6,
            label=f"a calibrated model's {if_calibrated['confidence']:.0%} range "
            f"(ECE {if_calibrated['mean']:.3f}, p = {if_calibrated['p_value']:.2f})",
        )
        for kind, style, name in curves:
            bins = report["reliability"][split][kind]
            points = [(c, a) for c, a in zip(bins["confidence"], bins["accuracy"], strict=True)
                      if c is not None]  # fmt: skip
            ece = report["splits"][split]["ece" if kind == "calibrated" else "ece_uncalibrated"]
            axis.plot(*zip(*points, strict=True), style, label=f"{name} (ECE {ece:.3f})")
        axis.set_xlim(0, 1)
        axis.set_ylim(0, 1)
        axis.set_xlabel("confidence (top-class probability)")
        axis.set_ylabel("accuracy")
        fitted_here = (
            " (fitted on this split)" if split == report["calibration"]["fitted_on"] else ""
        )
        axis.set_title(
            f"{split}: temperature {report['calibration']['temperature']:.2f}{fitted_here}"
            if scaled
            else f"{split}: no temperature (T = 1)"
        )
        axis.legend(loc="upper left", fontsize=8)
    figure.tight_layout()
    return figure


def plot_grad_cam_examples(
    model: keras.Model,
    images: dict[str, Callable[[], bytes]],
    cache: ActivationCache,
    parameters: EvaluationParameters,
    dicom_window: Window = DEFAULT_WINDOW,
) -> plt.Figure:
    """Grad-CAM overlays: per class, the most confident correct and wrong answer on test (on
    valid when there is no test), so a reader sees what the model looks at, shortcuts included.
    """
    split = "test" if (cache.split == "test").any() else "valid"
    in_split = cache.split == split
    probabilities = row_probabilities(model, cache, in_split, parameters.batch_size)
    paths, labels = cache.path[in_split], cache.label[in_split]
    predicted = probabilities.argmax(axis=1)
    size = image_size_of(model)
    figure, axes = plt.subplots(len(LABELS), 2, figsize=(7, 3.4 * len(LABELS)), squeeze=False)
    for row, label in enumerate(LABELS):
        for column, correct in enumerate((True, False)):
            axis = axes[row, column]
            axis.axis("off")
            candidates = np.flatnonzero((labels == row) & ((predicted == row) == correct))
            if not len(candidates):
                kind = "correct" if correct else "wrong"
                axis.set_title(f"{DISPLAY_NAMES[label]}: no {kind} answer", fontsize=8)
                continue
            chosen = candidates[np.argmax(probabilities[candidates].max(axis=1))]
            data = images[paths[chosen]]()
            rgb = image_to_array(decode_image(data, dicom_window=dicom_window), size)
            heatmap, answer = grad_cam(model, scale_for_vgg16(rgb))
            axis.imshow(overlay_heatmap(rgb, heatmap))
            axis.set_title(
                f"{'correct' if correct else 'WRONG'}: true {DISPLAY_NAMES[label]}\n"
                f"predicted {DISPLAY_NAMES[LABELS[int(answer.argmax())]]} ({answer.max():.2f})",
                fontsize=8,
            )
    figure.suptitle(f"Grad-CAM on {split}: most confident correct and wrong answer per class")
    figure.tight_layout()
    return figure


def check_reduced_precisions(
    model: keras.Model,
    int8_model: bytes,
    images: dict[str, Callable[[], bytes]],
    image_table: pd.DataFrame,
    parameters: EvaluationParameters,
    dicom_window: Window = DEFAULT_WINDOW,
    cache: ActivationCache | None = None,
) -> tuple[dict[str, Any], dict[str, list[dict[str, float]]]]:
    """The accuracy gate of the reduced-precision paths, and their speed on this machine.

    Every file of valid and test (when present) goes through the whole network on each reduced
    path, from its bytes, as the app and batch inference see it. fp32's answers, the reference,
    are read from the training's activation cache when ``cache`` is given (its block-4
    activations were computed in fp32 from the same bytes by the same preprocessing: block 5
    and the head are all that is left to run), else computed the same way as the others.
    A reduced path passes when, on every split, it gives fp32's answer on every image fp32 is
    decided on (top-2 margin at least ``decided_margin``) and its accuracy is at most
    ``max_accuracy_drop`` below fp32's (``parameters.precision_gate``); the near ties that
    flipped are counted. A reduced path that cannot be built or run here fails the gate with
    the error as its reason (and no ``splits`` or timings). Speed: median
    milliseconds per image in batches of ``timing_batch_size`` and of one, over
    ``timing_repeats`` runs.

    Returns:
        The report (``precision_gate.json``; ``paths`` is what
        ``numeric_precision.choose_precision`` reads) and its numbers for MLflow
        (``precision.int8_valid_agreement``, ...).
    """
    size = image_size_of(model)
    gate = parameters.precision_gate
    decided_margin = gate.decided_margin
    max_drop = gate.max_accuracy_drop
    rows = image_table[
        image_table["split"].isin(EVALUATED_SPLITS)
        & ~image_table["label_conflict"]
        & image_table["path"].isin(list(images))
    ].sort_values("path")
    inputs = {
        split: (
            np.stack(
                [
                    preprocess_image_bytes(images[p](), size, dicom_window=dicom_window)
                    for p in group["path"]
                ]
            ),
            group["label"].map(LABELS.index).to_numpy(),
        )
        for split, group in rows.groupby("split")
    }
    fp32 = forward_for(model, "fp32")
    batch = gate.batch_size

    def answers(forward: Forward, x: np.ndarray) -> np.ndarray:
        return map_batches(forward, x, batch, (len(LABELS),))

    timing_images = np.concatenate([x for x, _ in inputs.values()]) if inputs else None
    if cache is None:
        reference = {split: answers(fp32, x) for split, (x, _) in inputs.items()}
    else:
        reference = {
            split: _cached_answers(model, cache, group["path"].to_numpy(dtype=str), batch)
            for split, group in rows.groupby("split")
        }
    report: dict[str, Any] = {
        # which files were checked: a report is never applied to another model
        "model_fingerprint": model_fingerprint(model),
        "int8_fingerprint": int8_fingerprint(int8_model),
        "gate": {"decided_margin": decided_margin, "max_accuracy_drop": max_drop},
        "paths": {},
    }
    for precision in PRECISIONS:
        path: dict[str, Any] = {}
        if precision == "fp32":
            forward = fp32
        else:
            # A reduced path that cannot be built (a broken int8 file) or that this machine's
            # libraries cannot run (oneDNN with no kernel for bfloat16 convolutions) did not
            # pass: the run goes on, and fp32 is served.
            stage = "be loaded"
            try:
                forward = forward_for(model, precision, int8_model)
                stage = "run"
                candidate = {split: answers(forward, x) for split, (x, _) in inputs.items()}
            except Exception as exc:
                logger.exception("The %s path could not %s", precision, stage)
                reason = f"it could not {stage} on the evaluation machine ({failure_summary(exc)})"
                report["paths"][precision] = {"passed": False, "reason": reason}
                continue
            path["splits"] = {
                split: agreement_with_fp32(
                    reference[split], candidate[split], labels, decided_margin
                )
                for split, (_, labels) in inputs.items()
            }
            path["passed"], path["reason"] = passes_gate(path["splits"], decided_margin, max_drop)
        if timing_images is not None:
            path |= _timings(forward, timing_images, gate)
        report["paths"][precision] = path
        logger.info("Precision %s: %s; %s", precision, path.get("reason", "the reference"),
                    {k: v for k, v in path.items() if k.startswith("ms_")})  # fmt: skip
    chosen, reason = choose_precision(AUTO, report)
    report["fastest_passing"], report["reason"] = chosen, reason
    flat: dict[str, list[dict[str, float]]] = {}
    for precision, path in report["paths"].items():
        numbers = {
            "ms_per_image": path.get("ms_per_image"),
            "ms_batch_1": path.get("ms_batch_1"),
            "passed": float(path["passed"]) if "passed" in path else None,
        }
        for split, c in path.get("splits", {}).items():
            numbers[f"{split}_agreement"] = c["agreement"]
            numbers[f"{split}_accuracy_drop"] = c["accuracy_drop"]
            numbers[f"{split}_decided_disagreements"] = c["decided_disagreements"]
            numbers[f"{split}_near_tie_flips"] = c["near_tie_flips"]
        for key, value in numbers.items():
            if value is not None:
                flat[f"{precision}_{key}"] = [{"value": float(value), "step": 0}]
    return report, flat


def _cached_answers(
    model: keras.Model, cache: ActivationCache, paths: np.ndarray, batch_size: int
) -> np.ndarray:
    """The model's probabilities for these files (in this order) from the cached activations."""
    rows = np.flatnonzero(np.isin(cache.path, paths))
    if not np.array_equal(cache.path[rows], paths):
        raise ValueError(
            "the activation cache does not hold these files in this order: run the training "
            "pipeline's cache_activations on the same images again"
        )
    selected = np.zeros(len(cache.path), dtype=bool)
    selected[rows] = True
    return row_probabilities(model, cache, selected, batch_size)


def _timings(
    forward: Forward, images: np.ndarray, parameters: PrecisionGateSettings
) -> dict[str, float]:
    repeats = parameters.timing_repeats
    batch = images[: parameters.timing_batch_size]
    return {
        "ms_per_image": median_seconds(lambda: forward(batch), repeats) * 1000.0 / len(batch),
        "ms_batch_1": median_seconds(lambda: forward(batch[:1]), repeats) * 1000.0,
    }
