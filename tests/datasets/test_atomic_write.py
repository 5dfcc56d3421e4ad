import threading

import pytest

from chest_ct_classifier.datasets.atomic_write import write_atomically


def test_concurrent_writers_never_share_a_partial_file_and_failures_leave_none(tmp_path):
    target = tmp_path / "models" / "model.bin"
    partials, barrier = [], threading.Barrier(2)

    def writer(data: bytes) -> None:
        def write(partial):
            partials.append(partial)
            barrier.wait(timeout=10)  # both partial files exist at the same time
            partial.write_bytes(data)

        write_atomically(target, write)

    threads = [threading.Thread(target=writer, args=(data,)) for data in (b"a" * 100, b"b" * 100)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(set(partials)) == 2  # two runs, two partial names
    assert target.read_bytes() in (b"a" * 100, b"b" * 100)  # whole, from one of them

    def broken(partial):
        partial.write_bytes(b"half")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        write_atomically(target, broken)
    assert target.read_bytes() in (b"a" * 100, b"b" * 100)  # the previous file is intact
    assert sorted(p.name for p in target.parent.iterdir()) == ["model.bin"]  # no partial left
