"""Training: cache the frozen layers' activations once, choose the schedule on a leak-free
hold-out of train+valid, refit on train, fold in a temperature when ``calibration.fit_on`` asks
(fitted to the hold-out's answers or valid's)."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import keras
import numpy as np
import pandas as pd

from chest_ct_classifier.config.training import TrainingParameters
from chest_ct_classifier.images.augmentation import augment, augmentation_model
from chest_ct_classifier.images.dicom import DEFAULT_WINDOW, Window
from chest_ct_classifier.images.labels import LABELS
from chest_ct_classifier.images.preprocessing import decode_image, image_to_array, scale_for_vgg16
from chest_ct_classifier.images.splitting import grouped_split
from chest_ct_classifier.model.activation_cache import (
    ActivationCache,
    cached_images,
    content_features,
    content_probabilities,
    content_view_features,
    contents_of,
    features_fingerprint,
)
from chest_ct_classifier.model.architecture import (
    CACHED_LAYER,
    FEATURE_LAYER,
    feature_extractor,
    image_size_of,
    model_after,
    model_fingerprint,
)
from chest_ct_classifier.model.batches import map_batches
from chest_ct_classifier.model.calibration import (
    apply_temperature,
    calibration_loss,
    fit_temperature,
    scale_probabilities,
)
from chest_ct_classifier.model.ood import OodDetector, fit_detector
from chest_ct_classifier.model.two_phase_training import PhaseResult, train_heads

logger = logging.getLogger(__name__)

# Splits whose images may be trained on (train) or steer training (valid, via the hold-out).
POOL_SPLITS = ("train", "valid")


def cache_activations(
    images: dict[str, Callable[[], bytes]],
    image_table: pd.DataFrame,
    model: keras.Model,
    parameters: TrainingParameters,
    dicom_window: Window = DEFAULT_WINDOW,
) -> ActivationCache:
    """Activations of the frozen layers for every usable image, and for augmented views of the
    images training may use, computed once.

    Byte-identical files are one *content*, computed once. Views (``augmentation.views`` per
    content) are made for the train and valid contents without a label conflict, and stored
    in float16 (they only feed training).
    """
    rows = image_table[image_table["path"].isin(list(images))].sort_values("path")
    contents = rows.drop_duplicates("sha256")
    content_of = {digest: i for i, digest in enumerate(contents["sha256"])}
    size = image_size_of(model)
    batch_size = parameters.activation_batch_size
    blocks_1_to_4 = feature_extractor(model, CACHED_LAYER)
    block_5 = model_after(model, CACHED_LAYER, until=FEATURE_LAYER)

    def frozen_outputs(rgb: np.ndarray, what: str) -> tuple[np.ndarray, np.ndarray]:
        step = max(1, len(rgb) // 10 // batch_size) * batch_size

        def progress(done: int, total: int) -> None:
            if done % step == 0 or done == total:
                logger.info("Frozen activations, %s: %d/%d images", what, done, total)

        block_4 = map_batches(
            lambda batch: blocks_1_to_4.predict_on_batch(scale_for_vgg16(batch)),
            rgb,
            batch_size,
            blocks_1_to_4.output_shape[1:],
            progress,
        )
        return block_4, map_batches(
            block_5.predict_on_batch, block_4, batch_size, block_5.output_shape[1:]
        )

    rgb = np.stack([image_to_array(decode_image(images[p](), dicom_window=dicom_window), size)
                    for p in contents["path"]])  # fmt: skip
    activations, features = frozen_outputs(rgb, "originals")

    trainable = rows["split"].isin(POOL_SPLITS) & ~rows["label_conflict"]
    view_content = np.unique(rows.loc[trainable, "sha256"].map(content_of).to_numpy(dtype=int))
    n_views = parameters.augmentation.views
    views = augmentation_model(parameters.augmentation, parameters.seed)
    view_activations = np.zeros((len(view_content), n_views, *activations.shape[1:]), np.float16)
    view_features = np.zeros((len(view_content), n_views, *features.shape[1:]), np.float16)
    for view in range(n_views):
        augmented = map_batches(
            lambda chosen: augment(rgb[chosen], views), view_content, batch_size, rgb.shape[1:]
        ).astype(np.uint8)
        block_4, block_5_out = frozen_outputs(augmented, f"view {view + 1}/{n_views}")
        view_activations[:, view] = block_4
        view_features[:, view] = block_5_out
    return ActivationCache(
        path=rows["path"].to_numpy(dtype=str),
        split=rows["split"].to_numpy(dtype=str),
        label=rows["label"].map(LABELS.index).to_numpy(dtype=np.int64),
        sha256=rows["sha256"].to_numpy(dtype=str),
        group=rows["group"].to_numpy(dtype=np.int64),
        copy_in_train=rows["copy_in_train"].to_numpy(dtype=bool),
        label_conflict=rows["label_conflict"].to_numpy(dtype=bool),
        content=rows["sha256"].map(content_of).to_numpy(dtype=np.int64),
        activations=activations,
        features=features,
        view_content=view_content.astype(np.int64),
        view_activations=view_activations,
        view_features=view_features,
        features_fingerprint=np.asarray(features_fingerprint(model)),
    )


def _without_conflicts(cache: ActivationCache, split: str | tuple[str, ...]) -> np.ndarray:
    # Files whose exact copies carry another label teach nothing but noise.
    return np.isin(cache.split, split) & ~cache.label_conflict


def _phase_history(phases: dict[str, PhaseResult]) -> dict[str, list[dict[str, float]]]:
    """Per-epoch scores shaped for kedro-mlflow's metrics history (``phase1_train_loss``...)."""
    history: dict[str, list[dict[str, float]]] = {}
    for phase, result in phases.items():
        for epoch, record in enumerate(result.history, 1):
            for key, value in record.items():
                history.setdefault(f"{phase}_{key}", []).append({"value": value, "step": epoch})
    return history


