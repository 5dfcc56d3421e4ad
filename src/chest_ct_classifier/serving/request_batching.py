"""Concurrent requests answered together: one forward pass for the images that arrive within a
few milliseconds of each other.

A request thread hands its preprocessed image to :meth:`RequestBatcher.predict` and waits; one
worker thread takes the first waiting image, collects those that arrive until the batch is full
or ``max_wait_s`` has passed since it took the first, runs the forward pass on the batch, and
gives each request its own row. One request alone waits at most ``max_wait_s`` more than its
forward pass; under load the CPU computes batches, not single images.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from concurrent.futures import Future
from typing import Any

import numpy as np

from chest_ct_classifier.model.numeric_precision import Forward

logger = logging.getLogger(__name__)

_IDLE_EXIT_S = 30.0


class RequestBatcher:
    """Groups single-image predictions into batches for ``forward``; thread-safe."""

    def __init__(self, forward: Forward, max_batch: int = 16, max_wait_s: float = 0.005) -> None:
        if max_batch < 1:
            raise ValueError(f"max_batch must be at least 1, got {max_batch}")
        self._forward = forward
        self.max_batch = int(max_batch)
        self.max_wait_s = float(max_wait_s)
        self._waiting: queue.Queue[tuple[np.ndarray, Future]] = queue.Queue()
        self._worker: threading.Thread | None = None
        self._start_lock = threading.Lock()
        self.batches = 0
        """Forward passes run so far (for tests and the log)."""
        self.images = 0

    def predict(self, image: np.ndarray, timeout: float | None = None) -> Any:
        """The forward pass's output row for one model input ``(H, W, 3)``.

        Raises:
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
        return [answer.result(timeout) for answer in answers]

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

    def _answer(self, batch: list[tuple[np.ndarray, Future]]) -> None:
        try:
            outputs = self._forward(np.stack([image for image, _ in batch]))
            if len(outputs) != len(batch):
                raise RuntimeError(f"{len(outputs)} answers for a batch of {len(batch)} images")
        except Exception as exc:  # every waiting request learns of it; the worker lives on
            logger.exception("Forward pass failed for a batch of %d images", len(batch))
            for _, answer in batch:
                answer.set_exception(exc)
            return
        self.batches += 1
        self.images += len(batch)
        for (_, answer), row in zip(batch, outputs, strict=True):
            answer.set_result(row)
