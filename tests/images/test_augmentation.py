import numpy as np

from chest_ct_classifier.config.training import AugmentationSettings
from chest_ct_classifier.images.augmentation import augment, augmentation_model

NONE = {"views": 1, "horizontal_flip": False, "rotation_degrees": 0, "zoom": 0, "stretch": 0,
        "brightness": 0, "contrast": 0}  # fmt: skip


def _only(**switched_on) -> AugmentationSettings:
    """Every transform off except those named."""
    return AugmentationSettings(**{**NONE, **switched_on})


ALL = _only(
    horizontal_flip=True, rotation_degrees=10, zoom=0.1, stretch=0.15, brightness=0.1, contrast=0.1
)


def _images(n: int = 4) -> np.ndarray:
    rng = np.random.default_rng(0)
    return rng.integers(0, 256, size=(n, 32, 32, 3), dtype=np.uint8)


def test_views_are_uint8_images_of_the_same_shape_and_differ_from_the_original():
    images = _images()
    views = augment(images, augmentation_model(ALL, seed=1))
    assert views.dtype == np.uint8 and views.shape == images.shape
    assert all(not np.array_equal(v, i) for v, i in zip(views, images, strict=True))


def test_same_seed_gives_the_same_views_and_another_seed_others():
    images = _images()
    first = augment(images, augmentation_model(ALL, seed=1))
    again = augment(images, augmentation_model(ALL, seed=1))
    other = augment(images, augmentation_model(ALL, seed=2))
    np.testing.assert_array_equal(first, again)
    assert not np.array_equal(first, other)


def test_successive_draws_give_new_views():
    images = _images()
    model = augmentation_model(ALL, seed=1)
    assert not np.array_equal(augment(images, model), augment(images, model))


def test_flip_only_mirrors_or_keeps_each_image():
    images = _images(16)
    views = augment(images, augmentation_model(_only(horizontal_flip=True), seed=3))
    mirrored = [np.array_equal(v, i[:, ::-1]) for v, i in zip(views, images, strict=True)]
    kept = [np.array_equal(v, i) for v, i in zip(views, images, strict=True)]
    assert all(m or k for m, k in zip(mirrored, kept, strict=True))
    assert any(mirrored) and any(kept)


def test_everything_off_is_the_identity():
    images = _images()
    np.testing.assert_array_equal(augment(images, augmentation_model(_only(), seed=0)), images)


def test_stretch_changes_the_width_only():
    square = np.zeros((8, 32, 32, 3), dtype=np.uint8)
    square[:, 8:24, 8:24] = 255
    views = augment(square, augmentation_model(_only(stretch=0.3), seed=4))
    rows = {tuple(np.flatnonzero(v.max(axis=(1, 2)) > 0)) for v in views}
    widths = {int((v.max(axis=(0, 2)) > 0).sum()) for v in views}
    assert rows == {tuple(range(8, 24))}  # height untouched
    assert len(widths) > 1  # widths vary from view to view
