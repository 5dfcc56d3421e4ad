"""Appends a record to the hash-chained audit log (the app's log: one chain for both)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from kedro.io import AbstractDataset, DatasetError

from chest_ct_classifier.audit.hash_chain_log import HashChainLog

OFF = "off"


class AuditLogDataset(AbstractDataset[dict[str, Any], dict[str, Any]]):
    """Write-only: each save appends one line. ``filepath: off`` keeps no log (as
    ``CHEST_CT_AUDIT_LOG=off`` does for the app)."""

    def __init__(self, filepath: str, metadata: dict[str, Any] | None = None) -> None:
        self._filepath = filepath
        self._log = None if filepath.strip().lower() == OFF else HashChainLog(Path(filepath))
        self.metadata = metadata

    def load(self) -> dict[str, Any]:
        raise DatasetError("the audit log is written, not read: `chest-ct audit verify` checks it")

    def save(self, data: dict[str, Any]) -> None:
        if self._log is not None:
            self._log.append(data)

    def _exists(self) -> bool:
        return self._log is not None and self._log.path.is_file()

    def _describe(self) -> dict[str, Any]:
        return {"filepath": self._filepath}
