"""Gunicorn started exactly as the serving image starts it (the Dockerfile's CMD, with
gunicorn.conf.py), with only the image's libraries importable: it loads a real model, answers
/health and a prediction, and stops cleanly on SIGTERM (what ``docker stop`` sends)."""

from __future__ import annotations

import base64
import os
import signal
import socket
import subprocess
import time
from pathlib import Path

import pytest
import requests

from chest_ct_classifier.images.labels import LABELS
from tests.conftest import BIN, PROJECT_ROOT
from tests.test_delivery import environment_of_image, image_cmd, serving_image_import_guard

pytestmark = pytest.mark.slow  # trains a small model once per session, starts TensorFlow

HEALTH_TIMEOUT_S = 120  # TensorFlow and the model load in the worker, on a busy two-core machine
STOP_TIMEOUT_S = 60  # gunicorn's graceful_timeout (30 s) and some


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def log_tail(log: Path) -> str:
    return log.read_text(errors="replace")[-6000:]


@pytest.fixture
def gunicorn_as_in_the_image(trained_model_path: Path, tmp_path: Path):
    """Start the image's CMD from the repository root (app.py and gunicorn.conf.py are there, as
    in /app) with the image's environment, the venv's bin first on PATH, and every module that
    the image does not install made unimportable (a ``sitecustomize`` on PYTHONPATH).
    Yields ``(process, base_url, log_path)``; stops the whole process group afterwards."""
    guard = tmp_path / "guard"
    guard.mkdir()
    (guard / "sitecustomize.py").write_text(serving_image_import_guard())
    port = free_port()
    environment = {
        **os.environ,
        **environment_of_image(),
        "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}",
        "PYTHONPATH": str(guard),
        "PORT": str(port),
        "CHEST_CT_PROJECT_PATH": str(PROJECT_ROOT),
        "CHEST_CT_MODEL_PATH": str(trained_model_path),
    }
    for variable in (
        "CHEST_CT_MODEL_URI",
        "CHEST_CT_TRAIN_TOKEN",
        "MLFLOW_TRACKING_URI",
        "MLFLOW_REGISTRY_URI",
        "WEB_CONCURRENCY",
        "GUNICORN_THREADS",
        "GUNICORN_TIMEOUT",
    ):
        environment.pop(variable, None)
    log = tmp_path / "gunicorn.log"
    with log.open("wb") as output:
        process = subprocess.Popen(
            image_cmd(),
            cwd=PROJECT_ROOT,
            env=environment,
            stdin=subprocess.DEVNULL,
            stdout=output,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own process group: the workers are ended with it
        )
    try:
        yield process, f"http://127.0.0.1:{port}", log
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=30)


def wait_until_healthy(process: subprocess.Popen, base: str, log: Path) -> requests.Response:
    deadline = time.monotonic() + HEALTH_TIMEOUT_S
    answer = None
    while time.monotonic() < deadline:
        assert process.poll() is None, f"gunicorn exited ({process.returncode}):\n{log_tail(log)}"
        try:
            # the master listens at once; a request waits there until the worker has loaded
            answer = requests.get(f"{base}/health", timeout=10)
        except (requests.ConnectionError, requests.Timeout):
            answer = None
        if answer is not None and answer.status_code == 200:
            return answer
        time.sleep(0.5)
    last = "no answer" if answer is None else f"{answer.status_code} {answer.text[:500]}"
    pytest.fail(f"/health not 200 after {HEALTH_TIMEOUT_S} s ({last}):\n{log_tail(log)}")


def test_gunicorn_serves_the_model_as_the_image_does_and_stops_on_sigterm(
    gunicorn_as_in_the_image, sample_image_path
):
    process, base, log = gunicorn_as_in_the_image

    health = wait_until_healthy(process, base, log).json()
    assert health["status"] == "ok", health
    assert health["model_loaded"] is True, health
    assert health["model"]["source"] == "file"

    image = base64.b64encode(sample_image_path("normal").read_bytes()).decode()
    answer = requests.post(f"{base}/predict?explain=1", json={"image": image}, timeout=120)
    assert answer.status_code == 200, f"{answer.text[:1000]}\n{log_tail(log)}"
    body = answer.json()
    assert body["label"] in LABELS
    assert body["heatmap_png"]

    os.killpg(process.pid, signal.SIGTERM)
    try:
        returncode = process.wait(timeout=STOP_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        pytest.fail(f"gunicorn still runs {STOP_TIMEOUT_S} s after SIGTERM:\n{log_tail(log)}")
    assert returncode == 0, log_tail(log)
    text = log.read_text(errors="replace")
    assert "GET /health" in text  # the access log goes to stdout, as configured
    assert "ModuleNotFoundError" not in text
