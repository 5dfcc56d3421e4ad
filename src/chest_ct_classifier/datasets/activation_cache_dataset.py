"""Typed bundles of arrays (the activation cache, the out-of-distribution detector) as ``.npz``
files of plain arrays: loading one runs no code (no pickle)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar, Protocol

import numpy as np
from kedro.io import AbstractDataset

from chest_ct_classifier.datasets.atomic_write import write_atomically
from chest_ct_classifier.model.activation_cache import ActivationCache
from chest_ct_classifier.model.ood import OodDetector


class _Arrays(Protocol):
    def arrays(self) -> dict[str, np.ndarray]: ...

    @classmethod
    def from_arrays(cls, arrays: dict[str, np.ndarray]) -> Any: ...


class ArraysDataset(AbstractDataset[Any, Any]):
    """Saves an object of ``kind`` (``arrays()`` / ``from_arrays()``) as one uncompressed
    ``.npz``, written to a partial file of its own in the same folder and then renamed (a killed
    run never leaves half a file); loads it with ``allow_pickle=False``, so a tampered file is
    an error, never code that runs."""

    kind: ClassVar[type[_Arrays]]

    def __init__(self, filepath: str, metadata: dict[str, Any] | None = None) -> None:
        self._filepath = Path(filepath)
        self.metadata = metadata

    def load(self) -> Any:
        with np.load(self._filepath, allow_pickle=False) as arrays:
            return self.kind.from_arrays({name: arrays[name] for name in arrays.files})

    def save(self, data: Any) -> None:
        def write(partial: Path) -> None:
            with partial.open("xb") as file:
                np.savez(file, **data.arrays())

        write_atomically(self._filepath, write)

    def _exists(self) -> bool:
        return self._filepath.is_file()

    def _describe(self) -> dict[str, Any]:
        return {"filepath": str(self._filepath), "kind": self.kind.__name__}


class ActivationCacheDataset(ArraysDataset):
    kind = ActivationCache


class OodDetectorDataset(ArraysDataset):
    kind = OodDetector
