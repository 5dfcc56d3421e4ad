"""The hash-chained audit log: every line intact and linked, whatever writes it and however it
is rotated; a changed byte or a missing line is found and named."""

from __future__ import annotations

import json
import multiprocessing
import threading
from pathlib import Path

import pytest

from chest_ct_classifier.audit.hash_chain_log import GENESIS, HashChainLog, verify


def _write(log: HashChainLog, n: int, who: str = "t") -> None:
    for i in range(n):
        log.append({"who": who, "i": i, "text": "é ü " + "x" * (i % 7)})


def _lines(path: Path) -> list[bytes]:
    return path.read_bytes().splitlines(keepends=True)


def test_appended_lines_are_json_and_chained_from_genesis(tmp_path):
    log = HashChainLog(tmp_path / "logs" / "audit.jsonl")
    first = log.append({"request_id": "a", "status": 200})
    second = log.append({"request_id": "b", "prev": "forged", "hash": "forged"})
    lines = [json.loads(line) for line in _lines(log.path)]
    assert lines[0]["prev"] == GENESIS and lines[0]["hash"] == first
    assert lines[1]["prev"] == first and lines[1]["hash"] == second
    assert lines[1]["request_id"] == "b"  # a record cannot set its own chain fields
    report = verify(log.path)
    assert report.ok and report.lines == 2 and not report.starts_after_rotation


@pytest.mark.parametrize("line", [0, 4, 9])
def test_one_changed_byte_is_found_and_its_line_named(tmp_path, line):
    log = HashChainLog(tmp_path / "audit.jsonl")
    _write(log, 10)
    lines = _lines(log.path)
    changed = lines[line].replace(b'"i": ', b'"i":  ', 1)  # still valid JSON, one byte more
    log.path.write_bytes(b"".join([*lines[:line], changed, *lines[line + 1 :]]))
    report = verify(log.path)
    assert not report.ok
    assert report.problem.startswith(f"{log.path}:{line + 1}: the line was changed")


def test_a_missing_line_breaks_the_link_of_the_next(tmp_path):
    log = HashChainLog(tmp_path / "audit.jsonl")
    _write(log, 6)
    lines = _lines(log.path)
    log.path.write_bytes(b"".join(lines[:2] + lines[3:]))
    report = verify(log.path)
    assert (
        report.problem
        == f"{log.path}:3: broken link (the line before it is missing, changed or out of order)"
    )


def test_a_line_that_is_not_json_is_named(tmp_path):
    log = HashChainLog(tmp_path / "audit.jsonl")
    _write(log, 3)
    with log.path.open("ab") as file:
        file.write(b"garbage\n")
    assert verify(log.path).problem.startswith(f"{log.path}:4: not a line of this log")


def test_rotation_keeps_the_chain_across_files_and_drops_the_oldest(tmp_path):
    log = HashChainLog(tmp_path / "audit.jsonl", max_bytes=600, backups=3)
    _write(log, 40)
    assert [p.name for p in log.files()] == [
        "audit.jsonl.3", "audit.jsonl.2", "audit.jsonl.1", "audit.jsonl",
    ]  # fmt: skip
    assert all(p.stat().st_size <= 600 for p in log.files())
    report = verify(log.path)
    assert report.ok and report.files == 4
    assert report.starts_after_rotation  # older files were dropped: the chain starts later
    # the current file's first line links to the last line of the file before it
    first = json.loads(_lines(log.path)[0])
    last_rotated = json.loads(_lines(tmp_path / "audit.jsonl.1")[-1])
    assert first["prev"] == last_rotated["hash"]
    # a line changed in a rotated file is named there
    rotated = tmp_path / "audit.jsonl.2"
    lines = _lines(rotated)
    rotated.write_bytes(b"".join([lines[0].replace(b'"t"', b'"T"'), *lines[1:]]))
    assert verify(log.path).problem.startswith(f"{rotated}:1: the line was changed")


def test_many_threads_write_whole_lines_and_lose_none(tmp_path):
    log = HashChainLog(tmp_path / "audit.jsonl", max_bytes=4000)
    threads = [threading.Thread(target=_write, args=(log, 50, f"t{n}")) for n in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    report = verify(log.path)
    assert report.ok and report.lines == 400 and report.files > 1


def _process(path: str, who: str) -> None:
    _write(HashChainLog(path, max_bytes=8000), 60, who)


def test_several_processes_share_one_chain(tmp_path):
    path = tmp_path / "audit.jsonl"
    context = multiprocessing.get_context("spawn")
    processes = [context.Process(target=_process, args=(str(path), f"p{n}")) for n in range(3)]
    for process in processes:
        process.start()
    for process in processes:
        process.join(timeout=120)
        assert process.exitcode == 0
    report = verify(path)
    assert report.ok and report.lines == 180
    whos = [json.loads(line)["who"] for f in HashChainLog(path).files() for line in _lines(f)]
    assert sorted(set(whos)) == ["p0", "p1", "p2"] and len(whos) == 180


def test_a_missing_log_is_reported(tmp_path):
    report = verify(tmp_path / "none.jsonl")
    assert not report.ok and "no such log" in report.problem
