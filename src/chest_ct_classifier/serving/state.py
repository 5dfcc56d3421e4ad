"""What the app holds between requests: settings, the served model, training runs."""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass, field
from typing import Any

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
    started: float = field(default_factory=time.monotonic)
    _switch_lock: threading.Lock = field(default_factory=threading.Lock)

    def load_model(self) -> None:
        """Load the configured model at start; without one the app still answers, with 503s."""
        try:
            self.model = load_served_model(self.settings)
            self.model_error = None
        except ModelUnavailableError as exc:
            self.model, self.model_error = None, str(exc)
            logger.warning("No model served: %s", exc)

    def switch_model(self) -> dict[str, Any]:
        """Load the configured model again (after training) and serve it from now on.

        The new model is fully loaded before the reference changes; requests already holding
        the old one finish on it. A failed load raises and keeps the old model.
        """
        with self._switch_lock:
            model = load_served_model(self.settings)
            self.model, self.model_error = model, None
        logger.info("Switched to model %s", model.info.version)
        return model.info.as_dict()
