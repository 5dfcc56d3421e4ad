"""Concurrent requests answered together: one forward pass for the images that arrive within a
few milliseconds of each other.

A request thread hands its preprocessed image to :meth:`RequestBatcher.predict` and waits; one
worker thread takes the first waiting image, collects those that arrive until the batch is full
or ``max_wait_s`` has passed since it took the first, runs the forward pass on the batch, and
gives each request its own row. One request alone waits at most ``max_wait_s`` more than its
forward pass; under load the CPU computes batches, not single images.

A forward pass that runs longer than ``forward_timeout_s`` is given up on: its requests fail
with :class:`ForwardTimeoutError` and a new worker thread takes the queue, so one hung pass
cannot hang every request after it (a Python thread cannot be killed: the hung one is left to
finish, and its late answers are dropped).
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from concurrent.futures import Future, InvalidStateError
from typing import Any

import numpy as np

from chest_ct_classifier.model.numeric_precision import Forward

logger = logging.getLogger(__name__)

_IDLE_EXIT_S = 30.0
_WATCH_S = 0.25
"""How often a waiting request looks whether the forward pass under way has run too long."""


class ForwardTimeoutError(TimeoutError):
    """The forward pass for this request ran longer than the batcher's ``forward_timeout_s``."""


class RequestBatcher:
    """Groups single-image predictions into batches for ``forward``; thread-safe."""

    def __init__(
        self,
        forward: Forward,
        max_batch: int = 16,
        max_wait_s: float = 0.005,
        forward_timeout_s: float | None = None,
    ) -> None:
        if max_batch < 1:
            raise ValueError(f"max_batch must be at least 1, got {max_batch}")
        self._forward = forward
        self.max_batch = int(max_batch)
        self.max_wait_s = float(max_wait_s)
        self.forward_timeout_s = forward_timeout_s
        self._waiting: queue.Queue[tuple[np.ndarray, Future]] = queue.Queue()
        self._worker: threading.Thread | None = None
        self._start_lock = threading.Lock()
        # The pass under way: its thread, when it started, the answers it owes.
        self._running: tuple[threading.Thread, float, list[Future]] | None = None
        self.batches = 0
        """Forward passes run so far (for tests and the log)."""
        self.images = 0
        self.timeouts = 0
        """Forward passes given up on (each replaced its worker thread)."""

    def predict(self, image: np.ndarray, timeout: float | None = None) -> Any:
        """The forward pass's output row for one model input ``(H, W, 3)``.

        Raises:
            ForwardTimeoutError: the forward pass ran longer than ``forward_timeout_s``.
            TimeoutError: no answer within ``timeout`` seconds (None: wait as long as it takes;
                a failed forward pass raises its own error, it never leaves a request waiting).
        """
        return self.predict_many([image], timeout)[0]

    def predict_many(self, images: list[np.ndarray], timeout: float | None = None) -> list[Any]:
        """The output rows for several model inputs (the frames of one file), queued together
        so that they share forward passes."""
        answers: list[Future] = []
        for image in images:
            answers.append(Future())
            self._waiting.put((np.asarray(image, dtype=np.float32), answers[-1]))
        self._ensure_worker()  # after the puts: a worker that is leaving cannot miss them
        deadline = None if timeout is None else time.monotonic() + timeout
        return [self._result(answer, deadline) for answer in answers]

    def _result(self, answer: Future, deadline: float | None) -> Any:
        if self.forward_timeout_s is None:
            return answer.result(None if deadline is None else deadline - time.monotonic())
        while True:
            left = None if deadline is None else deadline - time.monotonic()
            try:
                return answer.result(_WATCH_S if left is None else max(0.0, min(_WATCH_S, left)))
            except TimeoutError:
                if answer.done() or (left is not None and left <= _WATCH_S):
                    raise  # the pass's own error (ForwardTimeoutError too), or out of time
                self._give_up_on_a_hung_pass()

    def _give_up_on_a_hung_pass(self) -> None:
        with self._start_lock:
            if self._running is None or self.forward_timeout_s is None:
                return
            thread, started, owed = self._running
            if time.monotonic() - started < self.forward_timeout_s:
                return
            self._running = None
            if self._worker is thread:
                self._worker = None
            self.timeouts += 1
        logger.error(
            "A forward pass of %d images ran over %g s: its requests fail, a new thread takes "
            "the queue",
            len(owed),
            self.forward_timeout_s,
        )
        error = ForwardTimeoutError(f"the model did not answer within {self.forward_timeout_s:g} s")
        for answer in owed:
            _settle(answer, error=error)
        self._ensure_worker()

    def _ensure_worker(self) -> None:
        with self._start_lock:
            if self._worker is None or not self._worker.is_alive():
                # A daemon: a server stopping mid-batch must not hang on it.
                self._worker = threading.Thread(
                    target=self._run, name="request-batcher", daemon=True
                )
                self._worker.start()

    def _run(self) -> None:
        # The worker leaves after a quiet while, so a model the app stopped serving (after a
        # switch) leaves no thread behind; the next request starts a new one.
        while True:
            try:
                first = self._waiting.get(timeout=_IDLE_EXIT_S)
            except queue.Empty:
                with self._start_lock:
                    if self._worker is not threading.current_thread():
                        return  # replaced while waiting
                    if self._waiting.empty():
                        self._worker = None
                        return
                continue
            batch = [first]
            deadline = time.monotonic() + self.max_wait_s
            while len(batch) < self.max_batch:
                try:
                    batch.append(self._waiting.get(timeout=max(0.0, deadline - time.monotonic())))
                except queue.Empty:
                    break
            self._answer(batch)
            if self._worker is not threading.current_thread():
                return  # given up on during the pass: another thread has the queue

    def _answer(self, batch: list[tuple[np.ndarray, Future]]) -> None:
        me = threading.current_thread()
        with self._start_lock:
            self._running = (me, time.monotonic(), [answer for _, answer in batch])
        try:
            outputs = self._forward(np.stack([image for image, _ in batch]))
            if len(outputs) != len(batch):
                raise RuntimeError(f"{len(outputs)} answers for a batch of {len(batch)} images")
        except Exception as exc:  # every waiting request learns of it; the worker lives on
            logger.exception("Forward pass failed for a batch of %d images", len(batch))
            for _, answer in batch:
                _settle(answer, error=exc)
            return
        finally:
            with self._start_lock:
                if self._running is not None and self._running[0] is me:
                    self._running = None
        self.batches += 1
        self.images += len(batch)
        for (_, answer), row in zip(batch, outputs, strict=True):
            _settle(answer, row)


def _settle(answer: Future, result: Any = None, error: BaseException | None = None) -> None:
    """Give a request its answer, unless it already has one (a pass given up on, then late)."""
    try:
        if error is None:
            answer.set_result(result)
        else:
            answer.set_exception(error)
    except InvalidStateError:
        pass
