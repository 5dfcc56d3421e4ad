"""What the app holds between requests: settings, the served model, training runs."""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass, field
from typing import Any

from chest_ct_classifier.registry.release import complete_interrupted_promotion
from chest_ct_classifier.serving.attempt_limit import AttemptLimiter
from chest_ct_classifier.serving.served_model import (
    ModelUnavailableError,
    ServedModel,
    load_served_model,
)
from chest_ct_classifier.serving.settings import ServingSettings
from chest_ct_classifier.serving.training_jobs import TrainingJobs

logger = logging.getLogger(__name__)


@dataclass
class AppState:
    settings: ServingSettings
    model: ServedModel | None = None
    model_error: str | None = None
    jobs: TrainingJobs | None = None
    training_refused: str | None = None
    """Why /train stays disabled although a token was set (too short), for its 403."""
    train_attempts: AttemptLimiter = field(default_factory=AttemptLimiter)
    started: float = field(default_factory=time.monotonic)
    _switch_lock: threading.Lock = field(default_factory=threading.Lock)

    def load_model(self) -> None:
        """Load the configured model at start; without one the app still answers, with 503s.
        A promotion that a killed run left half done is finished first (registry.release): the
        files read are all of one release."""
        folders = self.settings.release_folders()
        if folders and self.settings.model_path is None:
            try:
                complete_interrupted_promotion(folders)
            except OSError:  # a read-only mount: serve what is there
                logger.exception("Cannot finish the interrupted promotion")
        try:
            self.model = load_served_model(self.settings)
            self.model_error = None
        except ModelUnavailableError as exc:
            self.model, self.model_error = None, str(exc)
            logger.warning("No model served: %s", exc)

    def switch_model(self) -> tuple[dict[str, Any], str]:
        """Load the configured model again (after training) and serve it from now on; returns
        its description and what changed.

        The new model is fully loaded before the reference changes; requests already holding
        the old one finish on it. A failed load raises and keeps the old model.
        """
        with self._switch_lock:
            previous = self.model.info.version if self.model else None
            model = load_served_model(self.settings)
            self.model, self.model_error = model, None
        version = model.info.version
        if version == previous:
            message = (
                f"the run finished, but the configured model is unchanged (version {version}): "
                "a registered run whose validation macro-F1 does not beat the champion's does "
                "not move the champion alias"
            )
        else:
            message = f"the app now serves the new model (version {version})"
        logger.info("Model switch: %s", message)
        return model.info.as_dict(), message
