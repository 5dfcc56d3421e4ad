"""Batch inference over a folder or zip of images (``inference.input_path``)."""

from kedro.pipeline import Pipeline, node, pipeline

from .nodes import predict_images


def create_pipeline(**kwargs) -> Pipeline:
    return pipeline(
        [
            node(
                predict_images,
                inputs=["inference_images", "trained_model", "params:inference"],
                outputs="predictions",
                name="predict_images",
            )
        ]
    )
