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
import tempfile
import threading
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import keras
import numpy as np
import tensorflow as tf
import yaml
from PIL import Image

from chest_ct_classifier.explanation import CAM_LAYER, grad_cam, overlay_heatmap
from chest_ct_classifier.labels import LABELS
from chest_ct_classifier.model_architecture import OUTPUT_LAYER, image_size_of
from chest_ct_classifier.preprocessing import fitted_rgb, scale_for_vgg16
from chest_ct_classifier.serving import measured_quality
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
    measured: dict[str, Any] | None = None
    """Its scores on held-out images (``measured_quality``); None when never evaluated."""

    def as_dict(self) -> dict[str, Any]:
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
        self.image_size = info.image_size
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
            heatmap, probabilities = grad_cam(self.model, model_input, layer_name=CAM_LAYER)
        buffer = io.BytesIO()
        Image.fromarray(overlay_heatmap(rgb, heatmap)).save(buffer, format="PNG")
        return Classification(probabilities, buffer.getvalue())


def load_served_model(settings: ServingSettings) -> ServedModel:
    """The model the settings name: the registry URI when set, else the model file.

    Raises:
        ModelUnavailableError: nothing to load, or it cannot be loaded or served; says what to
            do. Details (stack, credentials) go to the log, not into the message.
    """
    if settings.model_uri:
        return _load_from_registry(settings.model_uri)
    try:
        path = settings.resolved_model_path()
    except FileNotFoundError as exc:
        raise ModelUnavailableError(str(exc)) from exc
    # The project's evaluation report is about the catalog's model, not about another file.
    report = settings.resolved_metrics_path() if settings.model_path is None else None
    return _load_from_file(path, report)


def servable_image_size(model: keras.Model) -> int:
    """The model's square input size, after checking that this app can serve it: RGB square
    input, one output per class, and the layers Grad-CAM reads.

    Raises:
        ValueError: says what does not fit.
    """
    shape = tuple(model.input_shape)
    if len(shape) != 4 or shape[3] != 3 or shape[1] != shape[2] or not shape[1]:
        raise ValueError(f"its input is {shape}, not a square RGB image")
    if model.output_shape[-1] != len(LABELS):
        raise ValueError(f"it has {model.output_shape[-1]} outputs, not one per class")
    for layer in (CAM_LAYER, OUTPUT_LAYER):
        model.get_layer(layer)  # ValueError when absent
    return image_size_of(model)


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def _first_line(exc: Exception) -> str:
    text = str(exc).strip().splitlines()
    return (text[0] if text else type(exc).__name__)[:200]


def _load_from_file(path: Path, report: Path | None = None) -> ServedModel:
    if not path.is_file():
        raise ModelUnavailableError(
            f"No trained model at {path}. Train one first: `make run` (or `kedro run`) in the "
            "project folder, then restart the app; or set CHEST_CT_MODEL_PATH to a model file, "
            "or CHEST_CT_MODEL_URI to a registered model."
        )
    try:
        data = path.read_bytes()
        model = keras.saving.load_model(path, compile=False)
        info = ModelInfo(
            name=MODEL_NAME,
            version="sha256:" + hashlib.sha256(data).hexdigest()[:12],
            source="file",
            location=str(path),
            weights=_weights_beside(path),
            image_size=servable_image_size(model),
            loaded_at=_now(),
            measured=measured_quality.from_metrics_file(report, path) if report else None,
        )
        served = ServedModel(model, info)
    except Exception as exc:  # Keras raises many types for a broken or foreign file
        logger.exception("Cannot serve the model file %s", path)
        raise ModelUnavailableError(
            f"The model file {path} cannot be loaded and served ({_first_line(exc)}). Train a "
            "new one with `make run` (or `kedro run`), then restart the app."
        ) from exc
    logger.info("Serving %s (%s, weights %s)", path, info.version, info.weights)
    return served


def _weights_beside(path: Path) -> str:
    try:
        return str(json.loads((path.parent / WEIGHTS_INFO_FILE).read_text())["used"])
    except (OSError, ValueError, KeyError, TypeError):
        return "unknown"


def _without_credentials(uri: str) -> str:
    parts = urlsplit(uri)
    if "@" not in parts.netloc:
        return uri
    return urlunsplit(parts._replace(netloc="***@" + parts.netloc.rsplit("@", 1)[1]))


def _load_from_registry(uri: str) -> ServedModel:
    # Imported here: only registry serving needs MLflow.
    import mlflow  # noqa: PLC0415

    try:
        pinned_uri, version, weights, measured = _registry_version(uri)
        with tempfile.TemporaryDirectory() as download:
            local = Path(
                mlflow.artifacts.download_artifacts(artifact_uri=pinned_uri, dst_path=download)
            )
            flavour = yaml.safe_load((local / "MLmodel").read_text())["flavors"]
            artifact = flavour["python_function"]["artifacts"][MODEL_DATASET]["path"]
            model = keras.saving.load_model(local / artifact, compile=False)
        match = _MODELS_URI.match(uri)
        info = ModelInfo(
            name=match["name"] if match else MODEL_NAME,
            version=version,
            source="registry",
            location=pinned_uri,
            weights=weights,
            image_size=servable_image_size(model),
            loaded_at=_now(),
            measured=measured,
        )
        served = ServedModel(model, info)
    except Exception as exc:  # MLflow, network, file and Keras errors alike
        logger.exception("Cannot serve the registered model %s", uri)
        raise ModelUnavailableError(
            f"The registered model {uri} cannot be loaded from the MLflow registry at "
            f"{_without_credentials(mlflow.get_tracking_uri())} ({type(exc).__name__}; details "
            "in the server log). Train and register one with `kedro run`, or check "
            "MLFLOW_TRACKING_URI and CHEST_CT_MODEL_URI."
        ) from exc
    logger.info("Serving %s (version %s, weights %s)", uri, version, weights)
    return served


def _registry_version(uri: str) -> tuple[str, str, str, dict[str, Any] | None]:
    """The URI pinned to the version it names now (so the version reported is the version
    loaded, even if the alias moves meanwhile), that version, the weights its run used and the
    scores its run measured."""
    from mlflow import MlflowClient  # noqa: PLC0415

    match = _MODELS_URI.match(uri)
    if match is None:
        return uri, uri, "unknown", None
    client = MlflowClient()
    if match["alias"]:
        version = client.get_model_version_by_alias(match["name"], match["alias"])
    else:
        version = client.get_model_version(match["name"], match["version"])
    run = client.get_run(version.run_id)
    weights = run.data.tags.get("weights_used", "unknown")
    measured = measured_quality.from_run_metrics(run.data.metrics)
    return f"models:/{match['name']}/{version.version}", str(version.version), weights, measured