def choose_training_schedule(
    cache: ActivationCache, model: keras.Model, parameters: TrainingParameters
) -> tuple[dict[str, Any], dict[str, list[dict[str, float]]], dict[str, Any]]:
    """Choose each phase's number of epochs on a leak-free hold-out of train+valid.

    Valid alone is usually too small to steer training, and in the public archive most of its
    normals are copies of train images. The hold-out takes whole near-duplicate groups, class
    by class, from train and valid together, so no copy of a held-out image is trained on.
    Test images are never used.

    Returns:
        The schedule (epochs per phase, hold-out sizes and scores), the hold-out run's
        per-epoch history for MLflow (its first head's), and that run's answers on the
        held-out images at the chosen epochs (all ``training.heads`` heads together, as the
        refit will answer) (``paths``, ``labels``, ``probabilities``): predictions on images no
        copy of which was trained on, which calibration may fit its temperature to.
    """
    selection = parameters.selection
    pool = _without_conflicts(cache, POOL_SPLITS)
    content, labels = contents_of(cache, pool)
    groups = pd.Series(cache.group[pool]).groupby(cache.content[pool]).first()[content]
    side = grouped_split(
        groups.reset_index(drop=True),
        pd.Series(labels),
        {"fit": 1.0 - selection.holdout_fraction, "holdout": selection.holdout_fraction},
        selection.seed,
    ).to_numpy()  # fmt: skip
    fit, holdout = side == "fit", side == "holdout"
    if not holdout.any() or not fit.any():
        raise ValueError(
            f"cannot hold out {selection.holdout_fraction} of {len(content)} train+valid "
            "images by near-duplicate group: too few images"
        )
    logger.info(
        "Choosing the schedule: training on %d images, monitoring %d held-out images "
        "(%d groups, no copies in training)",
        fit.sum(), holdout.sum(), groups[holdout].nunique(),
    )  # fmt: skip
    holdout_model, phases = train_heads(
        model,
        cached_images(cache, content[fit], labels[fit], with_views=True),
        parameters,
        monitor=cached_images(cache, content[holdout], labels[holdout], with_views=False),
    )
    schedule = {
        "phase1_epochs": phases["phase1"].best_epoch,
        "phase2_epochs": phases["phase2"].best_epoch,
        "heads": parameters.heads,
        "monitor": parameters.early_stopping.monitor,
        "fit_images": int(fit.sum()),
        "holdout_images": int(holdout.sum()),
        "holdout_per_class": {
            label: int((labels[holdout] == i).sum()) for i, label in enumerate(LABELS)
        },
        "holdout_scores": {phase: result.scores_kept() for phase, result in phases.items()},
    }
    logger.info(
        "Schedule: phase 1 %d epochs, phase 2 %d epochs (hold-out scores at those epochs: %s)",
        schedule["phase1_epochs"], schedule["phase2_epochs"], schedule["holdout_scores"],
    )  # fmt: skip
    first_path = {c: p for p, c in zip(cache.path[::-1], cache.content[::-1], strict=True)}
    holdout_predictions = {
        "paths": [str(first_path[c]) for c in content[holdout]],
        "labels": labels[holdout].tolist(),
        "probabilities": content_probabilities(
            holdout_model, cache, content[holdout], parameters.batch_size
        ).tolist(),
    }
    return schedule, _phase_history(phases), holdout_predictions


