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

PREFIX = "CHEST_CT_"
CATALOG_FILE = Path("conf") / "base" / "catalog.yml"
MODEL_DATASET = "trained_model"
"""The catalog entry of the calibrated classifier: what evaluation, inference and serving use."""
METRICS_DATASET = "metrics"
"""The catalog entry of the evaluation report (an MLflow artifact wrapping a JSON file)."""

DEFAULT_TRAIN_COMMAND = (sys.executable, "-m", "kedro", "run")

RESEARCH_NOTICE = (
    "Research tool, not a diagnosis. The model knows only four classes (adenocarcinoma, large "
    "cell carcinoma, squamous cell carcinoma, normal) and was trained on one small public "
    "dataset of chest CT images; it cannot tell whether an image is a chest CT slice at all, "
    "and every image gets one of the four answers. Do not use it for clinical decisions."
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
    max_image_pixels: int = 12_000_000
    """A CT slice is about 0.3 megapixels; decoding costs over 13 bytes per pixel per request."""
    uncertain_below: float = 0.5
    """An answer whose top probability is below this is flagged ``uncertain``."""
    cors_origins: tuple[str, ...] = ()
    train_token: str | None = None
    """Bearer token for ``POST /train``; None disables training through the API."""
    train_command: tuple[str, ...] = DEFAULT_TRAIN_COMMAND

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
            max_image_pixels=int(get("MAX_IMAGE_PIXELS") or 12_000_000),
            uncertain_below=float(get("UNCERTAIN_BELOW") or 0.5),
            cors_origins=tuple(
                origin.strip()
                for origin in (get("CORS_ORIGINS") or "").split(",")
                if origin.strip()
            ),
            train_token=get("TRAIN_TOKEN"),
            train_command=tuple(shlex.split(get("TRAIN_COMMAND") or "")) or DEFAULT_TRAIN_COMMAND,
        )

    def resolved_model_path(self) -> Path:
        """The model file to serve: the setting, else the catalog's ``trained_model`` filepath;
        relative paths are relative to the project."""
        path = self.model_path or catalog_model_path(self.project_path)
        return path if path.is_absolute() else self.project_path / path

    def resolved_metrics_path(self) -> Path | None:
        """The evaluation report the catalog names, in the project; None when it names none."""
        try:
            entry = _catalog(self.project_path)[METRICS_DATASET]
            path = Path(entry.get("dataset", entry)["filepath"])
        except (OSError, yaml.YAMLError, KeyError, TypeError, AttributeError):
            return None
        return path if path.is_absolute() else self.project_path / path


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
