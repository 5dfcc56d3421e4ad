"""Batch scoring on Apache Spark with the registered model."""

from .pipeline import create_pipeline

__all__ = ["create_pipeline"]
