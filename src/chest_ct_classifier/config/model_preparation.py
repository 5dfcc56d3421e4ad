"""``conf/base/parameters_model_preparation.yml``: the untrained classifier."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from chest_ct_classifier.config.base import Settings


class HeadSettings(Settings):
    """The new head on VGG16's convolutions."""

    pooling: Literal["multilevel", "avg", "flatten"]
    """multilevel: block 4 average and maximum with block 5 average; avg: block 5 average;
    flatten: block 5 flattened."""
    normalize: bool
    dense_units: int = Field(ge=0)
    """0: no hidden layer."""
    dropout: float = Field(ge=0.0, lt=1.0)


class ModelPreparationParameters(Settings):
    weights: str = Field(min_length=1)
    """imagenet, hed_bsds500, none, or the path of a VGG16 weights file."""
    image_size: int = Field(ge=32)
    """Square input size in pixels; VGG16's five poolings need at least 32."""
    seed: int
    head: HeadSettings
