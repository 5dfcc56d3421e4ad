"""Training: cache the frozen base's features, then train the head on them."""

from kedro.pipeline import Pipeline, node, pipeline

from .nodes import cache_frozen_features, calibrate_classifier, train_classifier


def create_pipeline(**kwargs) -> Pipeline:
    return pipeline(
        [
            node(
                cache_frozen_features,
                inputs=["ingested_images", "image_table", "untrained_model", "params:training"],
                outputs="frozen_features",
                name="cache_frozen_features",
            ),
            node(
                train_classifier,
                inputs=["frozen_features", "untrained_model", "params:training"],
                outputs=["uncalibrated_model", "training_history"],
                name="train_classifier",
            ),
            node(
                calibrate_classifier,
                inputs=["uncalibrated_model", "frozen_features", "params:training"],
                outputs=["trained_model", "calibration"],
                name="calibrate_classifier",
            ),
        ]
    )