def train_classifier(
    cache: ActivationCache,
    model: keras.Model,
    schedule: dict[str, Any],
    parameters: TrainingParameters,
) -> tuple[keras.Model, dict[str, list[dict[str, float]]]]:
    """Refit on the whole train split for the chosen number of epochs per phase.

    Valid is scored after every epoch for the record only; it decides nothing here.
    """
    dropped = cache.path[cache.label_conflict & (cache.split == "train")]
    if len(dropped):
        logger.warning(
            "Not training on %d files with conflicting labels: %s", len(dropped), dropped
        )
    content, labels = contents_of(cache, _without_conflicts(cache, "train"))
    if len(content) == 0:
        raise ValueError("no training images in the cached activations")
    valid_content, valid_labels = contents_of(cache, _without_conflicts(cache, "valid"))
    logger.info(
        "Training on %d distinct train images with %d augmented views each: phase 1 %d epochs, "
        "phase 2 %d epochs",
        len(content), cache.n_views,
        schedule["phase1_epochs"], schedule["phase2_epochs"],
    )  # fmt: skip
    trained, phases = train_heads(
        model,
        cached_images(cache, content, labels, with_views=True),
        parameters,
        monitor=cached_images(cache, valid_content, valid_labels, with_views=False)
        if len(valid_content)
        else None,
        epochs=(int(schedule["phase1_epochs"]), int(schedule["phase2_epochs"])),
    )
    history = {
        key.replace("monitor_", "valid_"): values for key, values in _phase_history(phases).items()
    }
    return trained, history


