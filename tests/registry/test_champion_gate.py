"""The champion gate on a real MLflow registry: a temporary SQLite store, real runs, metrics,
artifacts and model versions."""

from __future__ import annotations

import atexit
import functools
import logging
import os
import shutil
import sqlite3
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import mlflow
import pytest
from mlflow import MlflowClient
from mlflow.entities.model_registry import ModelVersion
from mlflow.tracking._model_registry import utils as registry_utils
from mlflow.tracking._tracking_service import utils as tracking_utils

from chest_ct_classifier.registry.champion_gate import (
    GATE_METRIC,
    promote_if_better,
    versions_registered_by_run,
)

NAME = "test-classifier"


@functools.cache
def _scratch_dir(fallback: Path) -> Path:
    """Where the SQLite stores live: in memory (``/dev/shm``) where there is such a folder, as
    SQLite waits for the disk at every commit (creating the schema takes 8 s on disk here, 3 s
    in memory); else ``fallback``. Removed when the test session ends."""
    shm = Path("/dev/shm")
    if not (shm.is_dir() and os.access(shm, os.W_OK)):
        return fallback
    path = Path(tempfile.mkdtemp(prefix="mlflow-tests-", dir=shm))
    atexit.register(shutil.rmtree, path, ignore_errors=True)
    return path


@functools.cache
def _migrated_store(directory: Path) -> Path:
    """An empty MLflow SQLite store, created once per test session: MLflow builds its schema
    with ~50 migrations, so each test copies this file instead."""
    path = directory / "mlflow-template.db"
    MlflowClient(tracking_uri=f"sqlite:///{path}").search_experiments()
    return path


@contextmanager
def sqlite_store(
    tmp_path: Path, tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch
) -> Iterator[tuple[MlflowClient, str]]:
    """A fresh SQLite store as MLflow's global tracking and registry URI, and an experiment
    whose artifacts go to ``tmp_path``; yields (client, experiment id). The URIs a test found
    (set or not) are put back afterwards, and the store is removed."""
    scratch = _scratch_dir(tmp_path_factory.getbasetemp())
    store_dir = Path(tempfile.mkdtemp(prefix="store-", dir=scratch))
    path = store_dir / "mlflow.db"
    shutil.copyfile(_migrated_store(scratch), path)
    uri = f"sqlite:///{path}"
    previous = tracking_utils._tracking_uri, registry_utils._registry_uri
    # mlflow.set_*_uri export these variables; setting them through monkeypatch makes the
    # teardown put back what was there (or remove them), so no later subprocess inherits them
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.setenv("MLFLOW_REGISTRY_URI", uri)
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    try:
        client = MlflowClient()
        client.create_registered_model(NAME)
        artifacts = (tmp_path / "artifacts").as_uri()
        yield client, client.create_experiment("gate", artifact_location=artifacts)
    finally:
        while mlflow.active_run():
            mlflow.end_run()
        mlflow.set_tracking_uri(previous[0])
        mlflow.set_registry_uri(previous[1])
        shutil.rmtree(store_dir, ignore_errors=True)


def register_version(
    client: MlflowClient,
    experiment_id: str,
    metrics: dict[str, float],
    name: str = NAME,
    run_id: str | None = None,
) -> ModelVersion:
    """Log ``metrics`` and a tiny model artifact in a run (a new one unless ``run_id``
    is given) and register it as a new version of ``name`` (a new registered model unless
    it is the test model)."""
    run = client.create_run(experiment_id) if run_id is None else client.get_run(run_id)
    for key, value in metrics.items():
        client.log_metric(run.info.run_id, key, value)
    client.log_text(run.info.run_id, "artifact_path: model\n", "model/MLmodel")
    if name != NAME:
        client.create_registered_model(name)
    source = f"{run.info.artifact_uri}/model"
    return client.create_model_version(name, source=source, run_id=run.info.run_id)


def tags(client: MlflowClient, version: ModelVersion | str) -> dict[str, str]:
    """The champion gate's tags on a version, without their prefix."""
    number = version if isinstance(version, str) else version.version
    found = client.get_model_version(NAME, number).tags
    return {k.removeprefix("champion_gate."): v for k, v in found.items() if "champion_gate." in k}


def champion(client: MlflowClient) -> str | None:
    aliases = client.get_registered_model(NAME).aliases
    return None if "champion" not in aliases else str(aliases["champion"])


@pytest.fixture
def store(tmp_path, tmp_path_factory, monkeypatch) -> Iterator[tuple[MlflowClient, str]]:
    with sqlite_store(tmp_path, tmp_path_factory, monkeypatch) as client_and_experiment:
        yield client_and_experiment


def test_first_version_becomes_champion_and_says_why(store, caplog):
    client, experiment = store
    first = register_version(client, experiment, {GATE_METRIC: 0.61})

    with caplog.at_level(logging.INFO, logger="chest_ct_classifier.registry.champion_gate"):
        result = promote_if_better(client, NAME, first.version)

    assert champion(client) == "1"
    assert result["decision"] == "promoted" and result["reason"] == "no_champion"
    assert result["promoted"] is True
    assert result["candidate_value"] == 0.61 and result["champion_value"] is None
    assert tags(client, first) == {
        "decision": "promoted",
        "reason": "no_champion",
        "metric": GATE_METRIC,
        "alias": "champion",
        "candidate_value": "0.61",
        "champion_value": "none",
        "champion_version": "none",
    }
    assert "first 'champion'" in client.get_model_version(NAME, "1").description
    (record,) = [
        r for r in caplog.records if r.name == "chest_ct_classifier.registry.champion_gate"
    ]
    assert record.levelno == logging.INFO and "version 1" in record.getMessage()


