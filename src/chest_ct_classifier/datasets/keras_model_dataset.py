"""A Keras 3 model saved as a single ``.keras`` file."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import keras
from kedro.io import AbstractDataset, DatasetError

from chest_ct_classifier.datasets.atomic_write import write_atomically

_SHARED_CLASSES: dict[type, type] = {}


def share_on_deepcopy(model: keras.Model) -> keras.Model:
    """Make ``copy.deepcopy(model)`` return ``model`` itself (the model must stay read-only).

    kedro-mlflow's served pipeline deep-copies its catalog on every prediction, the loaded
    model included: for VGG16 (59 MB of weights) that costs more than the prediction.
    """
    cls = type(model)
    if "__deepcopy__" in vars(cls):  # shared already
        return model
    if cls not in _SHARED_CLASSES:
        # Same name and module as the original class: saving the model is unchanged, and
        # pickling goes through the original class (the subclass cannot be found by name).
        _SHARED_CLASSES[cls] = type(
            cls.__name__,
            (cls,),
            {
                "__deepcopy__": lambda self, memo: self,
                "__reduce__": lambda self: (cls._unpickle_model, cls.__reduce__(self)[1]),
                "__module__": cls.__module__,
            },
        )
    model.__class__ = _SHARED_CLASSES[cls]
    return model


class KerasModelDataset(AbstractDataset[keras.Model, keras.Model]):
    """Loads (uncompiled) and saves a Keras model; saves are atomic, so an interrupted run
    never leaves a truncated model where a good one was.

    With ``shared_on_deepcopy`` the loaded model is not copied by ``copy.deepcopy`` (see
    :func:`share_on_deepcopy`); only for models that are used, never changed.
    """

    def __init__(
        self,
        filepath: str,
        shared_on_deepcopy: bool = False,
        metadata: dict[str, Any] | None = None,
    ) -> None:
        if not filepath.endswith(".keras"):
            raise DatasetError(f"KerasModelDataset needs a '.keras' file path, got {filepath}")
        self._filepath = Path(filepath)
        self._shared = shared_on_deepcopy
        self.metadata = metadata

    def load(self) -> keras.Model:
        if not self._filepath.is_file():
            raise DatasetError(f"No model at {self._filepath}: train one first with `kedro run`")
        model = keras.saving.load_model(self._filepath, compile=False)
        return share_on_deepcopy(model) if self._shared else model

    def save(self, data: keras.Model) -> None:
        write_atomically(self._filepath, data.save, suffix=".keras")

    def _exists(self) -> bool:
        return self._filepath.is_file()

    def _describe(self) -> dict[str, Any]:
        return {"filepath": str(self._filepath), "shared_on_deepcopy": self._shared}
