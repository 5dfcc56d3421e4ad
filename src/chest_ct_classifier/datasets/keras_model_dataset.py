"""A Keras 3 model saved as a single ``.keras`` file."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import keras
from kedro.io import AbstractDataset, DatasetError


class KerasModelDataset(AbstractDataset[keras.Model, keras.Model]):
    """Loads (uncompiled) and saves a Keras model; saves are atomic, so an interrupted run
    never leaves a truncated model where a good one was."""

    def __init__(self, filepath: str, metadata: dict[str, Any] | None = None) -> None:
        if not filepath.endswith(".keras"):
            raise DatasetError(f"KerasModelDataset needs a '.keras' file path, got {filepath}")
        self._filepath = Path(filepath)
        self.metadata = metadata

    def load(self) -> keras.Model:
        if not self._filepath.is_file():
            raise DatasetError(f"No model at {self._filepath}: train one first with `kedro run`")
        return keras.saving.load_model(self._filepath, compile=False)

    def save(self, data: keras.Model) -> None:
        self._filepath.parent.mkdir(parents=True, exist_ok=True)
        partial = self._filepath.with_name(f".{self._filepath.stem}.partial.keras")
        data.save(partial)
        os.replace(partial, self._filepath)

    def _exists(self) -> bool:
        return self._filepath.is_file()

    def _describe(self) -> dict[str, Any]:
        return {"filepath": str(self._filepath)}
