"""Training-time augmentation: random flips, small rotations, zooms and stretches, brightness
and contrast.

Augmented views are computed ahead of training (a fixed number per image) so that the frozen
layers run once per view, not once per epoch. Views are drawn from seeded Keras random layers:
the same images, parameters and seed give the same views.
"""

from __future__ import annotations

import keras
import numpy as np

from chest_ct_classifier.config.training import AugmentationSettings


def augmentation_model(settings: AugmentationSettings, seed: int) -> keras.Sequential:
    """Random transforms of uint8-range RGB batches (N, H, W, 3), float32 0-255 out.

    Args:
        settings: ``horizontal_flip``, ``rotation_degrees``, ``zoom`` (fraction, both ways),
            ``stretch`` (fraction by which the width changes against the height: the pictures
            of one class come in different aspect ratios), ``brightness`` and ``contrast``
            (fractions); 0 switches a transform off. Areas moved into view are filled with
            black, the CT background.
        seed: seed of the random draws.
    """
    layers: list[keras.layers.Layer] = []
    if settings.horizontal_flip:
        layers.append(keras.layers.RandomFlip("horizontal", seed=seed))
    if degrees := settings.rotation_degrees:
        layers.append(
            keras.layers.RandomRotation(degrees / 360.0, fill_mode="constant", seed=seed + 1)
        )
    if zoom := settings.zoom:
        layers.append(keras.layers.RandomZoom((-zoom, zoom), fill_mode="constant", seed=seed + 2))
    if stretch := settings.stretch:
        layers.append(
            keras.layers.RandomZoom(
                (0.0, 0.0), (-stretch, stretch), fill_mode="constant", seed=seed + 5
            )
        )
    if brightness := settings.brightness:
        layers.append(keras.layers.RandomBrightness(brightness, (0, 255), seed=seed + 3))
    if contrast := settings.contrast:
        layers.append(keras.layers.RandomContrast(contrast, (0, 255), seed=seed + 4))
    return keras.Sequential(layers, name="augmentation")


def augment(rgb: np.ndarray, model: keras.Sequential) -> np.ndarray:
    """One random view of each image of a uint8 RGB batch (N, H, W, 3); uint8 out.

    Rounding back to uint8 keeps augmented views on the same footing as real images, which then
    go through the one preprocessing path (:func:`preprocessing.scale_for_vgg16`).
    """
    if not model.layers:
        return rgb
    views = np.asarray(model(rgb.astype(np.float32), training=True))
    return np.clip(np.rint(views), 0, 255).astype(np.uint8)
