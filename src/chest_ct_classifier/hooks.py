"""Project hooks (registered in ``settings.HOOKS``).

``ParameterValidationHook`` checks every parameter before the first node.

``ChampionGateHook`` applies the champion gate
(:mod:`chest_ct_classifier.registry.champion_gate`) to the model version a successful
``kedro run`` registered.

How it finds that version: kedro-mlflow's ``MlflowHook`` starts the MLflow run in its
``before_pipeline_run``, and registers the model in its ``after_pipeline_run`` (a
``pipeline_ml_factory`` pipeline) or a node registers it while saving a catalog
``MlflowModelTrackingDataset``, in either case under that run (``ModelVersion.run_id``), and
ends the run in its ``after_pipeline_run``. This hook's implementations are ``trylast``, so they
run after kedro-mlflow's whatever the registration order: ``before_pipeline_run`` notes the
active run's id and the versions that run had already registered (none, unless a run was
opened before ``kedro run``); ``after_pipeline_run`` gates the newest version registered since,
reading it through ``MlflowClient`` (the run has ended by then).

Runs that register nothing (``--pipelines data_ingestion``, the inference pipeline, for which
kedro-mlflow starts no run) leave it silent. The gate never fails a successful run: any error is
logged at ERROR level and the run's result stands.

``SparkHook`` starts the SparkSession of ``conf/<env>/spark.yml`` (``local[*]`` by default, any
master in ``spark.master`` or a Spark Connect server in ``spark.remote``) before runs with Spark
nodes only: Kedro's PySpark starter starts it for every run, and training would need Java for
nothing.
"""

from __future__ import annotations

import logging
import os
import sys
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import mlflow
from kedro.config import MissingConfigException
from kedro.framework.hooks import hook_impl

try:
    import fcntl
except ImportError:  # Windows: no flock; runs are not locked there
    fcntl = None
from mlflow import MlflowClient
from pydantic import BaseModel

from chest_ct_classifier.config.batch_scoring import SPARK_TAG
from chest_ct_classifier.config.parameters import validate_parameters
from chest_ct_classifier.redaction import RedactingFilter, redact_values
from chest_ct_classifier.registry.champion_gate import (
    CHAMPION_ALIAS,
    GATE_METRIC,
    MODEL_NAME,
    promote_if_better,
    versions_registered_by_run,
)
from chest_ct_classifier.registry.release import RELEASE_DATASET

logger = logging.getLogger(__name__)

RUN_LOCK_FILE = Path("logs") / "kedro-run.lock"
"""Held by the running ``kedro run`` of a project (RunLockHook)."""


class ChampionGateHook:
    """After a successful run that registered a version of ``model_name``, move ``alias`` to it
    when its run's ``metric`` beats the champion's, and record the decision on the version."""

    def __init__(
        self,
        model_name: str = MODEL_NAME,
        metric: str = GATE_METRIC,
        alias: str = CHAMPION_ALIAS,
    ) -> None:
        self.model_name = model_name
        self.metric = metric
        self.alias = alias
        self._run_id: str | None = None
        self._versions_before: frozenset[str] = frozenset()

    @hook_impl(trylast=True)
    def before_pipeline_run(self) -> None:
        """Note the MLflow run of this ``kedro run`` (kedro-mlflow has started it by now)."""
        self._run_id, self._versions_before = None, frozenset()
        run = mlflow.active_run()
        if run is None:  # tracking disabled for this pipeline
            return
        try:
            registered = versions_registered_by_run(
                MlflowClient(), self.model_name, run.info.run_id
            )
        except Exception:
            logger.exception("Champion gate disabled for this run: cannot read the registry")
            return
        self._run_id = run.info.run_id
        self._versions_before = frozenset(str(v.version) for v in registered)

    @hook_impl(trylast=True)
    def after_pipeline_run(self) -> None:
        """Gate the newest version this run registered, if any; never raise."""
        run_id, self._run_id = self._run_id, None
        if run_id is None:
            return
        try:
            client = MlflowClient()
            new = [
                v
                for v in versions_registered_by_run(client, self.model_name, run_id)
                if str(v.version) not in self._versions_before
            ]
            if not new:
                logger.debug("Champion gate: run %s registered no %s", run_id, self.model_name)
                return
            if len(new) > 1:
                logger.warning(
                    "Champion gate: run %s registered versions %s of %s; gating only the newest",
                    run_id,
                    ", ".join(str(v.version) for v in new),
                    self.model_name,
                )
            promote_if_better(client, self.model_name, new[-1].version, self.metric, self.alias)
        except Exception:
            logger.exception(
                "Champion gate failed for run %s (%s, alias '%s'); the run itself succeeded",
                run_id,
                self.model_name,
                self.alias,
            )

    @hook_impl
    def on_pipeline_error(self) -> None:
        """A failed run gates nothing."""
        self._run_id, self._versions_before = None, frozenset()


