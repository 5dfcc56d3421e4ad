"""Pretrained VGG16 convolution weights, resolved (and possibly downloaded) at load time."""

from __future__ import annotations

from typing import Any

from kedro.io import AbstractDataset, DatasetError

from chest_ct_classifier.model.pretrained_weights import PretrainedWeights, resolve_vgg16_weights


class VGG16WeightsDataset(AbstractDataset[None, PretrainedWeights]):
    """Read-only: ``weights`` is imagenet (falls back to hed_bsds500 offline), hed_bsds500,
    none, or the path of a weights file."""

    def __init__(self, weights: str = "imagenet", metadata: dict[str, Any] | None = None) -> None:
        self._weights = str(weights)
        self.metadata = metadata

    def load(self) -> PretrainedWeights:
        try:
            return resolve_vgg16_weights(self._weights)
        except (ValueError, OSError) as exc:
            raise DatasetError(str(exc)) from exc

    def save(self, data: None) -> None:
        raise DatasetError("VGG16WeightsDataset is read-only")

    def _describe(self) -> dict[str, Any]:
        return {"weights": self._weights}
