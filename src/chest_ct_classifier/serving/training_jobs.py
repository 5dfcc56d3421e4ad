"""Training started from the web API: one run at a time, in the background, then a model switch.

The run is the project's own command (``kedro run`` by default) in a child process, so a crash
or an out-of-memory kill of training cannot take the server down, and the server's model stays
untouched until the run has finished and the new model has loaded.
"""

from __future__ import annotations

import atexit
import logging
import os
import subprocess
import threading
import uuid
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

LOG_TAIL_LINES = 40


class TrainingBusyError(RuntimeError):
    """A training run is already going."""


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


@dataclass
class TrainingJob:
    job_id: str
    command: tuple[str, ...]
    state: str = "running"  # running, succeeded, failed
    started_at: str = field(default_factory=_now)
    finished_at: str | None = None
    returncode: int | None = None
    message: str | None = None
    model: dict[str, Any] | None = None
    log: deque[str] = field(default_factory=lambda: deque(maxlen=LOG_TAIL_LINES))

    def as_dict(self) -> dict[str, Any]:
        return {
            "job_id": self.job_id,
            "state": self.state,
            "started_at": self.started_at,
            "finished_at": self.finished_at,
            "returncode": self.returncode,
            "message": self.message,
            "model": self.model,
            "log_tail": list(self.log),
        }


class TrainingJobs:
    """Runs ``command`` in ``cwd`` on request, one run at a time; when it succeeds, calls
    ``on_success`` (which loads and switches to the new model) and records what it returns."""

    def __init__(
        self,
        command: Sequence[str],
        cwd: Path,
        on_success: Callable[[], tuple[dict[str, Any], str]],
    ) -> None:
        self._command = tuple(command)
        self._cwd = cwd
        self._on_success = on_success
        self._jobs: dict[str, TrainingJob] = {}
        self._lock = threading.Lock()
        self._running: TrainingJob | None = None
        self._process: subprocess.Popen | None = None
        # A server that stops (SIGTERM on redeploy) takes its training run with it, rather than
        # leaving an orphan that goes on writing the model file.
        atexit.register(self.stop)

    def stop(self) -> None:
        """End the running training process, if any."""
        process = self._process
        if process is not None and process.poll() is None:
            logger.warning("Stopping training process %d: the server is stopping", process.pid)
            process.terminate()

    @property
    def running_job_id(self) -> str | None:
        running = self._running
        return running.job_id if running else None

    def get(self, job_id: str) -> TrainingJob | None:
        return self._jobs.get(job_id)

    def start(self) -> TrainingJob:
        """Start a run in the background.

        Raises:
            TrainingBusyError: a run is already going.
        """
        with self._lock:
            if self._running is not None:
                raise TrainingBusyError(
                    f"training run {self._running.job_id} is still going; one run at a time"
                )
            job = TrainingJob(job_id=uuid.uuid4().hex[:12], command=self._command)
            self._jobs[job.job_id] = job
            self._running = job
        threading.Thread(
            target=self._run, args=(job,), name=f"training-{job.job_id}", daemon=True
        ).start()
        logger.info("Training run %s started: %s", job.job_id, " ".join(self._command))
        return job

    def _run(self, job: TrainingJob) -> None:
        try:
            with subprocess.Popen(
                self._command,
                cwd=self._cwd,
                env=_without_secrets(os.environ),
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                text=True,
                errors="replace",
            ) as process:
                self._process = process
                for line in process.stdout:
                    job.log.append(line.rstrip())
            job.returncode = process.returncode
            if process.returncode != 0:
                job.state, job.message = "failed", f"the run exited with {process.returncode}"
            else:
                job.model, job.message = self._on_success()
                job.state = "succeeded"
        except Exception as exc:  # a failed run or switch is reported, never raised
            logger.exception("Training run %s failed", job.job_id)
            job.state, job.message = "failed", f"{type(exc).__name__}: {exc}"
        finally:
            job.finished_at = _now()
            self._process = None
            with self._lock:
                self._running = None
            logger.info("Training run %s %s: %s", job.job_id, job.state, job.message)


SECRET_VARIABLES = ("CHEST_CT_TRAIN_TOKEN",)
"""Variables of the app's environment a training run never sees."""


def _without_secrets(environ: Mapping[str, str]) -> dict[str, str]:
    return {key: value for key, value in environ.items() if key not in SECRET_VARIABLES}
