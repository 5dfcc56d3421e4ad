"""Batch scoring on Apache Spark with the registered model."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from kedro.pipeline import Pipeline


def create_pipeline(**kwargs: Any) -> Pipeline:
    """The batch-scoring pipeline (``pipeline.create_pipeline``)."""
    # Imported when called: settings.py imports this package's spark_session for its hook, and
    # the nodes pull in TensorFlow, which every kedro command would then load (`kedro --version`
    # took 12 s instead of 4).
    from .pipeline import create_pipeline as create  # noqa: PLC0415

    return create(**kwargs)


__all__ = ["create_pipeline"]
