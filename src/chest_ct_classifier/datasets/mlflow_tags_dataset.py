"""Tags on the active MLflow run, for facts a reader filters runs by (e.g. the weights used)."""

from __future__ import annotations

import logging
from typing import Any

import mlflow
from kedro.io import AbstractDataset, DatasetError

logger = logging.getLogger(__name__)


class MlflowTagsDataset(AbstractDataset[dict[str, Any], dict[str, str]]):
    """Saves a dict as tags of the active MLflow run; loads the active run's tags back."""

    def __init__(self, prefix: str = "", metadata: dict[str, Any] | None = None) -> None:
        self._prefix = prefix
        self.metadata = metadata

    def save(self, data: dict[str, Any]) -> None:
        run = mlflow.active_run()
        if run is None:
            # kedro-mlflow opens a run for tracked pipelines; without one there is nothing to tag.
            logger.info("No active MLflow run: tags not logged (%s)", data)
            return
        mlflow.set_tags(
            {f"{self._prefix}{k}": "" if v is None else str(v) for k, v in data.items()}
        )

    def load(self) -> dict[str, str]:
        run = mlflow.active_run()
        if run is None:
            raise DatasetError("No active MLflow run to read tags from")
        tags = mlflow.get_run(run.info.run_id).data.tags
        return {k[len(self._prefix) :]: v for k, v in tags.items() if k.startswith(self._prefix)}

    def _describe(self) -> dict[str, Any]:
        return {"prefix": self._prefix}