class NodeTimingHook:
    """Wall time of every node: one log line each, a summary at the end of the run, and an
    MLflow metric ``seconds.<node>`` in the run's tracking (kedro-mlflow's run is active while
    nodes run). ``scripts/benchmark_training.py --stages`` reads them back."""

    def __init__(self) -> None:
        self._started: dict[str, float] = {}
        self._seconds: dict[str, float] = {}

    @hook_impl
    def before_pipeline_run(self) -> None:
        self._started, self._seconds = {}, {}

    @hook_impl
    def before_node_run(self, node) -> None:
        self._started[node.name] = time.perf_counter()

    @hook_impl
    def after_node_run(self, node) -> None:
        started = self._started.pop(node.name, None)
        if started is None:
            return
        seconds = time.perf_counter() - started
        self._seconds[node.name] = seconds
        logger.info("Node %s took %.1f s", node.name, seconds)
        if mlflow.active_run() is not None:
            try:
                mlflow.log_metric(f"seconds.{node.name}", seconds)
            except Exception:  # timing is a report, never a reason to fail a run
                logger.exception("Cannot log the time of node %s to MLflow", node.name)

    @hook_impl
    def after_pipeline_run(self) -> None:
        if self._seconds:
            total = sum(self._seconds.values())
            slowest = sorted(self._seconds.items(), key=lambda item: -item[1])
            logger.info(
                "Node times (%.0f s in all): %s",
                total,
                ", ".join(f"{name} {seconds:.0f} s" for name, seconds in slowest),
            )


class ParameterValidationHook:
    """Parameters are checked when the run's context is created, before kedro-mlflow opens a
    run and before any node: an unknown key, a wrong type or a value outside its allowed set
    stops ``kedro run`` in seconds with every problem named (``config.parameters``). Kedro
    then gives each node its ``params:`` inputs as the settings models its type hints name."""

    @hook_impl(tryfirst=True)
    def after_context_created(self, context) -> None:
        # the raw parameters, runtime --params included: Kedro's own per-node conversion
        # (context.params) would report a subset of the problems, less plainly
        validate_parameters(context.config_loader["parameters"])

    @hook_impl(tryfirst=True)
    def before_pipeline_run(self, run_params: dict[str, Any]) -> None:
        """kedro-mlflow writes the run's parameters as MLflow tags, ``runtime_params`` (the
        ``--params`` of the command) among them: without the credentials of any URL there."""
        if run_params.get("runtime_params"):
            run_params["runtime_params"] = redact_values(run_params["runtime_params"])

    @hook_impl(tryfirst=True)
    def before_node_run(self, inputs: dict[str, Any]) -> None:
        """kedro-mlflow logs a node's ``params:`` inputs from the dict hooks receive, and
        flattens only dicts (``training.phase1.max_epochs``): hand it plain values, with the
        credentials of any URL (a data source's) redacted. Hooks get a copy of the inputs, so
        the node itself still receives the settings models, URLs whole."""
        for name, value in inputs.items():
            if name.startswith("params:"):
                inputs[name] = redact_values(
                    value.model_dump() if isinstance(value, BaseModel) else value
                )


