"""An ensemble of heads as one model of the same architecture.

Heads trained with different seeds on the same frozen base answer alike on easy images and
differently where the data leave them free; averaging their logits keeps what they agree on
(issue 17's cross-validation: the same accuracy, a lower log-loss and calibration error than
one head). The average needs no new layer: each head's batch normalization is folded into its
hidden layer, the hidden layers sit side by side in one wider layer, and the output layer holds
each head's output weights divided by their number. The merged model is an ordinary classifier
(``architecture.build_classifier`` with a wider hidden layer): saving, temperature scaling,
Grad-CAM, the reduced-precision paths and the out-of-distribution check see nothing new.
"""

from __future__ import annotations

from collections.abc import Sequence

import keras
import numpy as np

from chest_ct_classifier.model.architecture import (
    FEATURE_LAYER,
    HIDDEN_LAYER,
    NORMALIZATION_LAYER,
    OUTPUT_LAYER,
)


def merge_heads(members: Sequence[keras.Model]) -> keras.Model:
    """One model whose logits are the average of the members' logits.

    Args:
        members: classifiers of one architecture that share every layer up to
            ``FEATURE_LAYER`` (the same weights: heads trained on one frozen base) and differ
            in their heads only.

    Returns:
        A new model: the first member's layers up to ``FEATURE_LAYER``, a batch normalization
        with the first member's statistics, one hidden layer as wide as all the members'
        together, and the output layer. A single member comes back as an equal copy.
    """
    if not members:
        raise ValueError("no heads to merge")
    first = members[0]
    _check_shared_base(members)
    normalized = NORMALIZATION_LAYER in {layer.name for layer in first.layers}
    hidden = HIDDEN_LAYER in {layer.name for layer in first.layers}
    mean, scale = _normalization(first) if normalized else (None, None)

    kernels, biases, out_kernels, out_biases = [], [], [], []
    for member in members:
        # the member's head input as an affine map of the shared normalized vector z
        if normalized:
            member_mean, member_scale = _normalization(member)
            gamma, beta = _affine(member)
            factor = gamma * scale / member_scale
            shift = gamma * (mean - member_mean) / member_scale + beta
        else:
            factor = shift = None
        first_dense = member.get_layer(HIDDEN_LAYER if hidden else OUTPUT_LAYER)
        kernel, bias = first_dense.get_weights()
        if normalized:
            kernel, bias = factor[:, None] * kernel, bias + shift @ kernel
        if hidden:
            kernels.append(kernel)
            biases.append(bias)
            out_kernel, out_bias = member.get_layer(OUTPUT_LAYER).get_weights()
            out_kernels.append(out_kernel)
            out_biases.append(out_bias)
        else:
            out_kernels.append(kernel)
            out_biases.append(bias)

    merged = _wider_copy(first, sum(k.shape[1] for k in kernels) if hidden else 0)
    if normalized:
        norm = merged.get_layer(NORMALIZATION_LAYER)
        epsilon = norm.epsilon
        # gamma 1, beta 0, the first member's mean, a variance that gives its scale exactly
        norm.set_weights([np.ones_like(mean), np.zeros_like(mean), mean, scale**2 - epsilon])
    n = len(members)
    if hidden:
        merged.get_layer(HIDDEN_LAYER).set_weights(
            [np.concatenate(kernels, axis=1), np.concatenate(biases)]
        )
        merged.get_layer(OUTPUT_LAYER).set_weights(
            [np.concatenate(out_kernels, axis=0) / n, np.mean(out_biases, axis=0)]
        )
    else:
        merged.get_layer(OUTPUT_LAYER).set_weights(
            [np.sum(out_kernels, axis=0) / n, np.mean(out_biases, axis=0)]
        )
    return merged


def _check_shared_base(members: Sequence[keras.Model]) -> None:
    base = _base_layer_names(members[0])
    for member in members[1:]:
        for name in base:
            ours, theirs = (
                members[0].get_layer(name).get_weights(),
                member.get_layer(name).get_weights(),
            )
            if len(ours) != len(theirs) or any(
                a.shape != b.shape or not np.array_equal(a, b)
                for a, b in zip(ours, theirs, strict=True)
            ):
                raise ValueError(f"the heads do not share one base: layer {name} differs")


def _base_layer_names(model: keras.Model) -> list[str]:
    names = []
    for layer in model.layers:
        names.append(layer.name)
        if layer.name == FEATURE_LAYER:
            return names
    raise ValueError(f"the model has no {FEATURE_LAYER} layer")


def _normalization(model: keras.Model) -> tuple[np.ndarray, np.ndarray]:
    """The batch normalization's moving mean and its scale, sqrt(variance + epsilon)."""
    layer = model.get_layer(NORMALIZATION_LAYER)
    mean = np.asarray(layer.moving_mean, dtype=np.float64)
    variance = np.asarray(layer.moving_variance, dtype=np.float64)
    return mean, np.sqrt(variance + layer.epsilon)


def _affine(model: keras.Model) -> tuple[np.ndarray, np.ndarray]:
    layer = model.get_layer(NORMALIZATION_LAYER)
    return np.asarray(layer.gamma, dtype=np.float64), np.asarray(layer.beta, dtype=np.float64)


def _wider_copy(model: keras.Model, hidden_units: int) -> keras.Model:
    """The model rebuilt with ``hidden_units`` in its hidden layer, every layer up to
    ``FEATURE_LAYER`` holding the model's weights."""
    config = model.get_config()
    for layer in config["layers"]:
        if layer["config"].get("name") == HIDDEN_LAYER:
            layer["config"]["units"] = hidden_units
        if layer["config"].get("name") == OUTPUT_LAYER:
            layer.pop("build_config", None)  # built again on the wider input
    wider = keras.Model.from_config(config)
    for name in _base_layer_names(model):
        wider.get_layer(name).set_weights(model.get_layer(name).get_weights())
    return wider
