"""Batch scoring on Spark: every file scored by the registered model on the executors, so
preprocessing, the precision choice, the out-of-distribution check and DICOM reading all come
with the model, and each Python worker loads it once."""

from __future__ import annotations

import base64
import logging
import re
from typing import Any

import pandas as pd

from chest_ct_classifier.config.batch_scoring import BatchScoringParameters
from chest_ct_classifier.pipelines.inference.nodes import PREDICTION_COLUMNS

logger = logging.getLogger(__name__)

_INTEGER_COLUMNS = ("frame", "instance_number")
_TEXT_COLUMNS = ("series_uid", "sop_uid", "status", "label", "ood_reason", "error")


def answer_schema() -> str:
    """The answer columns (``PREDICTION_COLUMNS`` but ``image``) as Spark DDL."""
    fields = []
    for column in PREDICTION_COLUMNS[1:]:
        kind = "bigint" if column in _INTEGER_COLUMNS else (
            "string" if column in _TEXT_COLUMNS else "double"
        )  # fmt: skip
        fields.append(f"{column} {kind}")
    return ", ".join(fields)


def score_on_spark(files: Any, parameters: BatchScoringParameters) -> Any:
    """One row per image (``image`` relative to the input, then the columns of
    ``predictions.csv``; a row per frame of a multi-frame DICOM file), scored by the
    registered model (``parameters.model_uri``) in each executor's Python workers.

    Each worker loads the model once (the same version everywhere: an alias is resolved here,
    on the driver) and predicts batches of files with it, so preprocessing, the precision
    choice, the out-of-distribution check and DICOM reading are the registered model's own. A
    file that cannot be read gets its error row from the model, never a failed job.

    Why ``mapInPandas`` rather than ``mlflow.pyfunc.spark_udf``: a UDF must give one row per
    input row, while the model answers a multi-frame file with a row per frame; and
    ``spark_udf``'s struct results fail on pandas 3's Arrow-backed strings (PySpark 4.3).
    """
    model_uri = pinned_model_uri(parameters.model_uri)
    import mlflow  # noqa: PLC0415

    tracking_uri = mlflow.get_tracking_uri()
    logger.info("Scoring with %s", model_uri)

    def score(batches: Any) -> Any:
        model = _worker_model(model_uri, tracking_uri)
        for batch in batches:
            yield answers_of(model, batch["image"].tolist(), batch["content"].tolist())

    return files.mapInPandas(score, schema=f"image string, {answer_schema()}")


def answers_of(model: Any, names: list[str], contents: list[bytes]) -> pd.DataFrame:
    """The model's answers for files (``predictions.csv``'s columns), named by ``names``."""
    request = pd.DataFrame(
        {"image": [base64.b64encode(bytes(c)).decode("ascii") for c in contents]}
    )
    answers = pd.DataFrame(model.predict(request))
    positions = answers["image"].astype(int).to_numpy()
    answers["image"] = [names[position] for position in positions]
    for column in PREDICTION_COLUMNS:  # a version registered before a column existed lacks it
        if column not in answers:
            answers[column] = None
    answers = answers[PREDICTION_COLUMNS]
    # plain Python objects: PySpark's Arrow conversion fails on pandas 3's Arrow-backed strings
    for column in _TEXT_COLUMNS:
        answers[column] = answers[column].astype(object).where(answers[column].notna(), None)
    for column in _INTEGER_COLUMNS:
        answers[column] = pd.to_numeric(answers[column]).astype("Int64")
    return answers


_MODELS: dict[str, Any] = {}


def _worker_model(model_uri: str, tracking_uri: str | None) -> Any:
    """The model, loaded once per Python worker process."""
    if model_uri not in _MODELS:
        import mlflow  # noqa: PLC0415

        if tracking_uri:
            mlflow.set_tracking_uri(tracking_uri)
        _MODELS[model_uri] = mlflow.pyfunc.load_model(model_uri)
    return _MODELS[model_uri]


def pinned_model_uri(model_uri: str) -> str:
    """``models:/<name>@<alias>`` as the version the alias names now (every executor loads the
    same one, even if the alias moves during the job); other URIs unchanged."""
    match = re.fullmatch(r"models:/(?P<name>[^/@]+)@(?P<alias>[^/]+)", model_uri)
    if match is None:
        return model_uri
    from mlflow import MlflowClient  # noqa: PLC0415

    version = MlflowClient().get_model_version_by_alias(match["name"], match["alias"])
    return f"models:/{match['name']}/{version.version}"


def predictions_table(scored: Any) -> pd.DataFrame:
    """The scored rows as ``predictions.csv`` has them, ordered by ``image``: collected on the
    driver, so keep it for what fits in its memory (``--to-nodes score_on_spark`` skips it)."""
    table = scored.toPandas().sort_values(["image", "frame"], na_position="first")
    table = table.reset_index(drop=True)[PREDICTION_COLUMNS]
    table[list(_INTEGER_COLUMNS)] = table[list(_INTEGER_COLUMNS)].astype("Int64")
    logger.info("Scored on Spark: %s", table["status"].value_counts().to_dict())
    return table
