"""Two-phase training on cached activations: the head first, then block 5 with the head.

Blocks 1-4 never change, so their activations are computed once per image and augmented view
and cached (see the training pipeline's ``cache_activations``), together with the head's input
vector (``FEATURE_LAYER``) computed with block 5 still frozen. Phase 1 trains only the head, on
that cached vector of every view.
Phase 2 unfreezes block 5 and trains it with the head from the cached block-4 activations, each
epoch on one randomly chosen view per image: an epoch costs block 5 and the head, not VGG16.

With a monitor set each phase stops early (patience) and restores its best epoch's weights; the
chosen epoch counts can then be replayed on other data without a monitor (a refit).
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable
from dataclasses import dataclass, field

import keras
import numpy as np
import tensorflow as tf

from chest_ct_classifier.config.training import PhaseSettings, TrainingParameters
from chest_ct_classifier.model.architecture import (
    CACHED_LAYER,
    FEATURE_LAYER,
    FINE_TUNED_BLOCK,
    model_after,
    set_block_trainable,
)
from chest_ct_classifier.model.batches import map_batches
from chest_ct_classifier.model.distribution import distribution_scope
from chest_ct_classifier.model.ensemble import merge_heads
from chest_ct_classifier.scoring.metrics import macro_f1, negative_log_likelihood

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class CachedImages:
    """Cached activations of a set of images, and their labels.

    Attributes:
        activations: (N, h, w, c) output of ``CACHED_LAYER`` (block 4) for the original images.
        features: (N, d) output of ``FEATURE_LAYER`` (block 5 frozen), same images.
        labels: (N,) class indices into LABELS.
        view_activations: (N, V, h, w, c) block-4 output of V augmented views of each image.
        view_features: (N, V, d) the same for the same views.
    """

    activations: np.ndarray
    features: np.ndarray
    labels: np.ndarray
    view_activations: np.ndarray | None = None
    view_features: np.ndarray | None = None

    @property
    def n_views(self) -> int:
        return 0 if self.view_activations is None else self.view_activations.shape[1]


@dataclass
class PhaseResult:
    """What one phase did: epochs run, the epoch whose weights were kept (0: none, the phase
    only made the monitored score worse), per-epoch scores, and the monitor's scores before the
    first epoch."""

    epochs_run: int = 0
    best_epoch: int = 0
    history: list[dict[str, float]] = field(default_factory=list)
    start: dict[str, float] | None = None

    def scores_kept(self) -> dict[str, float] | None:
        """The scores of the weights kept: those of ``best_epoch``, or the start."""
        return self.history[self.best_epoch - 1] if self.best_epoch else self.start


def balanced_class_weights(labels: np.ndarray) -> dict[int, float]:
    """Weights that make every present class count as much as the others: n / (k * n_class)."""
    classes, counts = np.unique(labels, return_counts=True)
    return {
        int(c): float(len(labels) / (len(classes) * n))
        for c, n in zip(classes, counts, strict=True)
    }


def scores(labels: np.ndarray, probabilities: np.ndarray) -> dict[str, float]:
    """Mean negative log-likelihood, accuracy and macro-F1 of predicted probabilities."""
    predicted = probabilities.argmax(axis=1)
    return {
        "loss": negative_log_likelihood(probabilities, labels),
        "accuracy": float(np.mean(predicted == labels)),
        "macro_f1": macro_f1(labels, predicted),
    }


def predict_in_batches(network: keras.Model, inputs: np.ndarray, batch_size: int) -> np.ndarray:
    """``network`` applied to ``inputs`` batch by batch (no per-call ``predict`` overhead)."""
    return map_batches(
        lambda batch: network.predict_on_batch(batch.astype(np.float32)),
        inputs,
        batch_size,
        network.output_shape[1:],
    )


def _start_normalization_from(head: keras.Model, features: np.ndarray) -> None:
    """Start the head's batch normalization of the features from their own mean and variance.

    VGG16's pooled activations reach the hundreds: with the default statistics (0 and 1) the
    head's inference-mode answers stay saturated until the moving averages catch up, and the
    first epochs look far worse on the monitor images than the head really is.
    """
    for layer in head.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            if tuple(layer.moving_mean.shape) == features.shape[1:]:
                layer.moving_mean.assign(features.mean(axis=0))
                layer.moving_variance.assign(features.var(axis=0))
            return  # only the first one normalizes the features themselves


def train_two_phase(
    model: keras.Model,
    train: CachedImages,
    parameters: TrainingParameters,
    monitor: CachedImages | None = None,
    epochs: tuple[int, int] | None = None,
) -> tuple[keras.Model, dict[str, PhaseResult]]:
    """Train a copy of ``model``: the head on cached features, then block 5 and the head.

    Args:
        model: the prepared classifier; left unchanged (Keras' global seeds are reset).
        train: cached activations of the training images (views are used when present).
        parameters: ``batch_size``, ``seed``, ``class_weights``, ``label_smoothing``,
            ``early_stopping.monitor``, and per phase (``phase1``, ``phase2``) ``max_epochs``,
            ``patience`` and ``learning_rate``.
        monitor: images to score after every epoch; they decide early stopping unless
            ``epochs`` is given, in which case they are only reported.
        epochs: run exactly this many epochs in (phase 1, phase 2), no early stopping.

    With ``parameters.distribute`` ``mirrored``, the copy is built and trained on every device
    of the machine (``model.distribution``).

    Returns:
        The trained copy (block 5 frozen again) and the result of each phase.
    """
    if len(train.labels) == 0:
        raise ValueError("no training images")
    with distribution_scope(parameters.distribute) as replicas:
        trained, phases = _train_two_phase(model, train, parameters, monitor, epochs)
    if replicas == 1:
        return trained, phases
    # The same weights in a model of this device, outside the strategy: what calibration,
    # evaluation, saving and serving use (a mirrored model predicts once per device).
    plain = keras.models.clone_model(model)
    plain.set_weights(trained.get_weights())
    return plain, phases


HEAD_SEED_STEP = 1000
"""Head i of an ensemble trains with ``seed + i * HEAD_SEED_STEP``: runs with nearby seeds (the
seed spread's) share no head."""


def train_heads(
    model: keras.Model,
    train: CachedImages,
    parameters: TrainingParameters,
    monitor: CachedImages | None = None,
    epochs: tuple[int, int] | None = None,
) -> tuple[keras.Model, dict[str, PhaseResult]]:
    """``parameters.heads`` heads on one base, merged into one model (``ensemble.merge_heads``).

    The first head trains as :func:`train_two_phase` does (its phases, early stopping on
    ``monitor`` unless ``epochs`` is given, block 5 fine-tuned when phase 2 keeps epochs). The
    others start from their own random weights and train on that head's base for the first
    head's phase-1 epochs, each with its own seed.

    Returns:
        The merged model and the first head's phases.
    """
    first, phases = train_two_phase(model, train, parameters, monitor, epochs)
    head_epochs = phases["phase1"].best_epoch
    if parameters.heads == 1 or head_epochs == 0:  # 0: no epoch helped; an untrained head
        return first, phases
    if phases["phase2"].best_epoch:
        # block 5 moved: the head's input vectors of the cached activations moved with it
        batch = parameters.batch_size
        train = dataclasses.replace(
            train,
            features=cached_features(first, train.activations, batch),
            view_features=None
            if train.view_activations is None
            else cached_view_features(first, train.view_activations, batch),
        )
    members = [first]
    for index in range(1, parameters.heads):
        seed = parameters.seed + index * HEAD_SEED_STEP
        keras.utils.set_random_seed(seed)
        start = keras.models.clone_model(first)  # new random weights everywhere...
        for layer in start.layers:  # ...then the first head's base
            source = first.get_layer(layer.name)
            if not layer.name.startswith("head_") or layer.name == FEATURE_LAYER:
                layer.set_weights(source.get_weights())
            layer.trainable = source.trainable
        member, _ = train_two_phase(
            start, train, parameters.model_copy(update={"seed": seed}), epochs=(head_epochs, 0)
        )
        members.append(member)
    logger.info("Merged %d heads trained on one base (%d epochs each)", len(members), head_epochs)
    return merge_heads(members), phases


def cached_features(model: keras.Model, activations: np.ndarray, batch_size: int) -> np.ndarray:
    """The model's head input vectors (``FEATURE_LAYER``) for cached block-4 activations (float16
    views included): what block 5 and the pooling make of them."""
    return predict_in_batches(
        model_after(model, CACHED_LAYER, until=FEATURE_LAYER),
        activations.astype(np.float32),
        batch_size,
    )


def cached_view_features(
    model: keras.Model, view_activations: np.ndarray, batch_size: int
) -> np.ndarray:
    """:func:`cached_features` of cached views (N, V, h, w, c): (N, V, d)."""
    flat = view_activations.reshape(-1, *view_activations.shape[2:])
    features = cached_features(model, flat, batch_size)  # (N * V, d); V may be 0
    return features.reshape(*view_activations.shape[:2], features.shape[-1])


def _train_two_phase(
    model: keras.Model,
    train: CachedImages,
    parameters: TrainingParameters,
    monitor: CachedImages | None,
    epochs: tuple[int, int] | None,
) -> tuple[keras.Model, dict[str, PhaseResult]]:
    seed = parameters.seed
    keras.utils.set_random_seed(seed)
    trained = keras.models.clone_model(model)
    trained.set_weights(model.get_weights())
    balanced = parameters.class_weights == "balanced"
    class_weight = balanced_class_weights(train.labels) if balanced else None
    n_views = train.n_views
    batch_size = parameters.batch_size
    stop_on = parameters.early_stopping.monitor

    # Phase 1: every view of every image in each epoch (the head is cheap).
    head = model_after(trained, FEATURE_LAYER)
    phase1_inputs = (
        np.concatenate([train.features[:, None], train.view_features], axis=1)
        if n_views
        else train.features[:, None]
    ).reshape(-1, *train.features.shape[1:])
    _start_normalization_from(head, phase1_inputs)
    phase1 = _run_phase(
        "phase 1 (head)",
        head,
        phase1_inputs,
        np.repeat(train.labels, n_views + 1),
        None if monitor is None else (monitor.features, monitor.labels),
        parameters.phase1,
        epochs[0] if epochs else None,
        batch_size,
        class_weight,
        stop_on,
        parameters.label_smoothing,
    )

    phase2_epochs = epochs[1] if epochs else parameters.phase2.max_epochs
    if phase2_epochs == 0:
        # Nothing to fine-tune: the weights kept are phase 1's, and so are the monitor's scores
        # (block 5 is the one that computed the features phase 1 was monitored on).
        skipped = PhaseResult()
        if monitor is not None and not epochs:
            skipped.start = {
                k: v for k, v in phase1.scores_kept().items() if k.startswith("monitor_")
            }
        return trained, {"phase1": phase1, "phase2": skipped}

    # Phase 2: block 5 and the head, one random view (or the original) per image and epoch.
    # Batch normalization stays in inference mode (frozen statistics, as Keras' fine-tuning
    # guide advises): re-estimating them while block 5 moves shifts what the head was fitted on.
    set_block_trainable(trained, FINE_TUNED_BLOCK, True)
    normalizations = {
        layer: layer.trainable
        for layer in trained.layers
        if isinstance(layer, keras.layers.BatchNormalization)
    }
    for layer in normalizations:
        layer.trainable = False
    tail = model_after(trained, CACHED_LAYER)
    choices = np.random.default_rng(seed)

    def one_view_per_image(epoch: int) -> np.ndarray:
        if not n_views:
            return train.activations
        chosen = choices.integers(0, n_views + 1, size=len(train.labels))
        batch = train.activations.astype(np.float32, copy=True)
        augmented = chosen > 0
        batch[augmented] = train.view_activations[np.flatnonzero(augmented), chosen[augmented] - 1]
        return batch

    phase2 = _run_phase(
        "phase 2 (block 5 + head)",
        tail,
        one_view_per_image,
        train.labels,
        None if monitor is None else (monitor.activations, monitor.labels),
        parameters.phase2,
        epochs[1] if epochs else None,
        batch_size,
        class_weight,
        stop_on,
        parameters.label_smoothing,
    )
    set_block_trainable(trained, FINE_TUNED_BLOCK, False)
    for layer, trainable in normalizations.items():
        layer.trainable = trainable
    return trained, {"phase1": phase1, "phase2": phase2}


def _run_phase(
    name: str,
    network: keras.Model,
    inputs: np.ndarray | Callable[[int], np.ndarray],
    labels: np.ndarray,
    monitor: tuple[np.ndarray, np.ndarray] | None,
    settings: PhaseSettings,
    fixed_epochs: int | None,
    batch_size: int,
    class_weight: dict[int, float] | None,
    stop_on: str,
    label_smoothing: float,
) -> PhaseResult:
    if label_smoothing:
        # Keras smooths one-hot targets only; class weights follow their argmax
        labels = np.eye(network.output_shape[-1], dtype=np.float32)[labels]
        loss = keras.losses.CategoricalCrossentropy(label_smoothing=label_smoothing)
    else:
        loss = "sparse_categorical_crossentropy"
    network.compile(
        optimizer=keras.optimizers.Adam(learning_rate=settings.learning_rate),
        loss=loss,
        metrics=["accuracy"],
        # one device: a whole epoch per call into the traced step, the same updates (measured:
        # the same weights to the bit) without Python's overhead between small batches; a
        # mirrored strategy's distributed dataset is stepped one batch per call
        steps_per_execution=1 if tf.distribute.has_strategy() else -(-len(labels) // batch_size),
    )
    early_stopping = fixed_epochs is None and monitor is not None
    max_epochs = settings.max_epochs if fixed_epochs is None else int(fixed_epochs)
    patience = settings.patience
    result = PhaseResult()

    def fit(x: np.ndarray, epochs: int) -> list[dict[str, float]]:
        fitted = network.fit(
            x,
            labels,
            batch_size=batch_size,
            epochs=epochs,
            shuffle=True,
            class_weight=class_weight,
            verbose=0,
        )
        return [
            {"train_loss": float(train_loss), "train_accuracy": float(accuracy)}
            for train_loss, accuracy in zip(
                fitted.history["loss"], fitted.history["accuracy"], strict=True
            )
        ]

    if monitor is None and isinstance(inputs, np.ndarray):
        # The same inputs every epoch and nothing to score between epochs: one call for all of
        # them builds Keras' data pipeline once, not once per epoch (a quarter of a head's
        # time). The weights are the same to the bit as epoch by epoch (measured, and
        # tested): with the global seed set, Keras 3.15 draws the same batch order for every
        # epoch either way.
        if max_epochs:
            result.history = fit(inputs, max_epochs)
            logger.info(
                "%s: %d epochs, the last: %s", name, max_epochs,
                ", ".join(f"{k}={v:.4f}" for k, v in result.history[-1].items()),
            )  # fmt: skip
        result.epochs_run = result.best_epoch = max_epochs
        return result

    def epoch_inputs(epoch: int) -> np.ndarray:
        return inputs if isinstance(inputs, np.ndarray) else inputs(epoch)

    def monitored() -> dict[str, float]:
        probabilities = predict_in_batches(network, monitor[0], batch_size)
        return {f"monitor_{k}": v for k, v in scores(monitor[1], probabilities).items()}

    def score_of(record: dict[str, float]) -> float:
        return record[f"monitor_{stop_on}"] * (-1 if stop_on == "loss" else 1)

    best_score, best_weights, waited = -np.inf, None, 0
    if early_stopping:
        # The weights the phase starts from compete too: a phase may only make things worse.
        result.start = monitored()
        best_score, best_weights = score_of(result.start), network.get_weights()
        logger.info(
            "%s, before the first epoch: %s",
            name, ", ".join(f"{k}={v:.4f}" for k, v in result.start.items()),
        )  # fmt: skip
    for epoch in range(1, max_epochs + 1):
        (record,) = fit(epoch_inputs(epoch), 1)
        if monitor is not None:
            record |= monitored()
        result.history.append(record)
        result.epochs_run = epoch
        logger.info(
            "%s, epoch %d: %s", name, epoch, ", ".join(f"{k}={v:.4f}" for k, v in record.items())
        )
        if not early_stopping:
            result.best_epoch = epoch
            continue
        score = score_of(record)
        if score > best_score:
            best_score, best_weights, waited = score, network.get_weights(), 0
            result.best_epoch = epoch
        else:
            waited += 1
            if waited >= patience:
                break
    if early_stopping:
        network.set_weights(best_weights)
        logger.info(
            "%s: kept epoch %d of %d (best monitor %s)",
            name, result.best_epoch, result.epochs_run, stop_on,
        )  # fmt: skip
    return result
