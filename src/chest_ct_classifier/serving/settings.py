"""What the web app is told by its environment: where the model is, limits, CORS, training.

Every setting is an environment variable (a container is configured that way); the defaults
serve the model that ``kedro run`` writes, from the project folder the app starts in.
"""

from __future__ import annotations

import os
import shlex
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from chest_ct_classifier.registry.release import RELEASE_DATASET, ReleaseFolder, served_path

PREFIX = "CHEST_CT_"
CATALOG_FILE = Path("conf") / "base" / "catalog.yml"
MODEL_DATASET = "trained_model"
"""The catalog entry of the trained classifier: what evaluation, inference and serving use."""
METRICS_DATASET = "metrics"
"""The catalog entry of the evaluation report (an MLflow artifact wrapping a JSON file)."""
INT8_DATASET = "int8_model"
"""The catalog entry of the int8 convolutions (a TFLite file) the int8 path reads."""
PRECISION_GATE_DATASET = "precision_gate"
"""The catalog entry of the precision gate report: which reduced precisions may be served."""
OOD_DATASET = "ood_detector"
"""The catalog entry of the out-of-distribution detector fitted on the model's features."""
COMPANION_FILES = {
    INT8_DATASET: "classifier_int8.tflite",
    PRECISION_GATE_DATASET: "precision_gate.json",
    OOD_DATASET: "ood_detector.npz",
}
"""The file names of the files that go with a model, as the catalog names them: looked for
beside a model named by path when there is no catalog to read them from."""
PARAMETERS_FILE = Path("conf") / "base" / "parameters_inference.yml"
PREPROCESSING_FILE = Path("conf") / "base" / "parameters_preprocessing.yml"
PRECISION_VARIABLE = "MODEL_PRECISION"
"""Overrides ``inference.precision`` (the issue's name, without the ``CHEST_CT_`` prefix)."""

DEFAULT_TRAIN_COMMAND = (sys.executable, "-m", "kedro", "run")

RESEARCH_NOTICE = (
    "Research tool, not a diagnosis. The model knows only four classes (adenocarcinoma, large "
    "cell carcinoma, squamous cell carcinoma, normal) and was trained on one small public "
    "dataset of chest CT images. Images unlike the chest CT slices it learned are refused "
    "without an answer, but that check is statistical: it can let through an image that is "
    "not a chest CT slice, and refuse one that is. Do not use it for clinical decisions."
)


