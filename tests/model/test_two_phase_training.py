import keras
import numpy as np
import pytest

from chest_ct_classifier.images.labels import LABELS
from chest_ct_classifier.model.architecture import (
    CACHED_LAYER,
    FEATURE_LAYER,
    feature_extractor,
    model_after,
)
from chest_ct_classifier.model.two_phase_training import (
    CachedImages,
    PhaseResult,
    _run_phase,
    balanced_class_weights,
    scores,
    train_two_phase,
)
from tests.conftest import settings

OVERRIDES = {
    "batch_size": 8,
    "seed": 3,
    "class_weights": "balanced",
    "early_stopping": {"monitor": "loss"},
    "phase1": {"max_epochs": 4, "patience": 10, "learning_rate": 1e-2},
    "phase2": {"max_epochs": 2, "patience": 10, "learning_rate": 1e-4},
}
PARAMS = settings("training", OVERRIDES)


def _cached(model, n: int, n_views: int, seed: int) -> CachedImages:
    """Real activations of random 32 px inputs, labelled by class in turn."""
    rng = np.random.default_rng(seed)
    inputs = rng.normal(0, 60, size=(n * (1 + n_views), 32, 32, 3)).astype(np.float32)
    activations = np.asarray(feature_extractor(model, CACHED_LAYER)(inputs))
    features = np.asarray(model_after(model, CACHED_LAYER, until=FEATURE_LAYER)(activations))
    shape = (n, 1 + n_views)
    activations = activations.reshape(*shape, *activations.shape[1:])
    features = features.reshape(*shape, *features.shape[1:])
    return CachedImages(
        activations[:, 0],
        features[:, 0],
        np.arange(n) % len(LABELS),
        activations[:, 1:].astype(np.float16) if n_views else None,
        features[:, 1:].astype(np.float16) if n_views else None,
    )


@pytest.fixture(scope="module")
def data(tiny_model):
    return _cached(tiny_model, 16, 2, seed=0), _cached(tiny_model, 8, 0, seed=1)


def _changed_layers(before, after) -> set[str]:
    return {
        w.path.split("/")[0]
        for w, v in zip(before.weights, after.weights, strict=True)
        if not np.array_equal(w.numpy(), v.numpy())
    }


def test_phase_one_trains_the_head_and_phase_two_block_five_with_it(tiny_model, data):
    train, _ = data
    snapshot = [w.numpy().copy() for w in tiny_model.weights]
    head_only, _ = train_two_phase(tiny_model, train, PARAMS, epochs=(2, 0))
    assert _changed_layers(tiny_model, head_only) == {"head_norm", "head_hidden", "head_output"}
    both, phases = train_two_phase(tiny_model, train, PARAMS, epochs=(2, 1))
    changed = _changed_layers(tiny_model, both)
    assert {"block5_conv1", "block5_conv2", "block5_conv3", "head_output"} <= changed
    assert not any(name.startswith(("block1", "block2", "block3", "block4")) for name in changed)
    assert (phases["phase1"].epochs_run, phases["phase2"].epochs_run) == (2, 1)
    # the input model is left as it was, and block 5 is frozen again in the result
    for weight, value in zip(tiny_model.weights, snapshot, strict=True):
        np.testing.assert_array_equal(weight.numpy(), value)
    assert not both.get_layer("block5_conv1").trainable


def test_trained_model_on_images_equals_its_layers_on_cached_activations(tiny_model, data):
    train, _ = data
    trained, _ = train_two_phase(tiny_model, train, PARAMS, epochs=(1, 1))
    x = np.random.default_rng(5).normal(0, 60, size=(3, 32, 32, 3)).astype(np.float32)
    activations = feature_extractor(trained, CACHED_LAYER)(x)
    np.testing.assert_allclose(
        model_after(trained, CACHED_LAYER)(activations), trained(x), atol=1e-5
    )


def test_early_stopping_keeps_the_best_monitored_epoch(tiny_model, data):
    train, monitor = data
    params = settings("training", {**OVERRIDES, "phase1": {"max_epochs": 6, "patience": 2}})
    trained, phases = train_two_phase(tiny_model, train, params, monitor=monitor)
    for phase in phases.values():
        # the weights before the first epoch compete too (epoch 0)
        losses = [phase.start["monitor_loss"]] + [r["monitor_loss"] for r in phase.history]
        assert phase.best_epoch == int(np.argmin(losses))
        assert phase.scores_kept()["monitor_loss"] == min(losses)
        # it stops `patience` epochs after the best one, or at the last epoch allowed
        assert phase.epochs_run in (phase.best_epoch + 2, len(losses) - 1)
    # the weights kept are the best epoch's: scoring the monitor again gives its loss
    probabilities = np.asarray(model_after(trained, CACHED_LAYER)(monitor.activations))
    loss = -np.mean(np.log(probabilities[np.arange(8), monitor.labels]))
    assert loss == pytest.approx(phases["phase2"].scores_kept()["monitor_loss"], rel=1e-4)


