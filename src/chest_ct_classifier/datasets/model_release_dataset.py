"""The served release as a Kedro dataset: saving promotes the evaluated candidate."""

from __future__ import annotations

import json
from typing import Any

from kedro.io import AbstractDataset

from chest_ct_classifier.registry.release import RELEASE_NAME, ReleaseFolder, promote


class ModelReleaseDataset(AbstractDataset[dict, dict]):
    """``save(release)`` serves the candidate files of ``folders`` (each ``{candidate, served,
    files}``) all at once, keeping the replaced ones in ``previous/`` (registry.release);
    ``load()`` is the ``release.json`` of what is served now."""

    def __init__(self, folders: list[dict[str, Any]], metadata: dict[str, Any] | None = None):
        self._folders = [ReleaseFolder.from_config(folder) for folder in folders]
        self.metadata = metadata

    def load(self) -> dict:
        return json.loads((self._folders[0].served / RELEASE_NAME).read_text())

    def save(self, data: dict) -> None:
        promote(self._folders, data)

    def _exists(self) -> bool:
        return (self._folders[0].served / RELEASE_NAME).is_file()

    def _describe(self) -> dict[str, Any]:
        return {"folders": [str(f.candidate) + " -> " + str(f.served) for f in self._folders]}
