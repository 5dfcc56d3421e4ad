"""A file's raw bytes, unchanged: images are copied, never re-encoded."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from kedro.io import AbstractDataset

from chest_ct_classifier.datasets.atomic_write import write_atomically


class BytesDataset(AbstractDataset[bytes, bytes]):
    """Loads and saves a local file's bytes; saves are atomic
    (``write_atomically``)."""

    def __init__(self, filepath: str, metadata: dict[str, Any] | None = None) -> None:
        self._filepath = Path(filepath)
        self.metadata = metadata

    def load(self) -> bytes:
        return self._filepath.read_bytes()

    def save(self, data: bytes) -> None:
        write_atomically(self._filepath, lambda partial: partial.write_bytes(data))

    def _exists(self) -> bool:
        return self._filepath.is_file()

    def _describe(self) -> dict[str, Any]:
        return {"filepath": str(self._filepath)}
