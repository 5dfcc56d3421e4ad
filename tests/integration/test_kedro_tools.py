"""The project's tools, as a user calls them: kedro viz, and the MLflow configuration."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from kedro.config import OmegaConfigLoader

from chest_ct_classifier.settings import CONFIG_LOADER_ARGS
from tests.conftest import PROJECT_ROOT


def _free_port(start: int = 4141) -> int:
    """A free loopback port below 49152: kedro viz refuses ports in the ephemeral range."""
    for port in range(start, start + 500):
        with socket.socket() as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise RuntimeError("no free port")


@pytest.mark.slow
def test_kedro_viz_serves_every_pipeline(tmp_path):
    port = _free_port()
    log = (tmp_path / "viz.log").open("w")
    kedro = str(Path(sys.executable).with_name("kedro"))
    # kedro viz leaves its server child alive on SIGTERM: run it in its own process group.
    process = subprocess.Popen(
        [kedro, "viz", "run", "--no-browser", "--host", "127.0.0.1", "--port", str(port)],
        cwd=PROJECT_ROOT,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
        env={**os.environ, "KEDRO_DISABLE_TELEMETRY": "1"},
    )
    try:
        deadline, graph = time.monotonic() + 120, None
        while time.monotonic() < deadline and process.poll() is None:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/main", timeout=5) as r:
                    graph = json.load(r)
                break
            except OSError:
                time.sleep(1)
        assert graph is not None, (tmp_path / "viz.log").read_text()[-3000:]
        pipeline_ids = {p["id"] for p in graph["pipelines"]}
        assert {"data_ingestion", "training", "evaluation", "inference"} <= pipeline_ids
        names = {n["name"] for n in graph["nodes"]}  # of the default pipeline
        assert {
            "index_images",
            "prepare_classifier",
            "train_classifier",
            "serving_input_example",
        } <= names
        url = f"http://127.0.0.1:{port}/api/pipelines/inference"
        with urllib.request.urlopen(url, timeout=10) as response:
            inference = json.load(response)
        assert "predict_images" in {n["name"] for n in inference["nodes"]}
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGTERM)
            process.wait(timeout=30)


def _mlflow_config(monkeypatch, uri: str | None) -> dict:
    if uri is None:
        monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    else:
        monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    settings = {k: v for k, v in CONFIG_LOADER_ARGS.items() if k != "merge_strategy"}
    patterns = {**settings.pop("config_patterns", {}), "mlflow": ["mlflow*", "mlflow*/**"]}
    loader = OmegaConfigLoader(
        conf_source=str(PROJECT_ROOT / "conf"), config_patterns=patterns, **settings
    )
    return loader["mlflow"]


def test_mlflow_tracks_to_local_sqlite_by_default(monkeypatch):
    config = _mlflow_config(monkeypatch, None)
    assert config["server"]["mlflow_tracking_uri"] == "sqlite:///mlflow.db"
    assert config["tracking"]["experiment"]["name"] == "chest-ct-classifier"


def test_mlflow_tracking_uri_comes_from_the_environment(monkeypatch):
    uri = "https://dagshub.com/someone/chest-ct.mlflow"
    assert _mlflow_config(monkeypatch, uri)["server"]["mlflow_tracking_uri"] == uri
