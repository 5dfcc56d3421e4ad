"""`python app.py` serves the app as the original project did: Flask's own server, port 8080
unless PORT says otherwise."""

from __future__ import annotations

import os
import runpy
import subprocess
import sys
import time

import flask
import requests

from tests.conftest import PROJECT_ROOT
from tests.serving.test_gunicorn import free_port


def test_python_app_py_runs_flask_on_port_8080_by_default(monkeypatch, tmp_path):
    calls = []
    monkeypatch.setattr(flask.Flask, "run", lambda self, **kwargs: calls.append(kwargs))
    monkeypatch.delenv("PORT", raising=False)
    monkeypatch.setenv("CHEST_CT_PROJECT_PATH", str(tmp_path))
    runpy.run_path(str(PROJECT_ROOT / "app.py"), run_name="__main__")
    assert calls == [{"host": "0.0.0.0", "port": 8080, "threaded": True}]


def test_python_app_py_answers_health(tmp_path):
    """With no trained model the app still starts and says so (503 with a reason)."""
    port = free_port()
    env = {**os.environ, "PORT": str(port), "CHEST_CT_PROJECT_PATH": str(tmp_path)}
    env = {k: v for k, v in env.items() if not k.startswith(("MLFLOW_", "CHEST_CT_MODEL"))}
    process = subprocess.Popen(
        [sys.executable, "app.py"],
        cwd=PROJECT_ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                health = requests.get(f"http://127.0.0.1:{port}/health", timeout=5)
                break
            except requests.ConnectionError:
                assert process.poll() is None, process.stderr.read()[-3000:]
                assert time.monotonic() < deadline, "python app.py did not answer in 120 s"
                time.sleep(0.5)
        assert health.status_code == 503
        assert health.json()["status"] != "ok"
    finally:
        process.terminate()
        process.wait(timeout=30)
