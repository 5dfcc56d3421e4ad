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
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import keras
import numpy as np
import yaml
from PIL import Image

from chest_ct_classifier.images.dicom import DEFAULT_WINDOW, Window, validate_window
from chest_ct_classifier.images.labels import LABELS
from chest_ct_classifier.images.preprocessing import (
    RASTER,
    PreparedImage,
    SliceSource,
    prepare_images,
)
from chest_ct_classifier.model.architecture import OUTPUT_LAYER, image_size_of, model_fingerprint
from chest_ct_classifier.model.explanation import CAM_LAYER, grad_cam, overlay_heatmap
from chest_ct_classifier.model.numeric_precision import (
    AUTO,
    PRECISIONS,
    Forward,
    select_forward,
    traced_forward,
)
from chest_ct_classifier.model.ood import METHOD as OOD_METHOD
from chest_ct_classifier.model.ood import OodCheck, OodDetector, check, usable_detector
from chest_ct_classifier.redaction import redact_url
from chest_ct_classifier.registry.release import CANDIDATE_OF_SERVED
from chest_ct_classifier.serving import measured_quality
from chest_ct_classifier.serving.request_batching import RequestBatcher
from chest_ct_classifier.serving.settings import (
    COMPANION_FILES,
    INT8_DATASET,
    MODEL_DATASET,
    OOD_DATASET,
    PRECISION_GATE_DATASET,
    PRECISION_VARIABLE,
    ServingSettings,
)

logger = logging.getLogger(__name__)

MODEL_NAME = "chest-ct-classifier"
"""The registered model's name (``registry.champion_gate.MODEL_NAME``, not imported: that module
loads MLflow, which serving needs only when it loads from the registry)."""
WEIGHTS_INFO_FILE = "weights_info.json"
"""Written by model preparation beside the model: which pretrained weights were really used."""

_MODELS_URI = re.compile(r"^models:/(?P<name>[^/@]+)(?:@(?P<alias>[^/]+)|/(?P<version>\d+))$")


class ModelUnavailableError(RuntimeError):
    """No model could be loaded; the message says how to get one."""


class ExplanationsBusyError(RuntimeError):
    """As many explanations as allowed are being computed: ask again in a moment."""


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
    precision: dict[str, Any] | None = None
    """The precision served, the one requested, why, and which reduced ones passed the gate."""
    fingerprint: str | None = None
    """A digest of the weights (``architecture.model_fingerprint``): which model answered."""
    ood_detector: dict[str, Any] | None = None
    """The out-of-distribution detector used (method, threshold, target false-rejection rate);
    None when there is none for this model: answers then say the check was not made."""

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class Classification:
    probabilities: np.ndarray  # (n_classes,) float32, the model's output order
    ood: OodCheck  # whether the image looks like the chest CT slices the model learned
    heatmap_png: bytes | None  # the Grad-CAM overlay, when asked for
    source: SliceSource = RASTER  # which slice of a DICOM file
    preview_png: bytes | None = None  # a DICOM slice as the model saw it (browsers show no DICOM)


