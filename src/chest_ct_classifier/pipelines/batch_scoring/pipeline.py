"""Batch scoring on Spark (``batch_scoring.input_path``): the registered model scores every
file in ``spark_udf``; Parquet for any size, and the same CSV as the local pipeline."""

from kedro.pipeline import Pipeline, node, pipeline

from chest_ct_classifier.config.batch_scoring import SPARK_TAG

from .nodes import predictions_table, score_on_spark


def create_pipeline(**kwargs) -> Pipeline:
    return pipeline(
        [
            node(
                score_on_spark,
                inputs=["batch_scoring_files", "params:batch_scoring"],
                outputs="batch_predictions_parquet",
                name="score_on_spark",
                tags=[SPARK_TAG],
            ),
            node(
                predictions_table,
                inputs="batch_predictions_parquet",
                outputs="batch_predictions",
                name="batch_predictions_table",
                tags=[SPARK_TAG],
            ),
        ]
    )
