import logging

import keras
import numpy as np
import pytest

from chest_ct_classifier.model import pretrained_weights
from chest_ct_classifier.model.architecture import VGG16_CONV_LAYERS
from chest_ct_classifier.model.pretrained_weights import (
    PretrainedWeights,
    load_hed_conv_weights,
    resolve_vgg16_weights,
)


@pytest.fixture(scope="module")
def hed_weights():
    return load_hed_conv_weights()


def test_hed_weights_have_exactly_vgg16_shapes(hed_weights):
    vgg16 = keras.applications.VGG16(include_top=False, weights=None)
    assert len(hed_weights) == len(VGG16_CONV_LAYERS) == 13
    for name, (kernel, bias) in zip(VGG16_CONV_LAYERS, hed_weights, strict=True):
        expected_kernel, expected_bias = vgg16.get_layer(name).get_weights()
        assert kernel.shape == expected_kernel.shape and bias.shape == expected_bias.shape
    assert np.abs(hed_weights[0][0]).sum() > 0  # real weights, not zeros


def test_imagenet_falls_back_to_hed_loudly_when_it_cannot_be_downloaded(
    monkeypatch, caplog, hed_weights
):
    def offline():
        raise Exception("URL fetch failure: [Errno -2] Name or service not known")

    monkeypatch.setattr(pretrained_weights, "load_imagenet_conv_weights", offline)
    with caplog.at_level(logging.WARNING, logger="chest_ct_classifier.model.pretrained_weights"):
        resolved = resolve_vgg16_weights("imagenet")
    assert (resolved.requested, resolved.used) == ("imagenet", "hed_bsds500")
    assert "URL fetch failure" in resolved.fallback_reason
    assert "FALLING BACK" in caplog.text
    np.testing.assert_array_equal(resolved.conv_weights[5][0], hed_weights[5][0])
    assert resolved.describe()["used"] == "hed_bsds500"


def test_imagenet_when_available_is_used_as_is(monkeypatch, hed_weights):
    monkeypatch.setattr(pretrained_weights, "load_imagenet_conv_weights", lambda: hed_weights)
    resolved = resolve_vgg16_weights("imagenet")
    assert (resolved.used, resolved.fallback_reason) == ("imagenet", None)


def test_none_is_random_and_says_so():
    resolved = resolve_vgg16_weights("none")
    assert resolved == PretrainedWeights(
        requested="none", used="none", source="random initialization"
    )


def test_a_weights_file_path_is_loaded(tmp_path, hed_weights):
    model = keras.applications.VGG16(include_top=False, weights=None)
    for name, pair in zip(VGG16_CONV_LAYERS, hed_weights, strict=True):
        model.get_layer(name).set_weights(list(pair))
    path = tmp_path / "mine.weights.h5"
    model.save_weights(path)
    resolved = resolve_vgg16_weights(str(path))
    assert resolved.used == str(path)
    np.testing.assert_array_equal(resolved.conv_weights[12][1], hed_weights[12][1])


def test_unknown_weights_name_is_a_clear_error():
    with pytest.raises(ValueError, match="expected 'imagenet', 'hed_bsds500', 'none'"):
        resolve_vgg16_weights("imagenett")
