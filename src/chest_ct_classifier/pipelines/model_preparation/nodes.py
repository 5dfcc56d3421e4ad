"""Build the untrained classifier: VGG16 convolution base (frozen) plus a new head."""

from __future__ import annotations

import logging
from typing import Any

import keras

from chest_ct_classifier.config.model_preparation import ModelPreparationParameters
from chest_ct_classifier.model.architecture import build_classifier
from chest_ct_classifier.model.pretrained_weights import PretrainedWeights

logger = logging.getLogger(__name__)


def prepare_classifier(
    pretrained: PretrainedWeights, parameters: ModelPreparationParameters
) -> tuple[keras.Model, dict[str, Any], dict[str, Any]]:
    """The untrained model, and a record of the weights used (for reports and MLflow tags)."""
    head = parameters.head
    model = build_classifier(
        image_size=parameters.image_size,
        conv_weights=pretrained.conv_weights,
        pooling=head.pooling,
        normalize=head.normalize,
        dense_units=head.dense_units,
        dropout=head.dropout,
        seed=parameters.seed,
    )
    trainable = sum(int(w.numpy().size) for w in model.trainable_weights)
    logger.info(
        "Prepared VGG16 classifier: input %dpx, weights %s, %d trainable of %d parameters",
        parameters.image_size,
        pretrained.used,
        trainable,
        model.count_params(),
    )
    weights_info = pretrained.describe()
    tags = {
        "weights_used": pretrained.used,
        "weights_requested": pretrained.requested,
        "weights_fallback": "yes" if pretrained.fallback_reason else "no",
    }
    return model, weights_info, tags