class ReleaseHook:
    """After a successful run that evaluated the candidate model (every evaluation node ran),
    serve it: saving the catalog's ``model_release`` copies the candidate files over the served
    ones all at once, keeping those it replaces (registry.release). A run that fails or is
    killed before this point leaves the served model and its reports as they were."""

    @hook_impl
    def after_pipeline_run(self, run_params: dict[str, Any], pipeline, catalog) -> None:
        ran = {node.name for node in pipeline.nodes}
        if not _evaluation_nodes() <= ran:
            return
        catalog.save(
            RELEASE_DATASET,
            {
                "kedro_session": run_params.get("session_id"),
                "promoted_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            },
        )


def _evaluation_nodes() -> set[str]:
    from chest_ct_classifier.pipelines.evaluation.pipeline import create_pipeline  # noqa: PLC0415

    return {node.name for node in create_pipeline().nodes}


class LogRedactionHook:
    """Every log handler writes URLs without their credentials (a data source may carry them),
    whichever library logged them: a filter on each handler once the project's logging is set
    up (Kedro allows no project classes in conf/logging.yml without an allow-list variable)."""

    @hook_impl
    def after_context_created(self) -> None:
        loggers = [logging.getLogger(), *map(logging.getLogger, logging.root.manager.loggerDict)]
        for handler in {handler for each in loggers for handler in each.handlers}:
            if not any(isinstance(f, RedactingFilter) for f in handler.filters):
                handler.addFilter(RedactingFilter())


class RunLockHook:
    """One run of a project at a time. Two runs (a second terminal, ``/train`` during ``dvc
    repro``) would write the same models and reports; the second is refused before its first
    node, naming the first. The lock is the operating system's (``flock``): it ends with its
    process, so a killed run leaves nothing to clean up."""

    def __init__(self) -> None:
        self._path: Path | None = None
        self._held = None

    @hook_impl
    def after_context_created(self, context) -> None:
        self._path = Path(context.project_path) / RUN_LOCK_FILE

    @hook_impl(tryfirst=True)
    def before_pipeline_run(self) -> None:
        if self._path is None or fcntl is None:  # no context yet, or no flock (Windows)
            return
        self._path.parent.mkdir(parents=True, exist_ok=True)
        handle = self._path.open("a+")
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            holder = handle.read().strip() or "another process"
            handle.close()
            raise RuntimeError(
                f"Another run of this project is going on ({holder}; lock {self._path}). Wait "
                "for it to finish, or stop it, then run again: two runs would write the same "
                "models and reports."
            ) from None
        handle.seek(0)
        handle.truncate()
        handle.write(f"pid {os.getpid()}, started {time.strftime('%Y-%m-%d %H:%M:%S')}\n")
        handle.flush()
        self._held = handle

    @hook_impl
    def after_pipeline_run(self) -> None:
        self._release()

    @hook_impl
    def on_pipeline_error(self) -> None:
        self._release()

    def _release(self) -> None:
        if self._held is not None:
            self._held.close()  # closing the file ends the lock
            self._held = None


def spark_session(config: Mapping[str, Any]):  # -> pyspark.sql.SparkSession
    """The session the configuration describes (started once; later calls get the same one).

    On a local master the Python workers run this interpreter (the project's environment)
    unless ``PYSPARK_PYTHON`` says otherwise; on a cluster, each executor needs the
    registered model's requirements (docs/batch-scoring.md).

    Raises:
        RuntimeError: Java is missing or Spark cannot start; says what to install.
    """
    from pyspark.sql import SparkSession  # noqa: PLC0415 (only runs that score on Spark)

    settings = {str(key): str(value) for key, value in config.items()}
    remote = settings.pop("spark.remote", None)
    builder = SparkSession.builder
    if remote:
        builder = builder.remote(remote)
    else:
        settings.setdefault("spark.master", "local[*]")
        if settings["spark.master"].startswith("local"):
            # pyspark starts its Python workers with PYSPARK_PYTHON (default: python3 on PATH)
            os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    for key, value in settings.items():
        builder = builder.config(key, value)
    try:
        return builder.getOrCreate()
    except Exception as exc:  # py4j and Spark raise many types when Java is missing or broken
        raise RuntimeError(
            f"Spark could not start ({type(exc).__name__}: {str(exc).splitlines()[0][:200]}). "
            "Spark needs a Java runtime 17 or newer: `apt-get install openjdk-17-jre-headless` "
            "(Debian), or set JAVA_HOME."
        ) from exc


class SparkHook:
    """Starts the SparkSession of ``conf/<env>/spark.yml`` before a run whose pipeline has
    Spark nodes (tag ``spark``), and only then: training needs no Java."""

    def __init__(self) -> None:
        self._config: dict[str, Any] = {}

    @hook_impl
    def after_context_created(self, context) -> None:
        try:
            self._config = dict(context.config_loader["spark"])
        except (KeyError, MissingConfigException):
            self._config = {}

    @hook_impl
    def before_pipeline_run(self, pipeline) -> None:
        if any(SPARK_TAG in node.tags for node in pipeline.nodes):
            spark_session(self._config)
