"""The model the app serves: loaded once, from a file or the MLflow registry, never per request.

A :class:`ServedModel` is read-only once built, so threads share it freely and the app can swap
in a new one atomically (a reference assignment): a request that already holds the old one
finishes on it.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import re
import threading
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf
import yaml
from PIL import Image

from chest_ct_classifier.explanation import LAST_CONV_LAYER, grad_cam, overlay_heatmap
from chest_ct_classifier.model_architecture import image_size_of
from chest_ct_classifier.preprocessing import fitted_rgb, scale_for_vgg16
from chest_ct_classifier.serving.settings import MODEL_DATASET, ServingSettings

logger = logging.getLogger(__name__)

MODEL_NAME = "chest-ct-classifier"
"""The registered model's name (``model_registry.MODEL_NAME``, not imported: serving does not
need the registry's dependencies unless it loads from the registry)."""
WEIGHTS_INFO_FILE = "weights_info.json"
"""Written by model preparation beside the model: which pretrained weights were really used."""

_MODELS_URI = re.compile(r"^models:/(?P<name>[^/@]+)(?:@(?P<alias>[^/]+)|/(?P<version>\d+))$")


class ModelUnavailableError(RuntimeError):
    """No model could be loaded; the message says how to get one."""


@dataclass(frozen=True)
class ModelInfo:
    """What the app tells users about the model it serves."""

    name: str
    version: str
    source: str  # "file" or "registry"
    location: str
    weights: str
    image_size: int
    loaded_at: str

    def as_dict(self) -> dict[str, str | int]:
        return asdict(self)


@dataclass(frozen=True)
class Classification:
    probabilities: np.ndarray  # (n_classes,) float32, the model's output order
    heatmap_png: bytes | None  # the Grad-CAM overlay, when asked for


class ServedModel:
    """A loaded classifier and its description; classifies image bytes."""

    def __init__(self, model: keras.Model, info: ModelInfo) -> None:
        self.model = model
        self.info = info
        self.image_size = image_size_of(model)
        # One traced graph for every request: no per-call Keras predict overhead, and safe to
        # call from several threads at once.
        self._forward = tf.function(
            lambda batch: model(batch, training=False),
            input_signature=[
                tf.TensorSpec([None, self.image_size, self.image_size, 3], tf.float32)
            ],
        )
        # Grad-CAM builds a probe model over the shared layers: one at a time.
        self._explain_lock = threading.Lock()
        self._forward(np.zeros((1, self.image_size, self.image_size, 3), np.float32))

    def forward(self, batch: np.ndarray) -> np.ndarray:
        """Class probabilities (n, n_classes) for a batch of preprocessed images."""
        return self._forward(batch).numpy()

    def classify(
        self, data: bytes, max_pixels: int | None = None, explain: bool = False
    ) -> Classification:
        """Class probabilities for image bytes (the training pipeline's preprocessing), and the
        Grad-CAM overlay as PNG bytes when ``explain``.

        Raises:
            UnreadableImageError: not a readable image (ImageTooLargeError: too many pixels).
        """
        rgb = fitted_rgb(data, self.image_size, max_pixels)
        model_input = scale_for_vgg16(rgb)
        if not explain:
            probabilities = self.forward(model_input[None])[0]
            return Classification(probabilities.astype(np.float32), None)
        with self._explain_lock:
            heatmap, probabilities = grad_cam(self.model, model_input, layer_name=LAST_CONV_LAYER)
        buffer = io.BytesIO()
        Image.fromarray(overlay_heatmap(rgb, heatmap)).save(buffer, format="PNG")
        return Classification(probabilities, buffer.getvalue())


def load_served_model(settings: ServingSettings) -> ServedModel:
    """The model the settings name: the registry URI when set, else the model file.

    Raises:
        ModelUnavailableError: nothing to load, or it cannot be loaded; says what to do.
    """
    if settings.model_uri:
        return _load_from_registry(settings.model_uri)
    try:
        path = settings.resolved_model_path()
    except FileNotFoundError as exc:
        raise ModelUnavailableError(str(exc)) from exc
    return _load_from_file(path)


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def _load_from_file(path: Path) -> ServedModel:
    if not path.is_file():
        raise ModelUnavailableError(
            f"No trained model at {path}. Train one first: `make run` (or `kedro run`) in the "
            "project folder, then restart the app; or set CHEST_CT_MODEL_PATH to a model file, "
            "or CHEST_CT_MODEL_URI to a registered model."
        )
    data = path.read_bytes()
    try:
        model = keras.saving.load_model(path, compile=False)
    except Exception as exc:  # Keras raises many types for a broken or foreign file
        raise ModelUnavailableError(f"The model file {path} cannot be loaded: {exc}") from exc
    info = ModelInfo(
        name=MODEL_NAME,
        version="sha256:" + hashlib.sha256(data).hexdigest()[:12],
        source="file",
        location=str(path),
        weights=_weights_beside(path),
        image_size=image_size_of(model),
        loaded_at=_now(),
    )
    logger.info("Serving %s (%s, weights %s)", path, info.version, info.weights)
    return ServedModel(model, info)


def _weights_beside(path: Path) -> str:
    try:
        return str(json.loads((path.parent / WEIGHTS_INFO_FILE).read_text())["used"])
    except (OSError, ValueError, KeyError, TypeError):
        return "unknown"


def _load_from_registry(uri: str) -> ServedModel:
    # Imported here: only registry serving needs MLflow.
    import mlflow  # noqa: PLC0415
    from mlflow.exceptions import MlflowException  # noqa: PLC0415

    try:
        local = Path(mlflow.artifacts.download_artifacts(artifact_uri=uri))
        flavour = yaml.safe_load((local / "MLmodel").read_text())["flavors"]["python_function"]
        model_file = local / flavour["artifacts"][MODEL_DATASET]["path"]
        model = keras.saving.load_model(model_file, compile=False)
        version, weights = _registry_version(uri)
    except (MlflowException, OSError, KeyError, TypeError, ValueError) as exc:
        raise ModelUnavailableError(
            f"The registered model {uri} cannot be loaded from the MLflow registry at "
            f"{mlflow.get_tracking_uri()}: {exc}. Train and register one with `kedro run`."
        ) from exc
    info = ModelInfo(
        name=_MODELS_URI.match(uri)["name"] if _MODELS_URI.match(uri) else MODEL_NAME,
        version=version,
        source="registry",
        location=uri,
        weights=weights,
        image_size=image_size_of(model),
        loaded_at=_now(),
    )
    logger.info("Serving %s (version %s, weights %s)", uri, version, weights)
    return ServedModel(model, info)


def _registry_version(uri: str) -> tuple[str, str]:
    """The version number a ``models:/`` URI resolves to, and the weights its run used."""
    from mlflow import MlflowClient  # noqa: PLC0415

    match = _MODELS_URI.match(uri)
    if match is None:
        return uri, "unknown"
    client = MlflowClient()
    if match["alias"]:
        version = client.get_model_version_by_alias(match["name"], match["alias"])
    else:
        version = client.get_model_version(match["name"], match["version"])
    weights = client.get_run(version.run_id).data.tags.get("weights_used", "unknown")
    return str(version.version), weights
