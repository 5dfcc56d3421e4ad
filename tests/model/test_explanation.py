import io

import numpy as np
import pytest
from PIL import Image

from chest_ct_classifier.images.preprocessing import decode_image, image_to_array, scale_for_vgg16
from chest_ct_classifier.model.explanation import grad_cam, overlay_heatmap


@pytest.fixture(scope="module")
def image(sample_images):
    path = next(p for p in sample_images if p.startswith("Data/test/squamous"))
    return image_to_array(decode_image(sample_images[path]), 32)


def test_heatmap_covers_the_image_in_unit_range_and_probabilities_match(tiny_model, image):
    x = scale_for_vgg16(image)
    heatmap, probabilities = grad_cam(tiny_model, x)
    assert heatmap.shape == (32, 32) and heatmap.dtype == np.float32
    assert heatmap.min() >= 0.0 and heatmap.max() <= 1.0
    np.testing.assert_allclose(probabilities, np.asarray(tiny_model(x[None]))[0], atol=1e-5)


def test_each_class_gets_its_own_explanation(tiny_model, image):
    x = scale_for_vgg16(image)
    maps = [grad_cam(tiny_model, x, class_index=c)[0] for c in range(4)]
    assert any(not np.allclose(maps[0], other) for other in maps[1:])
    predicted = int(np.argmax(grad_cam(tiny_model, x)[1]))
    np.testing.assert_allclose(grad_cam(tiny_model, x)[0], maps[predicted])


def test_overlay_is_an_rgb_image_of_the_same_size(image):
    heatmap = np.linspace(0, 1, 32 * 32, dtype=np.float32).reshape(32, 32)
    blended = overlay_heatmap(image, heatmap)
    assert blended.shape == image.shape and blended.dtype == np.uint8
    Image.fromarray(blended).save(io.BytesIO(), format="PNG")
    np.testing.assert_array_equal(overlay_heatmap(image, heatmap, alpha=0.0), image)
