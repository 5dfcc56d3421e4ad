"""Which model files are served: a run writes a candidate; only a run that evaluated it promotes
it, all files at once, keeping the files it replaces beside them.

A run writes the model and its reports into candidate folders (``data/06_models/candidate``,
``data/08_reporting/candidate``); the served files (``data/06_models/classifier.keras``,
``data/08_reporting/metrics.json``...) change only in :func:`promote`, after evaluation. A run
killed or failed before that (at calibration, during evaluation, in ``dvc repro`` or ``/train``)
leaves the served model and its reports as they were.

:func:`promote` copies every candidate file beside its served file under a name of its own,
writes a journal naming them, then moves each over its served file (the file it replaces is
hard-linked into ``previous/`` first), and removes the journal. A process killed among those
moves (milliseconds) leaves the journal: :func:`complete_interrupted_promotion`, called before
the served files are read (app start, the next promotion), finishes the moves, so that readers
never see the files of two models. Standard library only: the serving image calls it too.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import uuid
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

logger = logging.getLogger(__name__)

CANDIDATE_OF_SERVED = {
    "trained_model": "candidate_model",
    "int8_model": "candidate_int8_model",
    "precision_gate": "candidate_precision_gate",
    "ood_detector": "candidate_ood_detector",
}
"""The catalog entries of the served model's files, and of the candidates a run writes (and
MLflow registers, under these names)."""
RELEASE_DATASET = "model_release"
"""The catalog entry of the release: which candidate files are served from where."""
JOURNAL_NAME = ".promotion-journal.json"
PREVIOUS_FOLDER = "previous"
RELEASE_NAME = "release.json"
"""Written into the first served folder with each promotion: what was promoted, and when."""


@dataclass(frozen=True)
class ReleaseFolder:
    """Files of one candidate folder and the folder they are served from."""

    candidate: Path
    served: Path
    files: tuple[str, ...]

    @classmethod
    def from_config(cls, config: Mapping[str, object], root: Path = Path()) -> ReleaseFolder:
        return cls(
            root / str(config["candidate"]),
            root / str(config["served"]),
            tuple(str(name) for name in config["files"]),  # type: ignore[union-attr]
        )


def served_path(path: Path, folders: Iterable[ReleaseFolder]) -> Path:
    """Where the file a run writes at ``path`` (a candidate) is served from; ``path`` itself
    when it is not a released file."""
    for folder in folders:
        if path.parent == folder.candidate and path.name in folder.files:
            return folder.served / path.name
    return path


def journal_path(folders: list[ReleaseFolder]) -> Path:
    return folders[0].served / JOURNAL_NAME


def promote(folders: list[ReleaseFolder], release: Mapping[str, object]) -> list[Path]:
    """Serve the candidate files: all of them at once, the replaced ones kept in ``previous/``
    beside them; ``release`` (what is promoted) is written as ``release.json`` with them.

    Raises:
        FileNotFoundError: a candidate file is missing (nothing is changed then).
    """
    complete_interrupted_promotion(folders)
    missing = [f.candidate / n for f in folders for n in f.files if not (f.candidate / n).is_file()]
    if missing:
        raise FileNotFoundError(f"cannot promote: candidate files missing: {missing}")
    token = uuid.uuid4().hex
    moves: list[tuple[str, str]] = []
    for folder in folders:
        folder.served.mkdir(parents=True, exist_ok=True)
        for name in folder.files:
            incoming = folder.served / f".{name}.{token}.incoming"
            shutil.copyfile(folder.candidate / name, incoming)
            moves.append((str(incoming), str(folder.served / name)))
    record = folders[0].served / f".{RELEASE_NAME}.{token}.incoming"
    record.write_text(json.dumps(dict(release), indent=2, sort_keys=True))
    moves.append((str(record), str(folders[0].served / RELEASE_NAME)))
    for incoming, _ in moves:
        _fsync(Path(incoming))
    journal = journal_path(folders)
    staged = journal.with_name(f"{journal.name}.{token}")
    staged.write_text(json.dumps({"moves": moves}))
    _fsync(staged)
    os.replace(staged, journal)  # from here on the promotion completes, even after a kill
    _complete(journal)
    logger.info("Promoted the evaluated candidate: %d files now served", len(moves))
    return [Path(target) for _, target in moves]


def complete_interrupted_promotion(folders: list[ReleaseFolder]) -> bool:
    """Finish a promotion a killed process left half done, and remove the copies a process
    killed before its journal left behind; True when there was one to finish."""
    journal = journal_path(folders)
    finished = journal.is_file()
    if finished:
        logger.warning("Finishing a promotion that was interrupted (%s)", journal)
        _complete(journal)
    for folder in folders:
        for leftover in folder.served.glob(".*.incoming"):
            leftover.unlink(missing_ok=True)
        for leftover in folder.served.glob(f"{JOURNAL_NAME}.*"):
            leftover.unlink(missing_ok=True)
    return finished


def _complete(journal: Path) -> None:
    for incoming, target in json.loads(journal.read_text())["moves"]:
        incoming_path, target_path = Path(incoming), Path(target)
        if not incoming_path.exists():
            continue  # moved before the interruption
        if target_path.exists():
            previous = target_path.parent / PREVIOUS_FOLDER / target_path.name
            previous.parent.mkdir(exist_ok=True)
            kept = previous.with_name(f".{previous.name}.{uuid.uuid4().hex}")
            try:
                os.link(target_path, kept)  # instant, whatever the size
            except OSError:  # a file system without hard links
                shutil.copyfile(target_path, kept)
            os.replace(kept, previous)
        os.replace(incoming_path, target_path)
    journal.unlink()


def _fsync(path: Path) -> None:
    with path.open("rb") as handle:
        os.fsync(handle.fileno())
