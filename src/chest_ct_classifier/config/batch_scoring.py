"""``conf/base/parameters_batch_scoring.yml``: scoring on Spark with the registered model."""

from __future__ import annotations

from pydantic import Field

from chest_ct_classifier.config.base import Settings

SPARK_TAG = "spark"
"""Nodes tagged with it need a SparkSession: ``hooks.SparkHook`` starts one only for runs that
have them."""


class BatchScoringParameters(Settings):
    input_path: str = Field(min_length=1)
    """Any path Spark reads (a folder, ``hdfs://``, ``s3a://``), a local .zip or a URL to one."""
    glob: str = Field(min_length=1)
    """Which file names to score (Spark's ``pathGlobFilter``), e.g. ``*.dcm``; ``*``: all."""
    model_uri: str = Field(min_length=1)
    """The registered model (``models:/chest-ct-classifier@champion``) or a run's
    (``runs:/<run id>/model``)."""
