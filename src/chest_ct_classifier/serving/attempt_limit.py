"""How many wrong tokens ``/train`` accepts before it stops listening for a while: a guessed
token needs many tries, and each try costs the guesser the lockout."""

from __future__ import annotations

import threading
import time


class AttemptLimiter:
    """At most ``max_failures`` failed attempts within ``window_s`` seconds; then every attempt,
    right or wrong, waits until the oldest failure leaves the window. Thread-safe."""

    def __init__(self, max_failures: int = 5, window_s: float = 900.0) -> None:
        self.max_failures = max_failures
        self.window_s = window_s
        self._failures: list[float] = []
        self._lock = threading.Lock()

    def retry_after(self) -> float:
        """Seconds until an attempt is heard again; 0 when it is heard now."""
        with self._lock:
            now = time.monotonic()
            self._failures = [t for t in self._failures if now - t < self.window_s]
            if len(self._failures) < self.max_failures:
                return 0.0
            return self.window_s - (now - self._failures[0])

    def failed(self) -> None:
        with self._lock:
            self._failures.append(time.monotonic())
