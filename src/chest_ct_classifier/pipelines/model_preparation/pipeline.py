"""Model preparation: the untrained classifier, saved before training."""

from kedro.pipeline import Pipeline, node, pipeline

from .nodes import prepare_classifier


def create_pipeline(**kwargs) -> Pipeline:
    return pipeline(
        [
            node(
                prepare_classifier,
                inputs=["vgg16_weights", "params:model_preparation"],
                outputs=["untrained_model", "weights_info", "weights_tags"],
                name="prepare_classifier",
            )
        ]
    )
