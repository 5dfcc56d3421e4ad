"""Batch inference over a folder or archive (``inference.input_path``), and the same prediction
as the served model: the pipeline MLflow logs and registers (see pipeline_registry)."""

from kedro.pipeline import Pipeline, node, pipeline

from .nodes import audit_record_of_run, images_from_request, predict_images, summarize_series

# The input of the served model: a table of base64 images (see images_from_request).
SERVING_INPUT = "serving_input"
# The model in each precision, the gate that allows the reduced ones, and the choice; the
# out-of-distribution detector fitted on the model's features, and when an answer is uncertain.
_MODEL_INPUTS = [
    "trained_model",
    "params:inference.batch_size",
    "int8_model",
    "precision_gate",
    "params:inference.precision",
    "ood_detector",
    "params:inference.uncertain_below",
    "params:preprocessing.dicom_window",
]


def create_pipeline(**kwargs) -> Pipeline:
    return pipeline(
        [
            node(
                predict_images,
                inputs=["inference_images", *_MODEL_INPUTS],
                outputs="predictions",
                name="predict_images",
            ),
            node(
                summarize_series,
                inputs="predictions",
                outputs="series_predictions",
                name="summarize_series",
            ),
            node(
                audit_record_of_run,
                inputs=["predictions", "trained_model", "params:inference.input_path"],
                outputs="inference_audit",
                name="audit_batch_inference",
            ),
        ]
    )


def create_serving_pipeline() -> Pipeline:
    """Request table in, predictions table out: preprocessing, the network (in the precision
    the gate allows), its probabilities (temperature-scaled if training fitted one) and the
    out-of-distribution check, all in the one ``predict_images``."""
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
                inputs=["request_images", *_MODEL_INPUTS],
                outputs="served_predictions",
                name="predict_request_images",
            ),
        ]
    )