@dataclass(frozen=True)
class ServingSettings:
    """The app's settings; :meth:`from_environment` reads them from ``CHEST_CT_*`` variables."""

    project_path: Path = field(default_factory=Path.cwd)
    model_path: Path | None = None
    """The .keras model; None: the catalog's ``trained_model`` file in the project."""
    model_uri: str | None = None
    """An MLflow model URI (``models:/chest-ct-classifier@champion``): load from the registry."""
    max_upload_bytes: int = 10 * 1024 * 1024
    max_image_pixels: int = 4_000_000
    """A CT slice is about 0.3 megapixels (512 x 512; the archive's largest about 1.2 MP):
    4 MP leaves a wide margin, while decoding costs over 13 bytes per pixel per request."""
    max_explanations: int = 1
    """Grad-CAM explanations computed at once; the next one gets 429 at once."""
    forward_timeout_s: float = 30.0
    """A forward pass running longer fails its requests with 503, and a new batching thread
    serves the rest (a batch of 16 takes a few seconds in fp32 on a small CPU)."""
    max_decodes: int = 2
    """Images decoded at once; the next waits for a turn (decoding is brief but, for a large
    image, memory-hungry)."""
    uncertain_below: float = 0.5
    """An answer whose top probability is below this is flagged ``uncertain``
    (``inference.uncertain_below``, as batch inference)."""
    cors_origins: tuple[str, ...] = ()
    train_token: str | None = None
    """Bearer token for ``POST /train``; None disables training through the API."""
    train_command: tuple[str, ...] = DEFAULT_TRAIN_COMMAND
    precision: str = "auto"
    """auto, fp32, bf16 or int8: served only as far as the precision gate allows."""
    max_batch: int = 16
    """Concurrent requests answered by one forward pass, at most."""
    batch_wait_ms: float = 5.0
    """How long the first request of a batch waits for others to join it."""
    dicom_window: str | tuple[float, float] = "lung"
    """How DICOM slices are windowed: ``preprocessing.dicom_window`` of the project (the window
    the model was trained with), or ``CHEST_CT_DICOM_WINDOW`` (``lung``, ``mediastinum``,
    ``file`` or ``level,width``)."""
    audit_log: Path | None = None
    """The hash-chained audit log of /predict answers; None: none kept. From the environment:
    ``CHEST_CT_AUDIT_LOG`` (``off`` disables it), by default ``logs/audit.jsonl`` in the
    project."""

    @classmethod
    def from_environment(cls, environ: Mapping[str, str] | None = None) -> ServingSettings:
        env = os.environ if environ is None else environ

        def get(name: str) -> str | None:
            value = env.get(PREFIX + name, "").strip()
            return value or None

        project_path = Path(get("PROJECT_PATH") or Path.cwd())
        model_path = get("MODEL_PATH")
        return cls(
            project_path=project_path,
            model_path=Path(model_path) if model_path else None,
            model_uri=get("MODEL_URI"),
            max_upload_bytes=int(float(get("MAX_UPLOAD_MB") or 10) * 1024 * 1024),
            max_image_pixels=int(get("MAX_IMAGE_PIXELS") or 4_000_000),
            max_explanations=int(get("MAX_EXPLANATIONS") or 1),
            max_decodes=int(get("MAX_DECODES") or 2),
            forward_timeout_s=float(get("FORWARD_TIMEOUT_S") or 30.0),
            uncertain_below=float(
                get("UNCERTAIN_BELOW")
                or configured_inference(project_path, "uncertain_below", "0.5")
            ),
            cors_origins=tuple(
                origin.strip()
                for origin in (get("CORS_ORIGINS") or "").split(",")
                if origin.strip()
            ),
            train_token=get("TRAIN_TOKEN"),
            train_command=tuple(shlex.split(get("TRAIN_COMMAND") or "")) or DEFAULT_TRAIN_COMMAND,
            precision=(
                env.get(PRECISION_VARIABLE, "").strip()
                or configured_inference(project_path, "precision", "auto")
            ),
            max_batch=int(get("MAX_BATCH") or 16),
            batch_wait_ms=float(get("BATCH_WAIT_MS") or 5.0),
            audit_log=audit_log_path(get("AUDIT_LOG"), project_path),
            dicom_window=dicom_window_setting(get("DICOM_WINDOW"), project_path),
        )

    def resolved_model_path(self) -> Path:
        """The model file to serve: the setting, else the catalog's ``trained_model`` filepath;
        relative paths are relative to the project."""
        path = self.model_path or catalog_model_path(self.project_path)
        return path if path.is_absolute() else self.project_path / path

    def resolved_metrics_path(self) -> Path | None:
        """The evaluation report the catalog names, in the project; None when it names none."""
        return self.catalog_file(METRICS_DATASET)

    def catalog_file(self, dataset: str) -> Path | None:
        """The served file of a catalog entry (or of the dataset an MLflow artifact entry
        wraps), in the project: where the release serves it when the entry is a candidate
        (``metrics``: the evaluated release's report, not the run under way's); None when the
        catalog names none."""
        try:
            entry = _catalog(self.project_path)[dataset]
            path = Path(entry.get("dataset", entry)["filepath"])
        except (OSError, yaml.YAMLError, KeyError, TypeError, AttributeError):
            return None
        path = path if path.is_absolute() else self.project_path / path
        return served_path(path, self.release_folders())

    def release_folders(self) -> list[ReleaseFolder]:
        """The catalog's ``model_release`` folders (candidate and served), in the project."""
        try:
            folders = _catalog(self.project_path)[RELEASE_DATASET]["folders"]
            return [ReleaseFolder.from_config(f, self.project_path) for f in folders]
        except (OSError, yaml.YAMLError, KeyError, TypeError, AttributeError):
            return []


DEFAULT_AUDIT_LOG = Path("logs") / "audit.jsonl"


def audit_log_path(setting: str | None, project_path: Path) -> Path | None:
    """Where answers are audited: ``off`` means nowhere; relative paths are in the project."""
    if setting and setting.lower() == "off":
        return None
    path = Path(setting) if setting else DEFAULT_AUDIT_LOG
    return path if path.is_absolute() else project_path / path


def configured_inference(project_path: Path, key: str, default: str) -> str:
    """``inference.<key>`` of the project's parameters; ``default`` when it has none."""
    return str(_parameter(project_path / PARAMETERS_FILE, "inference", key, default))


def _parameter(path: Path, block: str, key: str, default: object) -> object:
    try:
        return yaml.safe_load(path.read_text())[block][key]
    except (OSError, yaml.YAMLError, KeyError, TypeError):
        return default


def dicom_window_setting(setting: str | None, project_path: Path) -> str | tuple[float, float]:
    """The DICOM window: ``setting`` (a name, or ``level,width``), else the project's
    ``preprocessing.dicom_window``, else ``lung``; not checked here (the app refuses to start
    on a bad one, saying so)."""
    if setting is None:
        value = _parameter(project_path / PREPROCESSING_FILE, "preprocessing", "dicom_window",
                           "lung")  # fmt: skip
        return tuple(value) if isinstance(value, list) else str(value)
    if "," in setting:
        level, _, width = setting.partition(",")
        try:
            return (float(level), float(width))
        except ValueError:
            return setting
    return setting


def _catalog(project_path: Path) -> dict:
    return yaml.safe_load((project_path / CATALOG_FILE).read_text())


def catalog_model_path(project_path: Path) -> Path:
    """``filepath`` of the catalog's ``trained_model`` entry (the file ``kedro run`` writes)."""
    try:
        return Path(_catalog(project_path)[MODEL_DATASET]["filepath"])
    except (OSError, yaml.YAMLError, KeyError, TypeError) as exc:
        raise FileNotFoundError(
            f"no model path configured: set {PREFIX}MODEL_PATH, or run the app in the project "
            f"folder whose {CATALOG_FILE} names the {MODEL_DATASET!r} file ({exc})"
        ) from exc