class ServedModel:
    """A loaded classifier and its description; classifies image bytes.

    Answers come from ``forward`` (fp32 by default: the model traced once, no per-call Keras
    predict overhead), with concurrent requests grouped into batches of at most ``max_batch``;
    each with the out-of-distribution check (``ood.check``: the input checks, then the
    ``detector``'s score of the head's input vector from the same forward pass); Grad-CAM
    heatmaps from the float32 model, for the class the served answer chose.
    """

    def __init__(
        self,
        model: keras.Model,
        info: ModelInfo,
        forward: Forward | None,
        max_batch: int,
        batch_wait_s: float,
        detector: OodDetector | None = None,
        max_explanations: int = 1,
        max_decodes: int = 2,
        forward_timeout_s: float | None = None,
    ) -> None:
        self.model = model
        self.info = info
        self.image_size = info.image_size
        self.detector = detector
        self._forward = forward or traced_forward(model)
        self._batcher = RequestBatcher(self._answers, max_batch, batch_wait_s, forward_timeout_s)
        # Grad-CAM builds a probe model over the shared layers: one at a time, and at most
        # `max_explanations` admitted at once; the next is refused at once (a waiting request
        # would hold a worker thread that /health and plain /predict need).
        self._explain_lock = threading.Lock()
        self._explain_slots = threading.BoundedSemaphore(max(1, max_explanations))
        # A decode briefly holds several full-size copies of the image (up to about 50 bytes a
        # pixel): at most `max_decodes` at once bounds that memory, whatever the crowd.
        self._decode_slots = threading.BoundedSemaphore(max(1, max_decodes))
        for n in sorted({1, max_batch}):  # prepare the shapes the batcher uses most
            self._forward(np.zeros((n, self.image_size, self.image_size, 3), np.float32))

    def forward(self, batch: np.ndarray) -> np.ndarray:
        """Class probabilities (n, n_classes) for a batch of preprocessed images."""
        return self._forward(batch)

    def _answers(self, batch: np.ndarray) -> list[tuple[np.ndarray, float | None]]:
        """Each image's probabilities and out-of-distribution score (None without detector)."""
        probabilities, features = self._forward.with_features(batch)
        if self.detector is None:
            return [(p, None) for p in probabilities]
        return list(zip(probabilities, map(float, self.detector.scores(features)), strict=True))

    def batching(self) -> dict[str, Any]:
        """How requests have been grouped so far: the limits, forward passes and images."""
        return {
            "max_batch": self._batcher.max_batch,
            "max_wait_ms": self._batcher.max_wait_s * 1000.0,
            "batches": self._batcher.batches,
            "images": self._batcher.images,
            "forward_timeout_s": self._batcher.forward_timeout_s,
            "forward_timeouts": self._batcher.timeouts,
        }

    def classify(
        self,
        data: bytes,
        max_pixels: int | None = None,
        explain: bool = False,
        dicom_window: Window = DEFAULT_WINDOW,
    ) -> list[Classification]:
        """Each image of a file (one per frame of a multi-frame DICOM file): class
        probabilities (the training pipeline's preprocessing), the out-of-distribution check,
        the windowed image of a DICOM slice, and the Grad-CAM overlay of the first when
        ``explain``.

        Raises:
            UnreadableImageError: not a readable image (ImageTooLargeError: too many pixels).
            ExplanationsBusyError: ``explain`` while the allowed explanations are all running.
        """
        if not explain:
            return self._classify(data, max_pixels, False, dicom_window)
        if not self._explain_slots.acquire(blocking=False):
            raise ExplanationsBusyError("every explanation slot is taken")
        try:
            return self._classify(data, max_pixels, True, dicom_window)
        finally:
            self._explain_slots.release()

    def _classify(
        self, data: bytes, max_pixels: int | None, explain: bool, dicom_window: Window
    ) -> list[Classification]:
        with self._decode_slots:
            images = prepare_images(data, self.image_size, max_pixels, dicom_window)
        answers = self._batcher.predict_many([image.model_input for image in images])
        results = []
        for index, (image, (output, score)) in enumerate(zip(images, answers, strict=True)):
            probabilities = np.asarray(output, np.float32)
            heatmap = self._explain(image, probabilities) if explain and index == 0 else None
            is_dicom_slice = image.source != RASTER
            results.append(Classification(
                probabilities,
                check(self.detector, image.input_problem, score),
                heatmap,
                image.source,
                _png(image.rgb) if is_dicom_slice else None,
            ))  # fmt: skip
        return results

    def _explain(self, image: PreparedImage, probabilities: np.ndarray) -> bytes:
        # The gradients come from the float32 model (an int8 TFLite model has none); the class
        # explained is the one this answer chose, whatever the precision.
        with self._explain_lock:
            heatmap, _ = grad_cam(
                self.model, image.model_input, int(probabilities.argmax()), layer_name=CAM_LAYER
            )
        return _png(overlay_heatmap(image.rgb, heatmap))


