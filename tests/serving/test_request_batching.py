import threading
import time

import numpy as np
import pytest

from chest_ct_classifier.serving import request_batching
from chest_ct_classifier.serving.request_batching import RequestBatcher


class RecordingForward:
    """Doubles its inputs' mean, slowly, and records the size of every batch it gets."""

    def __init__(self, seconds: float = 0.05) -> None:
        self.sizes: list[int] = []
        self.seconds = seconds

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        self.sizes.append(len(batch))
        time.sleep(self.seconds)
        return np.stack([[2.0 * image.mean()] for image in batch])


def _concurrently(batcher: RequestBatcher, values: list[float]) -> list[np.ndarray]:
    answers: list = [None] * len(values)
    start = threading.Barrier(len(values))

    def ask(i: int) -> None:
        start.wait()
        answers[i] = batcher.predict(np.full((2, 2, 3), values[i], np.float32), timeout=10)

    threads = [threading.Thread(target=ask, args=(i,)) for i in range(len(values))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return answers


def test_concurrent_requests_share_forward_passes_and_each_gets_its_own_answer():
    forward = RecordingForward()
    batcher = RequestBatcher(forward, max_batch=4, max_wait_s=0.02)
    values = [float(i) for i in range(12)]
    answers = _concurrently(batcher, values)
    assert [float(a[0]) for a in answers] == [2.0 * v for v in values]
    assert sum(forward.sizes) == 12 and max(forward.sizes) <= 4
    assert len(forward.sizes) < 12  # grouped
    assert batcher.batches == len(forward.sizes) and batcher.images == 12


def test_a_lone_request_waits_only_the_bounded_wait():
    forward = RecordingForward(seconds=0.0)
    batcher = RequestBatcher(forward, max_batch=16, max_wait_s=0.01)
    batcher.predict(np.zeros((2, 2, 3)))  # starts the worker
    start = time.perf_counter()
    answer = batcher.predict(np.ones((2, 2, 3)))
    assert time.perf_counter() - start < 0.5
    assert float(answer[0]) == 2.0 and forward.sizes == [1, 1]


def test_a_failed_forward_pass_fails_its_requests_and_not_the_next_ones():
    calls = []

    def flaky(batch: np.ndarray) -> np.ndarray:
        calls.append(len(batch))
        if len(calls) == 1:
            raise RuntimeError("out of memory")
        return np.zeros((len(batch), 1))

    batcher = RequestBatcher(flaky, max_batch=2, max_wait_s=0.0)
    with pytest.raises(RuntimeError, match="out of memory"):
        batcher.predict(np.zeros((1, 1, 3)), timeout=5)
    assert batcher.predict(np.zeros((1, 1, 3)), timeout=5).shape == (1,)


def test_an_idle_worker_leaves_and_the_next_request_starts_another(monkeypatch):
    monkeypatch.setattr(request_batching, "_IDLE_EXIT_S", 0.05)
    batcher = RequestBatcher(RecordingForward(seconds=0.0), max_batch=2, max_wait_s=0.0)
    batcher.predict(np.zeros((1, 1, 3)))
    first = batcher._worker
    deadline = time.monotonic() + 5
    while batcher._worker is not None and time.monotonic() < deadline:
        time.sleep(0.01)
    assert batcher._worker is None and not first.is_alive()
    assert float(batcher.predict(np.ones((1, 1, 3)), timeout=5)[0]) == 2.0


def test_max_batch_must_be_positive():
    with pytest.raises(ValueError, match="at least 1"):
        RequestBatcher(RecordingForward(), max_batch=0)


def test_a_forward_pass_with_the_wrong_number_of_answers_fails_its_requests():
    batcher = RequestBatcher(lambda batch: np.zeros((len(batch) + 1, 1)), max_batch=2)
    with pytest.raises(RuntimeError, match="2 answers for a batch of 1"):
        batcher.predict(np.zeros((1, 1, 3)), timeout=5)


def test_a_dead_worker_is_replaced(monkeypatch):
    batcher = RequestBatcher(RecordingForward(seconds=0.0), max_batch=2, max_wait_s=0.0)
    batcher.predict(np.zeros((1, 1, 3)), timeout=5)
    dead = threading.Thread(target=lambda: None)
    dead.start()
    dead.join()
    batcher._worker = dead  # as if the worker had died on an unexpected error
    assert float(batcher.predict(np.ones((1, 1, 3)), timeout=5)[0]) == 2.0


def test_a_hung_forward_pass_fails_its_requests_and_a_new_thread_answers_the_rest():
    release = threading.Event()
    threads: list[str] = []

    def forward(batch: np.ndarray) -> np.ndarray:
        threads.append(threading.current_thread().name + str(threading.get_ident()))
        if batch.mean() < 0:  # the hung pass
            release.wait(30)
        return np.stack([[2.0 * image.mean()] for image in batch])

    batcher = RequestBatcher(forward, max_batch=4, max_wait_s=0.0, forward_timeout_s=0.5)
    try:
        started = time.perf_counter()
        with pytest.raises(request_batching.ForwardTimeoutError, match=r"within 0\.5 s"):
            batcher.predict(np.full((2, 2, 3), -1.0, np.float32))
        assert 0.5 <= time.perf_counter() - started < 3.0
        answer = batcher.predict(np.full((2, 2, 3), 3.0, np.float32), timeout=5)
        assert float(answer[0]) == 6.0
        assert len(set(threads)) == 2 and batcher.timeouts == 1  # a new worker answered it
    finally:
        release.set()  # the hung thread finishes; its late answer is dropped
    time.sleep(0.1)
    assert float(batcher.predict(np.full((2, 2, 3), 1.0, np.float32), timeout=5)[0]) == 2.0


def test_without_a_forward_timeout_a_slow_pass_is_waited_for():
    batcher = RequestBatcher(RecordingForward(seconds=0.6), max_batch=4, max_wait_s=0.0)
    assert float(batcher.predict(np.ones((2, 2, 3)), timeout=5)[0]) == 2.0
    assert batcher.timeouts == 0
