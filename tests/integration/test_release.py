"""A run writes a candidate and serves it only after evaluating it: runs killed at calibration
and during evaluation leave the served model and its reports byte for byte, and the app,
restarted, serves the same version."""

from __future__ import annotations

import hashlib
import os
import shutil
import signal
import subprocess
import threading
import time
from pathlib import Path

import pytest
import requests
import yaml

from chest_ct_classifier.registry.release import JOURNAL_NAME, ReleaseFolder
from tests.conftest import BIN
from tests.integration.conftest import SHARES_THE_TRAINED_PROJECT

# copies a trained project and runs kedro twice
pytestmark = [pytest.mark.slow, SHARES_THE_TRAINED_PROJECT]

KILL_TIMEOUT_S = 600


def release_folders(project: Path) -> list[ReleaseFolder]:
    catalog = yaml.safe_load((project / "conf/base/catalog.yml").read_text())
    return [ReleaseFolder.from_config(f, project) for f in catalog["model_release"]["folders"]]


def served_files(project: Path) -> dict[str, str]:
    """sha256 of every served file of the release, by path."""
    return {
        str(folder.served / name): hashlib.sha256((folder.served / name).read_bytes()).hexdigest()
        for folder in release_folders(project)
        for name in (*folder.files, "release.json")
        if name != "release.json" or folder is release_folders(project)[0]
    }


def kill_run_after(project: Path, marker: str, *args: str) -> None:
    """Start ``kedro run --env test *args`` in ``project``; SIGKILL it (its whole process
    group, as a lost machine would) once its log says ``marker``."""
    log = project / "logs" / "info.log"
    start = log.stat().st_size if log.exists() else 0
    environment = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}"}
    for variable in ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI"):
        environment.pop(variable, None)
    process = subprocess.Popen(
        [str(BIN / "kedro"), "run", "--env", "test", *args],
        cwd=project,
        env=environment,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    deadline = time.monotonic() + KILL_TIMEOUT_S
    try:
        while time.monotonic() < deadline:
            text = log.read_bytes()[start:].decode(errors="replace") if log.exists() else ""
            if marker in text:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait(timeout=30)
                return
            assert process.poll() is None, f"the run ended ({process.returncode}) before {marker}"
            time.sleep(0.2)
        pytest.fail(f"no '{marker}' in {log} within {KILL_TIMEOUT_S} s")
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=30)


def served_version(project: Path) -> tuple[str, str]:
    """What the app, started on ``project``, serves: its model version and /model-card."""
    from werkzeug.serving import make_server

    from chest_ct_classifier.serving import create_app
    from chest_ct_classifier.serving.settings import ServingSettings

    app = create_app(ServingSettings(project_path=project, audit_log=None))  # the catalog's model
    server = make_server("127.0.0.1", 0, app, threaded=True)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    base = f"http://127.0.0.1:{server.server_port}"
    try:
        health = requests.get(f"{base}/health", timeout=60).json()
        card = requests.get(f"{base}/model-card", timeout=60)
        assert health["model_loaded"] and card.status_code == 200, health
        return health["model"]["version"], card.text
    finally:
        server.shutdown()


def test_killed_runs_leave_the_served_model_and_its_reports_served(trained_project, tmp_path):
    project = tmp_path / "project"
    shutil.copytree(trained_project, project, symlinks=True)
    before = served_files(project)
    version, card = served_version(project)

    kill_run_after(project, "Completed node: calibrate_classifier", "--pipelines", "training")
    candidate = project / "data/06_models/candidate/classifier.keras"
    assert candidate.stat().st_mtime > time.time() - KILL_TIMEOUT_S  # a new candidate was made
    assert served_files(project) == before

    kill_run_after(project, "Completed node: evaluate_classifier", "--pipelines", "evaluation")
    assert (project / "data/08_reporting/candidate/metrics.json").is_file()
    assert served_files(project) == before
    assert not (project / "data/06_models" / JOURNAL_NAME).exists()

    assert served_version(project) == (version, card)  # the app, restarted, serves the same
