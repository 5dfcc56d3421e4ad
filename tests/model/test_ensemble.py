"""Heads merged into one model answer as the average of their logits."""

import keras
import numpy as np
import pytest

from chest_ct_classifier.model.architecture import FEATURE_LAYER, OUTPUT_LAYER, model_after
from chest_ct_classifier.model.calibration import apply_temperature
from chest_ct_classifier.model.ensemble import merge_heads


def _member(tiny_model, seed: int) -> keras.Model:
    """The tiny model with a head of its own: other initial weights, normalization statistics
    and affine parameters, as training with another seed would leave them."""
    member = keras.models.clone_model(tiny_model)
    member.set_weights(tiny_model.get_weights())
    rng = np.random.default_rng(seed)
    for name in ("head_norm", "head_hidden", OUTPUT_LAYER):
        layer = member.get_layer(name)
        weights = layer.get_weights()
        if name == "head_norm":  # gamma, beta, moving mean, moving variance
            weights = [
                rng.uniform(0.5, 2.0, w.shape).astype(np.float32) if i in (0, 3)
                else rng.normal(0.0, 3.0, w.shape).astype(np.float32)
                for i, w in enumerate(weights)
            ]  # fmt: skip
        else:
            weights = [rng.normal(0.0, 0.1, w.shape).astype(np.float32) for w in weights]
        layer.set_weights(weights)
    return member


def _logits(model: keras.Model, features: np.ndarray) -> np.ndarray:
    return np.log(model_after(model, FEATURE_LAYER).predict_on_batch(features))


@pytest.fixture(scope="module")
def features():
    return np.random.default_rng(0).normal(2.0, 5.0, (16, 3 * 512)).astype(np.float32)


def test_merged_heads_answer_the_average_of_their_logits(tiny_model, features):
    members = [_member(tiny_model, seed) for seed in range(3)]
    merged = merge_heads(members)
    assert merged.get_layer("head_hidden").units == 3 * members[0].get_layer("head_hidden").units
    expected = np.mean([_logits(m, features) for m in members], axis=0)
    expected = np.exp(expected) / np.exp(expected).sum(axis=1, keepdims=True)
    answered = model_after(merged, FEATURE_LAYER).predict_on_batch(features)
    np.testing.assert_allclose(answered, expected, atol=1e-5)
    # on images too: the base is the members' own
    images = np.random.default_rng(1).uniform(-100, 100, (2, 32, 32, 3)).astype(np.float32)
    whole = np.mean([np.log(m.predict_on_batch(images)) for m in members], axis=0)
    whole = np.exp(whole) / np.exp(whole).sum(axis=1, keepdims=True)
    np.testing.assert_allclose(merged.predict_on_batch(images), whole, atol=1e-5)


def test_one_head_merges_into_an_equal_model_and_a_temperature_still_folds_in(tiny_model, features):
    member = _member(tiny_model, 7)
    merged = merge_heads([member])
    head = model_after(member, FEATURE_LAYER)
    np.testing.assert_allclose(
        model_after(merged, FEATURE_LAYER).predict_on_batch(features),
        head.predict_on_batch(features),
        atol=1e-5,
    )
    cooled = model_after(apply_temperature(merge_heads([member, member]), 2.0), FEATURE_LAYER)
    logits = _logits(member, features) / 2.0
    np.testing.assert_allclose(
        cooled.predict_on_batch(features),
        np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True),
        atol=1e-5,
    )


def test_heads_on_different_bases_are_refused(tiny_model):
    other = _member(tiny_model, 1)
    kernel, bias = other.get_layer("block5_conv3").get_weights()
    other.get_layer("block5_conv3").set_weights([kernel * 1.01, bias])
    with pytest.raises(ValueError, match="block5_conv3 differs"):
        merge_heads([_member(tiny_model, 0), other])
    with pytest.raises(ValueError, match="no heads"):
        merge_heads([])
