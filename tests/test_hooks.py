"""ChampionGateHook: its place after kedro-mlflow's hook, and what it does at the end of runs
that register a model version and runs that do not (real MLflow, temporary SQLite store)."""

from __future__ import annotations

import logging
import sys
from types import SimpleNamespace

import mlflow
import pytest
from kedro.framework.hooks import _create_hook_manager
from kedro.pipeline import Pipeline, node, pipeline
from kedro_mlflow.framework.hooks.mlflow_hook import MlflowHook

from chest_ct_classifier import hooks
from chest_ct_classifier.hooks import ChampionGateHook
from chest_ct_classifier.registry.champion_gate import GATE_METRIC
from tests.registry.test_champion_gate import NAME, champion, register_version, sqlite_store, tags


@pytest.fixture
def store(tmp_path, tmp_path_factory, monkeypatch):
    with sqlite_store(tmp_path, tmp_path_factory, monkeypatch) as client_and_experiment:
        yield client_and_experiment


class Identity(mlflow.pyfunc.PythonModel):
    def predict(self, context, model_input, params=None):
        return model_input


@pytest.mark.parametrize("project_hooks_first", [True, False])
def test_gate_runs_after_kedro_mlflow_started_and_registered(project_hooks_first):
    """KedroSession registers settings.HOOKS, then plugins' entry points; pluggy calls the last
    registered first. ``trylast`` keeps the gate after MlflowHook in either order."""
    manager = _create_hook_manager()
    gate, kedro_mlflow = ChampionGateHook(), MlflowHook()
    for hook in (gate, kedro_mlflow) if project_hooks_first else (kedro_mlflow, gate):
        manager.register(hook)

    for name in ("before_pipeline_run", "after_pipeline_run"):
        called = [impl.plugin for impl in reversed(getattr(manager.hook, name).get_hookimpls())]
        assert called.index(kedro_mlflow) < called.index(gate), name


def test_hook_gates_the_version_its_run_registered_with_log_model(store):
    client, experiment = store
    gate = ChampionGateHook(model_name=NAME)
    with mlflow.start_run(experiment_id=experiment):  # as kedro-mlflow's before_pipeline_run
        gate.before_pipeline_run()
        mlflow.log_metric(GATE_METRIC, 0.72)
        # as MlflowModelTrackingDataset or pipeline_ml_factory's log_model_kwargs do
        mlflow.pyfunc.log_model(
            name="model", python_model=Identity(), registered_model_name=NAME, pip_requirements=[]
        )
    gate.after_pipeline_run()  # kedro-mlflow has ended the run by now

    assert champion(client) == "1"
    assert tags(client, "1")["candidate_value"] == "0.72"


def test_hook_gates_only_versions_registered_during_the_kedro_run(store, caplog):
    client, experiment = store
    gate = ChampionGateHook(model_name=NAME)
    # a run opened before `kedro run` (kedro-mlflow then reuses it), with a version already
    with mlflow.start_run(experiment_id=experiment) as run:
        register_version(client, experiment, {GATE_METRIC: 0.9}, run_id=run.info.run_id)
        gate.before_pipeline_run()
        register_version(client, experiment, {}, run_id=run.info.run_id)
        register_version(client, experiment, {GATE_METRIC: 0.5}, run_id=run.info.run_id)
        with caplog.at_level(logging.INFO, logger="chest_ct_classifier"):
            gate.after_pipeline_run()

    assert "registered versions 2, 3" in caplog.text  # a warning: only the newest is gated
    assert tags(client, "1") == {}
    assert tags(client, "2") == {}
    assert tags(client, "3")["decision"] == "promoted"
    assert champion(client) == "3"


def test_hook_does_nothing_for_runs_that_register_nothing(store, caplog):
    client, experiment = store
    gate = ChampionGateHook(model_name=NAME)
    with caplog.at_level(logging.DEBUG, logger="chest_ct_classifier"):
        gate.before_pipeline_run()  # tracking disabled (inference): no active run
        gate.after_pipeline_run()
        with mlflow.start_run(experiment_id=experiment):  # data_ingestion: a run, no model
            gate.before_pipeline_run()
            mlflow.log_metric(GATE_METRIC, 0.5)
        gate.after_pipeline_run()

    assert client.search_model_versions(f"name='{NAME}'") == []
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]


def test_a_failing_gate_logs_an_error_and_does_not_fail_the_run(store, caplog, monkeypatch):
    client, experiment = store

    def broken(*args, **kwargs):
        raise RuntimeError("registry unreachable")

    monkeypatch.setattr(hooks, "promote_if_better", broken)
    gate = ChampionGateHook(model_name=NAME)
    with mlflow.start_run(experiment_id=experiment) as run:
        gate.before_pipeline_run()
        register_version(client, experiment, {GATE_METRIC: 0.5}, run_id=run.info.run_id)
    with caplog.at_level(logging.ERROR, logger="chest_ct_classifier"):
        gate.after_pipeline_run()  # does not raise

    (record,) = caplog.records
    assert record.levelno == logging.ERROR and "registry unreachable" in caplog.text
    assert champion(client) is None


def test_a_failed_pipeline_gates_nothing(store):
    client, experiment = store
    gate = ChampionGateHook(model_name=NAME)
    with mlflow.start_run(experiment_id=experiment) as run:
        gate.before_pipeline_run()
        register_version(client, experiment, {GATE_METRIC: 0.5}, run_id=run.info.run_id)
    gate.on_pipeline_error()
    gate.after_pipeline_run()  # a later call without a new before_pipeline_run

    assert champion(client) is None