def test_better_version_takes_the_alias_worse_and_equal_ones_do_not(store):
    client, experiment = store
    register_version(client, experiment, {GATE_METRIC: 0.70})
    promote_if_better(client, NAME, "1")
    better = register_version(client, experiment, {GATE_METRIC: 0.80, "valid_accuracy": 0.9})
    worse = register_version(client, experiment, {GATE_METRIC: 0.75})
    equal = register_version(client, experiment, {GATE_METRIC: 0.80})

    assert promote_if_better(client, NAME, better.version)["decision"] == "promoted"
    assert champion(client) == "2"
    assert promote_if_better(client, NAME, worse.version)["decision"] == "kept_champion"
    assert promote_if_better(client, NAME, equal.version)["decision"] == "kept_champion"

    assert champion(client) == "2"
    assert (
        tags(client, better).items()
        >= {
            "decision": "promoted",
            "reason": "better",
            "candidate_value": "0.8",
            "champion_value": "0.7",
            "champion_version": "1",
        }.items()
    )
    assert (
        tags(client, worse).items()
        >= {
            "decision": "kept_champion",
            "reason": "not_better",
            "candidate_value": "0.75",
            "champion_value": "0.8",
            "champion_version": "2",
        }.items()
    )
    assert tags(client, equal)["decision"] == "kept_champion"
    assert tags(client, equal)["candidate_value"] == tags(client, equal)["champion_value"] == "0.8"
    assert "does not beat" in client.get_model_version(NAME, worse.version).description
    assert tags(client, "1")["decision"] == "promoted"  # the old champion's record is untouched


def test_version_without_the_metric_is_never_promoted(store):
    client, experiment = store
    orphan = register_version(client, experiment, {"valid_accuracy": 0.99})

    result = promote_if_better(client, NAME, orphan.version)

    assert result["decision"] == "no_metric" and result["promoted"] is False
    assert champion(client) is None  # not even as the first version
    assert tags(client, orphan)["candidate_value"] == "none"
    register_version(client, experiment, {GATE_METRIC: 0.5})
    promote_if_better(client, NAME, "2")
    nan = register_version(client, experiment, {GATE_METRIC: float("nan")})
    assert promote_if_better(client, NAME, nan.version)["decision"] == "no_metric"
    assert champion(client) == "2"
    assert tags(client, nan)["champion_value"] == "0.5"


def test_alias_on_a_deleted_version_counts_as_no_champion(store):
    client, experiment = store
    register_version(client, experiment, {GATE_METRIC: 0.9})
    promote_if_better(client, NAME, "1")
    client.delete_model_version(NAME, "1")  # the SQLite store drops the alias with it...
    assert champion(client) is None
    second = register_version(client, experiment, {GATE_METRIC: 0.4})
    assert promote_if_better(client, NAME, second.version)["reason"] == "no_champion"
    # ...other stores may keep it: put a dangling alias back as such a store would leave it.
    client.delete_model_version(NAME, "2")
    with sqlite3.connect(mlflow.get_tracking_uri().removeprefix("sqlite:///")) as db:
        db.execute(
            "INSERT INTO registered_model_aliases (alias, version, name) VALUES (?, ?, ?)",
            ("champion", 2, NAME),
        )
    candidate = register_version(client, experiment, {GATE_METRIC: 0.3})

    result = promote_if_better(client, NAME, candidate.version)

    assert (result["decision"], result["reason"]) == ("promoted", "champion_version_missing")
    assert champion(client) == "3"
    assert tags(client, candidate)["champion_version"] == "2"
    assert tags(client, candidate)["champion_value"] == "none"


def test_champion_without_the_metric_is_replaced_and_rerun_changes_nothing(store):
    client, experiment = store
    old = register_version(client, experiment, {"valid_accuracy": 0.5})
    client.set_registered_model_alias(NAME, "champion", old.version)  # set by hand, ungated
    new = register_version(client, experiment, {GATE_METRIC: 0.1})

    assert promote_if_better(client, NAME, new.version)["reason"] == "champion_without_metric"
    again = promote_if_better(client, NAME, new.version)

    assert again["decision"] == "already_champion" and again["promoted"] is False
    assert champion(client) == "2"
    assert tags(client, new)["decision"] == "promoted"  # the first record stands


def test_versions_registered_by_run_filters_run_and_model(store):
    client, experiment = store
    run_id = client.create_run(experiment).info.run_id
    first = register_version(client, experiment, {}, run_id=run_id)
    register_version(client, experiment, {})  # another run
    register_version(client, experiment, {}, name="another-model", run_id=run_id)
    second = register_version(client, experiment, {}, run_id=run_id)

    found = versions_registered_by_run(client, NAME, run_id)

    assert (
        [str(v.version) for v in found] == [str(first.version), str(second.version)] == ["1", "3"]
    )
    assert versions_registered_by_run(client, NAME, "0" * 32) == []
