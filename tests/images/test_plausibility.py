import io

import numpy as np
from PIL import Image

from chest_ct_classifier.images.plausibility import (
    COLOUR_SPREAD,
    MAX_COLOURFUL_SHARE,
    implausibility,
)


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


def test_colour_is_the_spread_between_any_two_channels_past_its_threshold():
    """A pixel counts as colourful when its largest and smallest channels differ by more than
    COLOUR_SPREAD, whichever channels they are; above MAX_COLOURFUL_SHARE of such pixels the
    image is a colour image."""
    rng = np.random.default_rng(1)
    grey = np.repeat(rng.integers(40, 200, (100, 100, 1), np.uint8), 3, axis=2)
    for raised, base in [(1, 0), (2, 1), (0, 2)]:  # each channel the largest once
        for spread, colourful in [(COLOUR_SPREAD, False), (COLOUR_SPREAD + 1, True)]:
            pixels = grey.copy()
            pixels[:10, :, raised] = pixels[:10, :, base] + spread  # 10 % of the pixels
            problem = implausibility(Image.fromarray(pixels))
            assert (problem is not None and "colour" in problem) is colourful, (raised, spread)
    # just under the share: 4 % of pixels tinted far apart is still a grey slice
    pixels = grey.copy()
    pixels[: int(100 * MAX_COLOURFUL_SHARE) - 1, :, 0] = 255
    pixels[: int(100 * MAX_COLOURFUL_SHARE) - 1, :, 2] = 0
    assert implausibility(Image.fromarray(pixels)) is None
    # a palette image is judged on its colours, like any other mode
    assert "colour" in implausibility(
        Image.fromarray(rng.integers(0, 256, (64, 64, 3), np.uint8)).convert("P")
    )
