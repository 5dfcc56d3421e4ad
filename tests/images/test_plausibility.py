import io

import numpy as np
from PIL import Image

from chest_ct_classifier.images.plausibility import implausibility


def test_the_sample_ct_slices_pass(sample_images):
    for path, data in sample_images.items():
        assert implausibility(Image.open(io.BytesIO(data))) is None, path


def test_colour_blank_thin_and_tiny_images_are_named():
    rng = np.random.default_rng(0)
    colour = Image.fromarray(rng.integers(0, 256, (200, 200, 3), dtype=np.uint8))
    assert "colour" in implausibility(colour)
    assert "blank" in implausibility(Image.fromarray(np.full((200, 200), 90, np.uint8)))
    assert "shape" in implausibility(Image.fromarray(np.zeros((40, 400), np.uint8)))
    assert "too small" in implausibility(Image.fromarray(np.zeros((20, 20), np.uint8)))
    grey_in_rgb = Image.fromarray(np.repeat(rng.integers(0, 256, (200, 200, 1), np.uint8), 3, 2))
    assert implausibility(grey_in_rgb) is None