def calibrate_classifier(
    model: keras.Model,
    cache: ActivationCache,
    holdout_predictions: dict[str, Any],
    parameters: TrainingParameters,
) -> tuple[keras.Model, dict[str, Any]]:
    """Temperature-scale the trained model when ``calibration.fit_on`` asks, so that it serves
    the scaled probabilities; with ``none`` (the default) it is served as trained.

    ``calibration.fit_on`` chooses whether and to which answers a temperature is fitted:

    - ``none``: no temperature (T = 1); the model is served as trained. On the public archive,
      grouped cross-validation found every fitted temperature raised the expected calibration
      error of the refit model (docs/results.md): the hold-out run, trained on fewer images,
      is less accurate and more over-confident than the refit model it would calibrate.
    - ``holdout``: the schedule run's answers on its grouped hold-out of train+valid (no copy
      of those images trained on). It is usually the larger leak-free set, with more of the
      rare classes than valid's images without a copy in train (docs/results.md). The schedule run
      trained on a similar number of images for the same epochs, so its confidence on new
      images should be close to the refit model's (an assumption; and its epochs were chosen
      on this hold-out's loss, which may leave T slightly low).
    - ``valid``: the refit model's answers on the valid images with no copy in train (copies
      of training images are answered with a confidence no new image earns).

    Never test. With no such images the model is left as it is (T = 1).
    """
    fit_on = parameters.calibration.fit_on
    if fit_on == "none":
        logger.info("No temperature scaling (training.calibration.fit_on: none): T = 1")
        return model, {"temperature": 1.0, "fitted_on": "none", "n_images": 0}
    if fit_on == "holdout":
        labels = np.asarray(holdout_predictions["labels"], dtype=np.int64)
        probabilities = np.asarray(holdout_predictions["probabilities"], dtype=np.float32)
        probabilities = probabilities.reshape(len(labels), len(LABELS))
        subset = "grouped hold-out of train+valid, answered by the schedule run"
    else:
        leak_free = (cache.split == "valid") & ~cache.copy_in_train
        content, labels = contents_of(cache, leak_free & ~cache.label_conflict)
        probabilities = content_probabilities(model, cache, content, parameters.batch_size)
        subset = "leak_free"
    if len(labels) == 0:
        logger.warning("No %s images: probabilities are NOT calibrated (T = 1)", fit_on)
        return model, {"temperature": 1.0, "fitted_on": None, "n_images": 0}
    temperature = fit_temperature(probabilities, labels)
    calibrated = scale_probabilities(probabilities, temperature)
    record = {
        "temperature": temperature,
        "fitted_on": fit_on,
        "subset": subset,
        "n_images": len(labels),
        "nll_before": calibration_loss(probabilities, labels),
        "nll_after": calibration_loss(calibrated, labels),
    }
    logger.info(
        "Temperature scaling on %d %s images: T = %.3f, NLL %.3f -> %.3f",
        len(labels), fit_on, temperature, record["nll_before"], record["nll_after"],
    )  # fmt: skip
    return apply_temperature(model, temperature), record


def fit_ood_detector(
    model: keras.Model,
    cache: ActivationCache,
    holdout_predictions: dict[str, Any],
    parameters: TrainingParameters,
) -> OodDetector:
    """The out-of-distribution detector of the trained model, in its own feature space (the
    head's input vector: the cache's, or computed from the cached block-4 activations when
    phase 2 fine-tuned block 5).

    Fitted on the train images (with their augmented views) outside the schedule's grouped
    hold-out; the threshold is set on that hold-out's images, which it never saw (no copy of
    them is on the fitting side). Valid images on the fitting side are left out: they are not
    training images. Test is never read.
    """
    held_out_paths = set(holdout_predictions["paths"])
    held_out_content = np.unique(cache.content[np.isin(cache.path, list(held_out_paths))])
    held_out_groups = np.unique(cache.group[np.isin(cache.content, held_out_content)])
    fitting = (
        (cache.split == "train") & ~cache.label_conflict & ~np.isin(cache.group, held_out_groups)
    )
    content, labels = contents_of(cache, fitting)
    if len(content) == 0:
        raise ValueError("no train images outside the hold-out to fit the detector on")
    batch = parameters.batch_size
    train_features = [content_features(model, cache, content, batch)]
    train_labels = [labels]
    with_views = np.isin(content, cache.view_content)
    if cache.n_views and with_views.any():
        at = np.searchsorted(cache.view_content, content[with_views])
        views = content_view_features(model, cache, at, batch)  # (m, V, d)
        train_features.append(views.reshape(-1, views.shape[-1]))
        train_labels.append(np.repeat(labels[with_views], cache.n_views))
    detector = fit_detector(
        np.concatenate(train_features),
        np.concatenate(train_labels),
        content_features(model, cache, held_out_content, batch),
        parameters.ood.target_false_rejection,
        model_fingerprint(model),
    )
    logger.info(
        "Out-of-distribution detector: %d train images (%d vectors with views), threshold %.2f "
        "set on %d held-out images at a %.0f%% false-rejection target",
        len(content), sum(len(f) for f in train_labels), detector.threshold,
        len(held_out_content), 100 * parameters.ood.target_false_rejection,
    )  # fmt: skip
    return detector
