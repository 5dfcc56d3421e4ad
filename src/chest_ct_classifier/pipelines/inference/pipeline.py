"""Batch inference over a folder or archive (``inference.input_path``), and the same prediction
as the served model: the pipeline MLflow logs and registers (see pipeline_registry)."""

from kedro.pipeline import Pipeline, node, pipeline

from .nodes import images_from_request, predict_images

# The input of the served model: a table of base64 images (see images_from_request).
SERVING_INPUT = "serving_input"


def create_pipeline(**kwargs) -> Pipeline:
    return pipeline(
        [
            node(
                predict_images,
                inputs=["inference_images", "trained_model", "params:inference.batch_size"],
                outputs="predictions",
                name="predict_images",
            )
        ]
    )


def create_serving_pipeline() -> Pipeline:
    """Request table in, predictions table out: preprocessing, the network and its calibrated
    probabilities, all in the one ``predict_images``."""
    return pipeline(
        [
            node(
                images_from_request,
                inputs=SERVING_INPUT,
                outputs="request_images",
                name="images_from_request",
            ),
            node(
                predict_images,
                inputs=["request_images", "trained_model", "params:inference.batch_size"],
                outputs="served_predictions",
                name="predict_request_images",
            ),
        ]
    )