def _png(rgb: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(rgb).save(buffer, format="PNG")
    return buffer.getvalue()


def load_served_model(settings: ServingSettings) -> ServedModel:
    """The model the settings name: the registry URI when set, else the model file.

    Raises:
        ModelUnavailableError: nothing to load, or it cannot be loaded or served; says what to
            do. Details (stack, credentials) go to the log, not into the message.
    """
    if settings.precision != AUTO and settings.precision not in PRECISIONS:
        raise ModelUnavailableError(
            f"{PRECISION_VARIABLE} (or inference.precision) is {settings.precision!r}; it must "
            f"be one of {', '.join((AUTO, *PRECISIONS))}."
        )
    if settings.max_batch < 1 or settings.batch_wait_ms < 0:
        raise ModelUnavailableError(
            f"CHEST_CT_MAX_BATCH must be at least 1 and CHEST_CT_BATCH_WAIT_MS at least 0; got "
            f"{settings.max_batch} and {settings.batch_wait_ms}."
        )
    try:
        validate_window(settings.dicom_window)
    except ValueError as exc:
        raise ModelUnavailableError(
            f"CHEST_CT_DICOM_WINDOW (or preprocessing.dicom_window): {exc}."
        ) from exc
    if settings.model_uri:
        return _load_from_registry(settings.model_uri, settings)
    return _load_from_file(model_files(settings), settings)


@dataclass(frozen=True)
class ModelFiles:
    """The files that describe one model file: its int8 model, its precision gate report, its
    out-of-distribution detector and the evaluation report (None where there is none to read)."""

    model: Path
    int8: Path | None
    gate: Path | None
    report: Path | None
    ood: Path | None = None


def model_files(settings: ServingSettings) -> ModelFiles:
    """The model file the settings name and the files that go with it: the catalog's, in the
    project; beside a model file named by path (by the catalog's file names), whose evaluation
    report is not the project's.

    Raises:
        ModelUnavailableError: no model path configured and no catalog to name one.
    """
    try:
        path = settings.resolved_model_path()
    except FileNotFoundError as exc:
        raise ModelUnavailableError(str(exc)) from exc
    names = (INT8_DATASET, PRECISION_GATE_DATASET, OOD_DATASET)
    companions = [settings.catalog_file(name) for name in names]
    if settings.model_path is not None:
        companions = [
            path.parent / (file.name if file else COMPANION_FILES[name])
            for name, file in zip(names, companions, strict=True)
        ]
    int8, gate, ood = companions
    report = settings.resolved_metrics_path() if settings.model_path is None else None
    return ModelFiles(path, int8, gate, report, ood)


def _precision_forward(
    model: keras.Model,
    requested: str,
    int8_model: bytes | None,
    gate: dict[str, Any] | None,
) -> tuple[Forward, dict[str, Any]]:
    """The forward pass of the precision to serve, and what /health says about it."""
    forward, served, reason = select_forward(model, requested, int8_model, gate)
    paths = (gate or {}).get("paths", {})
    info = {
        "served": served,
        "requested": requested,
        "reason": reason,
        "passed_gate": {p: bool(paths.get(p, {}).get("passed")) for p in PRECISIONS[1:]}
        if paths
        else None,
    }
    log = logger.warning if requested not in (served, AUTO) else logger.info
    log("Serving precision %s: %s", served, reason)
    return forward, info


def _read_json(path: Path | None) -> dict[str, Any] | None:
    try:
        return json.loads(path.read_text()) if path else None
    except (OSError, ValueError):
        logger.warning("Cannot read %s: treated as absent", path)
        return None


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
    return datetime.now(UTC).isoformat(timespec="seconds")


def _first_line(exc: Exception) -> str:
    text = str(exc).strip().splitlines()
    return (text[0] if text else type(exc).__name__)[:200]


def _load_from_file(files: ModelFiles, settings: ServingSettings) -> ServedModel:
    path, int8_path, gate_path = files.model, files.int8, files.gate
    if not path.is_file():
        raise ModelUnavailableError(
            f"No trained model at {path}. Train one first: `make run` (or `kedro run`) in the "
            "project folder, then restart the app; or set CHEST_CT_MODEL_PATH to a model file, "
            "or CHEST_CT_MODEL_URI to a registered model."
        )
    try:
        data = path.read_bytes()
        model = keras.saving.load_model(path, compile=False)
        image_size = servable_image_size(model)
        # The gate report names the model and int8 file it checked: a report or an int8 file
        # from another run is not used (select_forward compares their fingerprints).
        forward, precision = _precision_forward(
            model,
            settings.precision,
            int8_path.read_bytes() if int8_path and int8_path.is_file() else None,
            _read_json(gate_path if gate_path and gate_path.is_file() else None),
        )
        fingerprint = model_fingerprint(model)
        detector = _detector(files.ood, fingerprint)
        info = ModelInfo(
            name=MODEL_NAME,
            version="sha256:" + hashlib.sha256(data).hexdigest()[:12],
            source="file",
            location=str(path),
            weights=_weights_beside(path),
            image_size=image_size,
            loaded_at=_now(),
            measured=(
                measured_quality.from_metrics_file(files.report, path) if files.report else None
            ),
            precision=precision,
            fingerprint=fingerprint,
            ood_detector=_detector_info(detector),
        )
        served = _served(model, info, forward, settings, detector)
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


def _served(
    model: keras.Model,
    info: ModelInfo,
    forward: Forward,
    settings: ServingSettings,
    detector: OodDetector | None,
) -> ServedModel:
    return ServedModel(
        model,
        info,
        forward,
        settings.max_batch,
        settings.batch_wait_ms / 1000.0,
        detector,
        settings.max_explanations,
        settings.max_decodes,
        settings.forward_timeout_s,
    )


def _detector(path: Path | None, fingerprint: str) -> OodDetector | None:
    """The out-of-distribution detector in ``path`` when it was fitted on this model; None
    (logged) when it is missing, unreadable or another model's: answers then say the check
    was not made, rather than the app refusing to serve."""
    detector = None
    if path is not None and path.is_file():
        try:
            # as OodDetectorDataset loads it (that class needs Kedro, which serving has not)
            with np.load(path, allow_pickle=False) as arrays:
                detector = OodDetector.from_arrays({name: arrays[name] for name in arrays.files})
        except Exception:  # a broken file must not stop serving; the answers say it
            logger.exception("Cannot read the out-of-distribution detector %s", path)
    return usable_detector(detector, fingerprint if detector else None)


def _detector_info(detector: OodDetector | None) -> dict[str, Any] | None:
    if detector is None:
        return None
    return {
        "method": OOD_METHOD,
        "threshold": detector.threshold,
        "target_false_rejection": detector.target_false_rejection,
    }


def _load_from_registry(uri: str, settings: ServingSettings) -> ServedModel:
    # Imported here: only registry serving needs MLflow.
    import mlflow  # noqa: PLC0415

    try:
        pinned_uri, version, weights, measured = _registry_version(uri)
        with tempfile.TemporaryDirectory() as download:
            local = Path(
                mlflow.artifacts.download_artifacts(artifact_uri=pinned_uri, dst_path=download)
            )
            flavour = yaml.safe_load((local / "MLmodel").read_text())["flavors"]
            artifacts = flavour["python_function"]["artifacts"]
            # Versions name each file by its candidate's catalog entry (the run registers what
            # it evaluated); older ones by the served entry's.
            artifacts = {
                served: artifacts[candidate]
                for served, candidate in CANDIDATE_OF_SERVED.items()
                if candidate in artifacts
            } | artifacts
            model = keras.saving.load_model(local / artifacts[MODEL_DATASET]["path"], compile=False)
            # Versions registered before the precision paths or the detector existed lack them.
            int8_file, gate_file, ood_file = (
                local / artifacts[name]["path"] if name in artifacts else None
                for name in (INT8_DATASET, PRECISION_GATE_DATASET, OOD_DATASET)
            )
            forward, precision = _precision_forward(
                model,
                settings.precision,
                int8_file.read_bytes() if int8_file and int8_file.is_file() else None,
                _read_json(gate_file),
            )
            fingerprint = model_fingerprint(model)
            detector = _detector(ood_file, fingerprint)
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
            precision=precision,
            fingerprint=fingerprint,
            ood_detector=_detector_info(detector),
        )
        served = _served(model, info, forward, settings, detector)
    except Exception as exc:  # MLflow, network, file and Keras errors alike
        logger.exception("Cannot serve the registered model %s", uri)
        raise ModelUnavailableError(
            f"The registered model {uri} cannot be loaded from the MLflow registry at "
            f"{redact_url(mlflow.get_tracking_uri())} ({type(exc).__name__}; details "
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
