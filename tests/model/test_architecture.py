import numpy as np
import pytest

from chest_ct_classifier.images.labels import LABELS
from chest_ct_classifier.model.architecture import (
    FEATURE_LAYER,
    build_classifier,
    feature_extractor,
    image_size_of,
    model_after,
)


def test_convolution_base_is_frozen_and_head_is_new(tiny_model):
    trainable = {w.path.split("/")[0] for w in tiny_model.trainable_weights}
    assert trainable == {"head_norm", "head_hidden", "head_output"}
    assert tiny_model.output_shape == (None, len(LABELS))
    assert image_size_of(tiny_model) == 32


def test_head_on_cached_features_equals_the_whole_model(tiny_model):
    x = np.random.default_rng(0).normal(0, 50, size=(3, 32, 32, 3)).astype(np.float32)
    features = feature_extractor(tiny_model)(x)
    via_cache = model_after(tiny_model, FEATURE_LAYER)(features)
    np.testing.assert_allclose(via_cache, tiny_model(x), atol=1e-5)
    np.testing.assert_allclose(np.sum(via_cache, axis=1), 1.0, atol=1e-5)


def test_invalid_settings_are_rejected():
    with pytest.raises(ValueError, match="at least 32"):
        build_classifier(16, None)
    with pytest.raises(ValueError, match="pooling"):
        build_classifier(32, None, pooling="max")
