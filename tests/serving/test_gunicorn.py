"""Gunicorn started exactly as the serving image starts it (the Dockerfile's CMD, with
gunicorn.conf.py), with only the image's libraries importable: it loads a real model, answers
/health and a prediction, and stops cleanly on SIGTERM (what ``docker stop`` sends)."""

from __future__ import annotations

import base64
import contextlib
import hashlib
import json
import os
import shutil
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

NGINX = shutil.which("nginx", path=f"{os.environ['PATH']}:/usr/local/sbin:/usr/sbin")
needs_nginx = pytest.mark.skipif(
    NGINX is None,
    reason="the image serves behind nginx, which is not installed: apt-get install nginx "
    "(make setup does, as root)",
)
pytestmark = [pytest.mark.slow, needs_nginx]  # trains a small model, starts TensorFlow

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
    with start_gunicorn(trained_model_path, tmp_path) as started:
        yield started


@contextlib.contextmanager
def start_gunicorn(trained_model_path: Path, tmp_path: Path, **extra_environment: str):
    """The image's CMD as :func:`gunicorn_as_in_the_image` starts it, with more variables."""
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
    environment |= extra_environment
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


def test_two_workers_under_eight_clients_leave_one_audit_line_per_request(
    trained_model_path, sample_image_path, tmp_path
):
    """8 clients x 25 requests against 2 gunicorn workers: exactly one line per request, each
    with its request id and the input's sha256, one unbroken chain; one changed byte breaks it
    at that line (``python -m chest_ct_classifier audit verify``)."""
    from concurrent.futures import ThreadPoolExecutor

    audit = tmp_path / "audit.jsonl"
    images = [sample_image_path(label).read_bytes() for label in ("normal", "adenocarcinoma")]
    with start_gunicorn(
        trained_model_path, tmp_path, WEB_CONCURRENCY="2", CHEST_CT_AUDIT_LOG=str(audit)
    ) as (process, base, log):
        wait_until_healthy(process, base, log)

        def client(number: int) -> list[tuple[str, str]]:
            sent = []
            with requests.Session() as session:
                for request in range(25):
                    data = images[(number + request) % 2]
                    answer = session.post(
                        f"{base}/predict", files={"file": ("x.png", data)}, timeout=120
                    )
                    assert answer.status_code == 200, answer.text[:500]
                    sent.append((answer.headers["X-Request-ID"], hashlib.sha256(data).hexdigest()))
            return sent

        with ThreadPoolExecutor(8) as pool:
            sent = dict(pair for pairs in pool.map(client, range(8)) for pair in pairs)
        pids = {
            line.split()[-1] for line in log.read_text().splitlines() if "Booting worker" in line
        }
    assert len(pids) >= 2, "gunicorn did not start two workers"
    lines = [json.loads(line) for line in audit.read_text().splitlines()]
    assert len(lines) == len(sent) == 200
    assert {line["request_id"]: line["input_sha256"] for line in lines} == sent

    verify_command = [
        str(BIN / "python"),
        "-m",
        "chest_ct_classifier",
        "audit",
        "verify",
        str(audit),
    ]
    checked = subprocess.run(
        verify_command, capture_output=True, text=True, timeout=120, check=False
    )
    assert checked.returncode == 0 and "OK: 200 lines" in checked.stdout, (
        checked.stdout + checked.stderr
    )
    raw = audit.read_bytes().split(b"\n")
    raw[137] = raw[137].replace(b'"http_status": 200', b'"http_status": 201', 1)
    audit.write_bytes(b"\n".join(raw))
    checked = subprocess.run(
        verify_command, capture_output=True, text=True, timeout=120, check=False
    )
    assert checked.returncode == 1
    assert f"{audit}:138: the line was changed" in checked.stdout