def test_a_phase_that_only_makes_things_worse_keeps_its_starting_weights(tiny_model, data):
    train, monitor = data
    # a learning rate this large wrecks the head at once: no epoch beats the start
    params = settings(
        "training",
        {
            **OVERRIDES,
            "phase1": {"max_epochs": 3, "patience": 2, "learning_rate": 50.0},
            "phase2": {"max_epochs": 0},
        },
    )
    trained, phases = train_two_phase(tiny_model, train, params, monitor=monitor)
    assert phases["phase1"].best_epoch == 0 and phases["phase1"].epochs_run == 2
    for before, after in zip(tiny_model.weights, trained.weights, strict=True):
        if "moving_" in before.path:  # the start's normalization is the features' own
            continue
        np.testing.assert_array_equal(before.numpy(), after.numpy())
    features = np.concatenate([train.features[:, None], train.view_features], axis=1)
    features = features.reshape(-1, train.features.shape[1])
    np.testing.assert_allclose(
        trained.get_layer("head_norm").moving_mean.numpy(), features.mean(axis=0), rtol=1e-5
    )


def test_a_phase_2_of_no_epochs_keeps_phase_1s_weights_and_monitor_scores(tiny_model, data):
    train, monitor = data
    params = settings("training", {**OVERRIDES, "phase2": {"max_epochs": 0}})
    trained, phases = train_two_phase(tiny_model, train, params, monitor=monitor)
    assert (phases["phase2"].epochs_run, phases["phase2"].best_epoch) == (0, 0)
    kept = phases["phase2"].scores_kept()
    assert set(kept) == {"monitor_loss", "monitor_accuracy", "monitor_macro_f1"}
    # they are the whole model's scores on the monitor images, and phase 1's kept ones
    probabilities = np.asarray(model_after(trained, CACHED_LAYER)(monitor.activations))
    assert kept["monitor_loss"] == pytest.approx(
        scores(monitor.labels, probabilities)["loss"], rel=1e-4
    )
    assert kept["monitor_loss"] == phases["phase1"].scores_kept()["monitor_loss"]
    for before, after in zip(tiny_model.weights, trained.weights, strict=True):
        if before.path.startswith("block5"):
            np.testing.assert_array_equal(before.numpy(), after.numpy())


def test_training_is_reproducible_with_a_seed(tiny_model, data):
    train, monitor = data
    _, first = train_two_phase(tiny_model, train, PARAMS, monitor=monitor, epochs=(2, 1))
    _, second = train_two_phase(tiny_model, train, PARAMS, monitor=monitor, epochs=(2, 1))
    assert first["phase2"].history == second["phase2"].history


def _phase1_weights(model, train, inputs, params, monkeypatch) -> tuple[list, int, PhaseResult]:
    """The head's weights after 3 epochs of ``_run_phase`` on ``inputs``, its fit calls and
    the phase's result."""
    keras.utils.set_random_seed(params.seed)
    copy = keras.models.clone_model(model)  # the head's layers are the model's: train a copy
    copy.set_weights(model.get_weights())
    head = model_after(copy, FEATURE_LAYER)
    calls = []
    fit = head.fit
    monkeypatch.setattr(head, "fit", lambda *a, **k: calls.append(k["epochs"]) or fit(*a, **k))
    balanced = params.class_weights == "balanced"
    class_weight = balanced_class_weights(train.labels) if balanced else None
    result = _run_phase(
        "phase 1", head, inputs, train.labels, None, params.phase1, 3, 8, class_weight, "loss",
        params.label_smoothing,
    )  # fmt: skip
    return head.get_weights(), len(calls), result


@pytest.mark.parametrize("label_smoothing", [0.0, 0.1])
def test_without_a_monitor_one_call_gives_the_epoch_by_epoch_weights(
    tiny_model, monkeypatch, label_smoothing
):
    # imbalanced labels, so that the class weights count (balanced ones would all be 1)
    train = _cached(tiny_model, 16, 0, seed=0)
    train = CachedImages(train.activations, train.features, np.array([0] * 10 + [1, 2, 3] * 2))
    params = PARAMS.model_copy(update={"label_smoothing": label_smoothing})
    at_once, one_call, whole = _phase1_weights(
        tiny_model, train, train.features, params, monkeypatch
    )
    by_epoch, three_calls, looped = _phase1_weights(
        tiny_model, train, lambda epoch: train.features, params, monkeypatch
    )
    assert (one_call, three_calls) == (1, 3)
    for weight, other in zip(at_once, by_epoch, strict=True):
        np.testing.assert_array_equal(weight, other)
    # heads 2-5 are trained only when the first head kept an epoch: best_epoch must say so
    for result in (whole, looped):
        assert (result.epochs_run, result.best_epoch, len(result.history)) == (3, 3, 3)
    assert whole.history == looped.history


