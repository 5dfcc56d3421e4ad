"""The classifier's architecture: Keras VGG16 convolution base plus a small new head.

The model is one flat chain of layers (VGG16's ``block*`` layers, then ``head_*`` layers), so it
can be cut at any layer: training runs the frozen part once per image and trains only what
follows the cut on cached activations. Blocks 1-4 are always frozen; block 5 is frozen while the
head learns (phase 1) and, when ``training.phase2.max_epochs`` asks for it (0 by default),
fine-tuned with it afterwards (phase 2).
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

import keras
import numpy as np

from chest_ct_classifier.images.labels import LABELS

OUTPUT_LAYER = "head_output"
"""The softmax layer; calibration folds its temperature in, Grad-CAM reads its logits."""

# The pooled feature vector the head's dense layers start from (frozen in phase 1: cached).
FEATURE_LAYER = "head_features"
# The head's batch normalization of that vector and its hidden layer, when it has them (the
# ensemble folds the one into the other).
NORMALIZATION_LAYER = "head_norm"
HIDDEN_LAYER = "head_hidden"
# Output of the always-frozen blocks 1-4: activations are cached here, once per image and view.
CACHED_LAYER = "block4_pool"
# Layers fine-tuned in phase 2 of training, together with the head.
FINE_TUNED_BLOCK = "block5"
VGG16_CONV_LAYERS: tuple[str, ...] = (
    "block1_conv1",
    "block1_conv2",
    "block2_conv1",
    "block2_conv2",
    "block3_conv1",
    "block3_conv2",
    "block3_conv3",
    "block4_conv1",
    "block4_conv2",
    "block4_conv3",
    "block5_conv1",
    "block5_conv2",
    "block5_conv3",
)

ConvWeights = Sequence[tuple[np.ndarray, np.ndarray]]


def build_classifier(
    image_size: int,
    conv_weights: ConvWeights | None,
    pooling: str = "multilevel",
    normalize: bool = True,
    dense_units: int = 256,
    dropout: float = 0.3,
    seed: int = 42,
) -> keras.Model:
    """VGG16 convolution base (frozen) with a new head for the four classes.

    Args:
        image_size: input height and width in pixels (at least 32).
        conv_weights: the 13 (kernel, bias) pairs of VGG16's convolutions in block order, or
            None for random initialization.
        pooling: how the feature maps become the head's vector (layer ``FEATURE_LAYER``):
            ``multilevel``, the average and the maximum of block 4's output with the average of
            block 5's (1536 values); ``avg``, block 5's average (512); ``flatten``, block 5's
            whole 7x7x512 map. With the offline HED weights, which were fine-tuned to find
            edges, block 4 keeps more of what tells the cancers apart than block 5 does, as a
            cross-validation over train+valid grouped by near duplicates showed
            (docs/results.md).
        normalize: batch-normalize the pooled features. VGG16 activations span several orders
            of magnitude; without this the head trains poorly (docs/results.md).
        dense_units: width of a hidden dense layer in the head; 0 for none.
        dropout: dropout rate before each dense layer of the head.
        seed: seed for the head's initializers and dropout.
    """
    if image_size < 32:
        raise ValueError(f"image_size must be at least 32 for VGG16, got {image_size}")
    keras.utils.set_random_seed(seed)
    base = keras.applications.VGG16(
        include_top=False, weights=None, input_shape=(image_size, image_size, 3)
    )
    if conv_weights is not None:
        set_conv_weights(base, conv_weights)
    base.trainable = False

    x = base.output
    if pooling == "multilevel":
        block4 = base.get_layer(CACHED_LAYER).output
        x = keras.layers.Concatenate(name=FEATURE_LAYER)(
            [
                keras.layers.GlobalAveragePooling2D(name="head_block4_avg")(block4),
                keras.layers.GlobalMaxPooling2D(name="head_block4_max")(block4),
                keras.layers.GlobalAveragePooling2D(name="head_block5_avg")(x),
            ]
        )
    elif pooling == "avg":
        x = keras.layers.GlobalAveragePooling2D(name=FEATURE_LAYER)(x)
    elif pooling == "flatten":
        x = keras.layers.Flatten(name=FEATURE_LAYER)(x)
    else:
        raise ValueError(f"pooling must be 'multilevel', 'avg' or 'flatten', got {pooling!r}")
    if normalize:
        x = keras.layers.BatchNormalization(name=NORMALIZATION_LAYER)(x)
    if dense_units > 0:
        x = keras.layers.Dropout(dropout, seed=seed, name="head_dropout_hidden")(x)
        x = keras.layers.Dense(dense_units, activation="relu", name=HIDDEN_LAYER)(x)
    x = keras.layers.Dropout(dropout, seed=seed, name="head_dropout")(x)
    outputs = keras.layers.Dense(len(LABELS), activation="softmax", name=OUTPUT_LAYER)(x)
    return keras.Model(base.input, outputs, name="vgg16_chest_ct")


def set_conv_weights(model: keras.Model, conv_weights: ConvWeights) -> None:
    """Load the 13 VGG16 convolution (kernel, bias) pairs into the model's block layers."""
    if len(conv_weights) != len(VGG16_CONV_LAYERS):
        raise ValueError(
            f"expected {len(VGG16_CONV_LAYERS)} VGG16 convolutions, got {len(conv_weights)}"
        )
    for name, (kernel, bias) in zip(VGG16_CONV_LAYERS, conv_weights, strict=True):
        layer = model.get_layer(name)
        expected = tuple(layer.kernel.shape)
        if tuple(kernel.shape) != expected:
            raise ValueError(f"{name}: kernel shape {kernel.shape}, VGG16 expects {expected}")
        layer.set_weights([kernel, bias])


def image_size_of(model: keras.Model) -> int:
    """The square input size the model was built for."""
    return int(model.input_shape[1])


def feature_extractor(model: keras.Model, layer_name: str = FEATURE_LAYER) -> keras.Model:
    """The part of the model up to and including ``layer_name`` (shares the model's layers)."""
    return keras.Model(model.input, model.get_layer(layer_name).output)


def model_after(
    model: keras.Model, layer_name: str = FEATURE_LAYER, until: str | None = None
) -> keras.Model:
    """The part of the model after ``layer_name`` (up to and including ``until``, default the
    output), taking that layer's output as its input; branches included.

    The layers are shared with ``model``: training this part trains the whole model's layers.
    """
    end = model.output if until is None else model.get_layer(until).output
    return keras.Model(model.get_layer(layer_name).output, end, name=f"after_{layer_name}")


def set_block_trainable(model: keras.Model, block: str, trainable: bool) -> None:
    """Freeze or unfreeze every layer of one VGG16 block (e.g. ``block5``)."""
    layers = [layer for layer in model.layers if layer.name.startswith(f"{block}_")]
    if not layers:
        raise ValueError(f"the model has no layers of {block}")
    for layer in layers:
        layer.trainable = trainable


def model_fingerprint(model: keras.Model) -> str:
    """A digest of the model's weights: reports and detectors name the model they were made for
    by it, and the activation cache the weights that computed its features."""
    digest = hashlib.sha256()
    for weight in model.weights:
        digest.update(np.ascontiguousarray(weight.numpy()).tobytes())
    return digest.hexdigest()[:16]
