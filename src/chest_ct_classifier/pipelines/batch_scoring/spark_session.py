"""The SparkSession of a run, from ``conf/base/spark.yml``: ``local[*]`` by default, any master
(``spark.master``) or a Spark Connect server (``spark.remote``) by configuration; and the hook
that starts it for runs with Spark nodes only (Kedro's PySpark starter starts it for every run:
training would need Java for nothing)."""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping
from typing import Any

from kedro.config import MissingConfigException
from kedro.framework.hooks import hook_impl

SPARK_TAG = "spark"
"""Nodes tagged with it need a SparkSession: the hook starts one only for runs that have them."""


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
