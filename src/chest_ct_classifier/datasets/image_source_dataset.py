"""A folder, zip archive or URL of images, loaded as a dict of lazy file readers."""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

from kedro.io import AbstractDataset, DatasetError

from chest_ct_classifier.images.sources import SourceError, list_files, materialize_source
from chest_ct_classifier.redaction import redact_url


def _read(path: Path) -> bytes:
    return path.read_bytes()


class ImageSourceDataset(AbstractDataset[None, dict[str, Callable[[], bytes]]]):
    """Read-only: every file under ``source`` as ``{relative posix path: () -> bytes}``.

    ``source`` is a local folder, a local zip, a single file, or an http(s) URL to a zip. URLs
    are downloaded and zips extracted (safely, once) under ``workdir``; an archive must match
    ``sha256`` when one is given; archives over ``max_members`` files or
    ``max_uncompressed_bytes`` are refused, and downloads over ``max_download_bytes``. A URL's
    credentials are used to download and shown nowhere (``redact_url``). Paths are relative to
    the folder or to the archive root, e.g. ``Data/valid/normal/6 - Copy.png``. Reading is lazy,
    like Kedro's PartitionedDataset: nodes call each reader when they need the bytes.
    """

    def __init__(
        self,
        source: str,
        workdir: str = "data/01_raw",
        max_members: int = 100_000,
        max_uncompressed_bytes: int = 10 * 1024**3,
        timeout_s: float = 30.0,
        sha256: str | None = None,
        max_download_bytes: int = 10 * 1024**3,
        metadata: dict[str, Any] | None = None,
    ) -> None:
        self._source = str(source)
        self._workdir = workdir
        self._limits = {
            "max_members": max_members,
            "max_uncompressed_bytes": max_uncompressed_bytes,
            "timeout_s": timeout_s,
            "sha256": sha256,
            "max_download_bytes": max_download_bytes,
        }
        self.metadata = metadata

    def load(self) -> dict[str, Callable[[], bytes]]:
        try:
            root = materialize_source(self._source, self._workdir, **self._limits)
        except SourceError as exc:
            raise DatasetError(str(exc)) from exc
        if root.is_file():
            return {root.name: partial(_read, root)}
        return {relative: partial(_read, root / relative) for relative in list_files(root)}

    def save(self, data: None) -> None:
        raise DatasetError("ImageSourceDataset is read-only")

    def _exists(self) -> bool:
        return True

    def _describe(self) -> dict[str, Any]:
        return {"source": redact_url(self._source), "workdir": self._workdir}
