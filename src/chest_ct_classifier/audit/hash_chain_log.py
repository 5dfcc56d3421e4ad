"""An append-only JSON-lines log whose lines are chained by hashes, safe for many threads and
processes, rotated by size without breaking the chain.

Each line is one JSON object with two fields added: ``prev``, the ``hash`` of the line before
(``GENESIS`` for the very first), and last, ``hash``: the sha256 of the line's exact bytes up to
that field (the object closed after ``prev``). Any changed byte breaks that line's own hash; a
removed, reordered or inserted line breaks the next line's ``prev``. It shows accidents and
tampering by anyone who does not recompute the whole chain; it is not a signature.

Appends take an exclusive ``flock`` on ``<log>.lock``, so lines from several gunicorn workers
never interleave and each finds the true last hash. When the file would pass ``max_bytes`` it
becomes ``<log>.1`` (older ones shift to ``.2``...; at most ``backups`` are kept) and the new file
continues the chain from the last line of the old one.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import re
import threading
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

GENESIS = "0" * 64
_CHAIN_FIELDS = ("prev", "hash")
_HASH_SUFFIX = re.compile(rb', "hash": "([0-9a-f]{64})"\}$')


def chained_line(record: Mapping[str, Any], prev: str) -> tuple[bytes, str]:
    """The line (without its newline) for ``record`` after the line hashed ``prev``, and its
    hash: sha256 of the JSON object with ``prev`` last, then that hash appended as ``hash``."""
    body = json.dumps({**record, "prev": prev}, ensure_ascii=False).encode("utf-8")
    digest = hashlib.sha256(body).hexdigest()
    return body[:-1] + f', "hash": "{digest}"}}'.encode(), digest


def _split_line(raw: bytes) -> tuple[dict[str, Any], str]:
    """The record (with ``prev``) and the hash of one line; ValueError when the hash does not
    match the line's bytes or the line is not one of this log."""
    match = _HASH_SUFFIX.search(raw)
    if match is None:
        raise KeyError("no hash")
    body = raw[: match.start()] + b"}"
    record = json.loads(body)
    if not isinstance(record, dict) or "prev" not in record:
        raise KeyError("no prev")
    digest = match.group(1).decode()
    if hashlib.sha256(body).hexdigest() != digest:
        raise ValueError("changed")
    return record, digest


class HashChainLog:
    """Appends records to ``path`` as hash-chained JSON lines."""

    def __init__(self, path: Path | str, max_bytes: int = 10 * 2**20, backups: int = 20) -> None:
        self.path = Path(path)
        self.max_bytes = max_bytes
        self.backups = backups
        self._threads = threading.Lock()

    def append(self, record: Mapping[str, Any]) -> str:
        """Write one record (JSON-serializable values; ``prev``/``hash`` are set here) and
        return its hash."""
        clean = {k: v for k, v in record.items() if k not in _CHAIN_FIELDS}
        clean = json.loads(json.dumps(clean, default=str))  # plain JSON values only
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self._threads, self._locked():
            line, digest = chained_line(clean, self._last_hash())
            data = line + b"\n"
            size = self._size()
            if size and size + len(data) > self.max_bytes:
                self._rotate()
            fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
            try:
                view = memoryview(data)
                while view:
                    view = view[os.write(fd, view) :]
            finally:
                os.close(fd)
        return digest

    def files(self) -> list[Path]:
        """The log's files, oldest first (rotated ones, then the current one)."""
        return [*reversed(rotated_files(self.path)), self.path]

    @contextmanager
    def _locked(self) -> Iterator[None]:
        with open(self.path.with_name(self.path.name + ".lock"), "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)

    def _size(self) -> int:
        try:
            return self.path.stat().st_size
        except FileNotFoundError:
            return 0

    def _last_hash(self) -> str:
        for path in (self.path, *rotated_files(self.path)[:1]):
            last = _last_line(path)
            if last is not None:
                return _split_line(last)[1]
        return GENESIS

    def _rotate(self) -> None:
        for index in range(self.backups - 1, 0, -1):
            older = self.path.with_name(f"{self.path.name}.{index}")
            if older.exists():
                os.replace(older, self.path.with_name(f"{self.path.name}.{index + 1}"))
        os.replace(self.path, self.path.with_name(f"{self.path.name}.1"))


def rotated_files(path: Path) -> list[Path]:
    """``<log>.1``, ``<log>.2``... that exist, newest first."""
    found = []
    index = 1
    while (candidate := path.with_name(f"{path.name}.{index}")).exists():
        found.append(candidate)
        index += 1
    return found


def _last_line(path: Path) -> bytes | None:
    try:
        with open(path, "rb") as file:
            file.seek(0, os.SEEK_END)
            end = file.tell()
            position, tail = end, b""
            while position > 0:
                step = min(65536, position)
                position -= step
                file.seek(position)
                tail = file.read(step) + tail
                lines = tail.rstrip(b"\n").split(b"\n")
                if len(lines) > 1 or position == 0:
                    return lines[-1] if lines[-1] else None
    except FileNotFoundError:
        return None
    return None


@dataclass(frozen=True)
class ChainReport:
    """What ``verify`` found: lines checked, and the first problem (None when intact)."""

    lines: int
    files: int
    problem: str | None
    starts_after_rotation: bool

    @property
    def ok(self) -> bool:
        return self.problem is None


def verify(path: Path | str) -> ChainReport:
    """Check the chain of ``path`` and its rotated files, oldest first; the first broken or
    missing link is named by file and line number (1-based)."""
    path = Path(path)
    files = [*reversed(rotated_files(path)), path] if path.exists() else []
    if not files:
        return ChainReport(0, 0, f"{path}: no such log", False)
    expected: str | None = None
    count, starts_after_rotation = 0, False

    def broken(where: str, why: str) -> ChainReport:
        return ChainReport(count, len(files), f"{where}: {why}", starts_after_rotation)

    for file in files:
        with open(file, "rb") as handle:
            for number, raw in enumerate(handle, 1):
                where = f"{file}:{number}"
                count += 1
                try:
                    record, digest = _split_line(raw.rstrip(b"\n"))
                except ValueError as error:
                    if str(error) == "changed":
                        return broken(where, "the line was changed (its hash does not match it)")
                    return broken(where, "not a line of this log (unreadable JSON)")
                except KeyError:
                    return broken(where, "not a line of this log (no prev or hash)")
                if expected is None:
                    # the oldest line kept: the chain starts here, or after rotated-away files
                    starts_after_rotation = record["prev"] != GENESIS
                elif record["prev"] != expected:
                    return broken(
                        where,
                        "broken link (the line before it is missing, changed or out of order)",
                    )
                expected = digest
    return ChainReport(count, len(files), None, starts_after_rotation)