def test_node_times_are_logged_and_recorded_in_the_active_run(store, caplog):
    from types import SimpleNamespace

    from chest_ct_classifier.hooks import NodeTimingHook

    client, experiment = store
    timing = NodeTimingHook()
    node = SimpleNamespace(name="cache_activations")
    with caplog.at_level(logging.INFO, logger="chest_ct_classifier.hooks"):
        with mlflow.start_run(experiment_id=experiment) as run:
            timing.before_pipeline_run()
            timing.before_node_run(node)
            timing.after_node_run(node)
        timing.after_pipeline_run()
    metrics = client.get_run(run.info.run_id).data.metrics
    assert set(metrics) == {"seconds.cache_activations"}
    assert metrics["seconds.cache_activations"] >= 0
    assert "Node cache_activations took" in caplog.text
    assert "Node times (" in caplog.text
    # without a run (tracking disabled) it only logs
    timing.before_node_run(node)
    timing.after_node_run(node)


@pytest.mark.parametrize("project_hooks_first", [True, False])
def test_kedro_mlflow_sees_plain_parameters_while_the_node_keeps_its_settings(
    project_hooks_first,
):
    """kedro-mlflow flattens only dicts when it logs a node's ``params:`` inputs: the validation
    hook runs first (``tryfirst``) and hands the hooks' copy of the inputs plain values."""
    from chest_ct_classifier.hooks import ParameterValidationHook
    from tests.conftest import settings

    manager = _create_hook_manager()
    validation, kedro_mlflow = ParameterValidationHook(), MlflowHook()
    for hook in (validation, kedro_mlflow) if project_hooks_first else (kedro_mlflow, validation):
        manager.register(hook)
    order = [impl.plugin for impl in reversed(manager.hook.before_node_run.get_hookimpls())]
    assert order.index(validation) < order.index(kedro_mlflow)

    training = settings("training")
    node_inputs = {"params:training": training, "cached_activations": object()}
    seen_by_hooks = dict(node_inputs)  # Kedro hands hooks a shallow copy
    validation.before_node_run(seen_by_hooks)
    assert seen_by_hooks["params:training"] == training.model_dump()
    assert seen_by_hooks["params:training"]["phase1"]["max_epochs"] == training.phase1.max_epochs
    assert seen_by_hooks["cached_activations"] is node_inputs["cached_activations"]
    assert node_inputs["params:training"] is training


def test_parameters_are_checked_when_the_context_is_created():
    from chest_ct_classifier.config.parameters import ParameterError
    from chest_ct_classifier.hooks import ParameterValidationHook
    from tests.conftest import _base_parameters

    class Context:
        def __init__(self, parameters):
            self.config_loader = {"parameters": parameters}

    ParameterValidationHook().after_context_created(Context(_base_parameters()))
    broken = {**_base_parameters(), "inference": {**_base_parameters()["inference"], "x": 1}}
    with pytest.raises(ParameterError, match=r"inference\.x: unknown key"):
        ParameterValidationHook().after_context_created(Context(broken))


def test_a_second_run_of_the_project_is_refused_naming_the_first(tmp_path):
    from types import SimpleNamespace

    from chest_ct_classifier.hooks import RUN_LOCK_FILE, RunLockHook

    context = SimpleNamespace(project_path=tmp_path)
    first, second = RunLockHook(), RunLockHook()
    first.after_context_created(context)
    second.after_context_created(context)
    first.before_pipeline_run()
    with pytest.raises(RuntimeError, match=r"Another run of this project is going on \(pid \d+"):
        second.before_pipeline_run()
    first.after_pipeline_run()  # the first ends: the next run goes ahead
    second.before_pipeline_run()
    second.on_pipeline_error()
    assert (tmp_path / RUN_LOCK_FILE).is_file()


def _pipeline(*tags: str) -> Pipeline:
    return pipeline([node(lambda: 1, inputs=None, outputs="x", name="n", tags=list(tags))])


@pytest.mark.parametrize("spark_yml", [None, {"spark.master": "local[2]"}])
def test_spark_starts_only_for_runs_with_spark_nodes_with_the_configured_properties(
    monkeypatch, spark_yml
):
    started = []
    monkeypatch.setattr(hooks, "spark_session", started.append)
    hook = hooks.SparkHook()
    hook.after_context_created(
        SimpleNamespace(config_loader={} if spark_yml is None else {"spark": spark_yml})
    )
    hook.before_pipeline_run(_pipeline("training"))
    assert started == []  # training needs no Java
    hook.before_pipeline_run(_pipeline(hooks.SPARK_TAG))
    assert started == [spark_yml or {}]


def test_spark_that_cannot_start_says_what_to_install(monkeypatch):
    from pyspark.sql import SparkSession

    monkeypatch.setenv("PYSPARK_PYTHON", sys.executable)  # set by a local master; restored

    def no_java(self):
        raise RuntimeError("Java gateway process exited before sending its port number")

    monkeypatch.setattr(type(SparkSession.builder), "getOrCreate", no_java)
    with pytest.raises(RuntimeError, match=r"Spark could not start.*Java runtime 17"):
        hooks.spark_session({"spark.master": "local[1]"})
