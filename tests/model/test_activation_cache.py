"""The cache's head input vectors stand in for block 5 only while block 5 is the one that made
them; either way the answers are the whole model's."""

from __future__ import annotations

import keras
import numpy as np
import pytest

from chest_ct_classifier.images.labels import LABELS
from chest_ct_classifier.model.activation_cache import (
    ActivationCache,
    cached_features,
    content_features,
    content_probabilities,
    features_fingerprint,
)
from chest_ct_classifier.model.architecture import CACHED_LAYER, feature_extractor, model_after


@pytest.fixture(scope="module")
def images():
    return np.random.default_rng(0).normal(0, 50, size=(5, 32, 32, 3)).astype(np.float32)


def _cache(model: keras.Model, images: np.ndarray) -> ActivationCache:
    """What cache_activations stores for these images, block 5 being ``model``'s."""
    n = len(images)
    activations = np.asarray(feature_extractor(model, CACHED_LAYER)(images))
    return ActivationCache(
        path=np.array([f"{i}.png" for i in range(n)]),
        split=np.array(["test"] * n),
        label=np.arange(n) % len(LABELS),
        sha256=np.array([f"{i:064x}" for i in range(n)]),
        group=np.arange(n),
        copy_in_train=np.zeros(n, bool),
        label_conflict=np.zeros(n, bool),
        content=np.arange(n),
        activations=activations,
        features=cached_features(model, activations, 2),
        view_content=np.zeros(0, np.int64),
        view_activations=np.zeros((0, 1, *activations.shape[1:]), np.float16),
        view_features=np.zeros((0, 1, 0), np.float16),
        features_fingerprint=np.asarray(features_fingerprint(model)),
    )


def _with_block_5_moved(model: keras.Model) -> keras.Model:
    """A copy whose block 5 changed, as phase 2's fine-tuning changes it."""
    moved = keras.models.clone_model(model)
    moved.set_weights(model.get_weights())
    kernel = moved.get_layer("block5_conv3").kernel
    kernel.assign(kernel.numpy() * 1.5)
    return moved


def test_the_caches_vectors_are_used_while_block_5_is_the_one_that_made_them(tiny_model, images):
    cache = _cache(tiny_model, images)
    marked = cache.with_rows(features=cache.features + 1000.0)  # so that reading them shows
    np.testing.assert_array_equal(
        content_features(tiny_model, marked, np.array([3, 1]), 2), marked.features[[3, 1]]
    )
    # the head's other layers are not block 5: training the head keeps the cache usable
    head_moved = keras.models.clone_model(tiny_model)
    head_moved.set_weights([w * 2 for w in tiny_model.get_weights()])
    for layer in head_moved.layers:
        if layer.name.startswith("block"):
            layer.set_weights(tiny_model.get_layer(layer.name).get_weights())
    assert features_fingerprint(head_moved) == features_fingerprint(tiny_model)


def test_a_fine_tuned_block_5_computes_its_own_vectors(tiny_model, images):
    cache = _cache(tiny_model, images)
    moved = _with_block_5_moved(tiny_model)
    assert features_fingerprint(moved) != features_fingerprint(tiny_model)
    own = content_features(moved, cache, np.arange(len(images)), 2)
    np.testing.assert_array_equal(own, cached_features(moved, cache.activations, 2))
    assert not np.allclose(own, cache.features)


@pytest.mark.parametrize("block_5_moved", [False, True])
def test_cached_answers_are_the_whole_models(tiny_model, images, block_5_moved):
    cache = _cache(tiny_model, images)
    model = _with_block_5_moved(tiny_model) if block_5_moved else tiny_model
    answers = content_probabilities(model, cache, np.arange(len(images)), 2)
    np.testing.assert_allclose(answers, model(images), atol=1e-5)
    np.testing.assert_allclose(
        answers, model_after(model, CACHED_LAYER)(cache.activations), atol=1e-6
    )