def test_class_weights_count_the_same_with_smoothed_one_hot_targets(tiny_model, monkeypatch):
    train = _cached(tiny_model, 16, 0, seed=0)
    train = CachedImages(train.activations, train.features, np.array([0] * 10 + [1, 2, 3] * 2))

    def weights(**update):
        params = PARAMS.model_copy(update=update)
        return _phase1_weights(tiny_model, train, train.features, params, monkeypatch)[0]

    sparse, one_hot = weights(label_smoothing=0.0), weights(label_smoothing=1e-7)
    for weight, other in zip(sparse, one_hot, strict=True):
        np.testing.assert_allclose(weight, other, rtol=1e-3, atol=1e-5)
    unweighted = weights(label_smoothing=1e-7, class_weights="none")
    assert not all(np.allclose(w, u, atol=1e-3) for w, u in zip(one_hot, unweighted, strict=True))


def test_label_smoothing_trains_towards_softened_targets(tiny_model, data):
    """The smoothed targets' own entropy is the lowest loss training can reach; the answers grow
    less sure than without smoothing."""
    train, _ = data
    smoothing = 0.4
    target = np.full(len(LABELS), smoothing / len(LABELS))
    target[0] += 1.0 - smoothing
    floor = -np.sum(target * np.log(target))
    confidence, losses = {}, {}
    for value in (0.0, smoothing):
        params = PARAMS.model_copy(update={"label_smoothing": value})
        trained, phases = train_two_phase(tiny_model, train, params, epochs=(15, 2))
        losses[f"phase 2, {value}"] = [r["train_loss"] for r in phases["phase2"].history]
        probabilities = np.asarray(model_after(trained, CACHED_LAYER)(train.activations))
        assert np.mean(probabilities.argmax(axis=1) == train.labels) >= 0.5  # chance: 0.25
        confidence[value] = probabilities.max(axis=1).mean()
        losses[value] = [record["train_loss"] for record in phases["phase1"].history]
    assert min(losses[smoothing]) >= floor > losses[0.0][-1]
    # block 5's phase trains against the smoothed targets too
    assert min(losses[f"phase 2, {smoothing}"]) >= floor > losses["phase 2, 0.0"][-1]
    assert confidence[smoothing] < confidence[0.0] - 0.2


def test_without_views_every_epoch_sees_the_originals(tiny_model, data):
    _, monitor = data
    _, phases = train_two_phase(tiny_model, monitor, PARAMS, epochs=(1, 1))
    assert phases["phase2"].epochs_run == 1


def test_balanced_class_weights_make_each_class_count_equally():
    labels = np.array([0, 0, 0, 1])
    weights = balanced_class_weights(labels)
    assert weights == {0: pytest.approx(4 / 6), 1: pytest.approx(2.0)}
    assert weights[0] * 3 == pytest.approx(weights[1] * 1)


def test_no_training_images_is_an_error(tiny_model, data):
    train, _ = data
    empty = CachedImages(train.activations[:0], train.features[:0], train.labels[:0])
    with pytest.raises(ValueError, match="no training images"):
        train_two_phase(tiny_model, empty, PARAMS)


def test_batch_normalization_is_frozen_in_phase_two_and_its_flag_restored(tiny_model, data):
    train, _ = data
    head_only, _ = train_two_phase(tiny_model, train, PARAMS, epochs=(2, 0))
    both, _ = train_two_phase(tiny_model, train, PARAMS, epochs=(2, 1))
    for before, after in zip(
        head_only.get_layer("head_norm").weights, both.get_layer("head_norm").weights, strict=True
    ):
        np.testing.assert_array_equal(before.numpy(), after.numpy())
    assert both.get_layer("head_norm").trainable


def test_heads_share_the_first_heads_fine_tuned_base_and_answer_together(tiny_model, data):
    from chest_ct_classifier.model.two_phase_training import train_heads

    train, monitor = data
    params = PARAMS.model_copy(update={"heads": 3})
    first, _ = train_two_phase(tiny_model, train, params, epochs=(2, 1))
    merged, phases = train_heads(tiny_model, train, params, monitor=monitor, epochs=(2, 1))
    assert phases["phase1"].epochs_run == 2 and phases["phase2"].epochs_run == 1
    units = tiny_model.get_layer("head_hidden").units
    assert merged.get_layer("head_hidden").units == 3 * units
    # the base is the first head's, block 5 fine-tuned by it; the heads add their own answers
    for layer in ("block5_conv3", "block4_conv3"):
        for ours, theirs in zip(
            merged.get_layer(layer).get_weights(), first.get_layer(layer).get_weights(), strict=True
        ):
            np.testing.assert_array_equal(ours, theirs)
    x = monitor.activations
    merged_answers = model_after(merged, CACHED_LAYER).predict_on_batch(x)
    first_answers = model_after(first, CACHED_LAYER).predict_on_batch(x)
    np.testing.assert_allclose(merged_answers.sum(axis=1), 1.0, atol=1e-5)
    assert not np.allclose(merged_answers, first_answers, atol=1e-3)
    # reproducible with a seed; one head is the first head alone
    again, _ = train_heads(tiny_model, train, params, monitor=monitor, epochs=(2, 1))
    np.testing.assert_allclose(
        model_after(again, CACHED_LAYER).predict_on_batch(x), merged_answers, atol=1e-6
    )
    single, _ = train_heads(
        tiny_model, train, params.model_copy(update={"heads": 1}), epochs=(2, 1)
    )
    assert single.get_layer("head_hidden").units == units
