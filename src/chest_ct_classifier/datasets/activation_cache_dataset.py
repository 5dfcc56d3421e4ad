"""The activation cache as an ``.npz`` of plain arrays: loading it runs no code (no pickle)."""

from __future__ import annotations

import os
import uuid
from pathlib import Path
from typing import Any

import numpy as np
from kedro.io import AbstractDataset

from chest_ct_classifier.model.activation_cache import ActivationCache


class ActivationCacheDataset(AbstractDataset[ActivationCache, ActivationCache]):
    """Saves an ActivationCache as one uncompressed ``.npz`` (written to a temporary file in the
    same folder, then renamed: a killed run never leaves half a cache); loads it with
    ``allow_pickle=False``, so a tampered file is an error, never code that runs."""

    def __init__(self, filepath: str, metadata: dict[str, Any] | None = None) -> None:
        self._filepath = Path(filepath)
        self.metadata = metadata

    def load(self) -> ActivationCache:
        with np.load(self._filepath, allow_pickle=False) as arrays:
            return ActivationCache.from_arrays({name: arrays[name] for name in arrays.files})

    def save(self, data: ActivationCache) -> None:
        self._filepath.parent.mkdir(parents=True, exist_ok=True)
        # a name of its own (two runs never share a partial file), created with the usual
        # permissions (mkstemp's would be private to this user)
        partial = self._filepath.with_name(f".{self._filepath.name}.{uuid.uuid4().hex}.part")
        try:
            with partial.open("xb") as file:
                np.savez(file, **data.arrays())
            os.replace(partial, self._filepath)
        except BaseException:
            partial.unlink(missing_ok=True)
            raise

    def _exists(self) -> bool:
        return self._filepath.is_file()

    def _describe(self) -> dict[str, Any]:
        return {"filepath": str(self._filepath)}
