"""Training: cache the frozen layers' activations, choose the schedule on a leak-free hold-out,
refit on train, fold in a temperature when ``calibration.fit_on`` asks, write the int8
convolutions."""

from kedro.pipeline import Pipeline, node, pipeline

from chest_ct_classifier.model.numeric_precision import int8_feature_extractor

from .nodes import (
    cache_activations,
    calibrate_classifier,
    choose_training_schedule,
    fit_ood_detector,
    train_classifier,
)


def create_pipeline(**kwargs) -> Pipeline:
    return pipeline(
        [
            node(
                cache_activations,
                inputs=[
                    "ingested_images",
                    "image_table",
                    "untrained_model",
                    "params:training",
                    "params:preprocessing.dicom_window",
                ],
                outputs="cached_activations",
                name="cache_activations",
            ),
            node(
                choose_training_schedule,
                inputs=["cached_activations", "untrained_model", "params:training"],
                outputs=["training_schedule", "selection_history", "holdout_predictions"],
                name="choose_training_schedule",
            ),
            node(
                train_classifier,
                inputs=[
                    "cached_activations",
                    "untrained_model",
                    "training_schedule",
                    "params:training",
                ],
                outputs=["uncalibrated_model", "training_history"],
                name="train_classifier",
            ),
            node(
                calibrate_classifier,
                inputs=[
                    "uncalibrated_model",
                    "cached_activations",
                    "holdout_predictions",
                    "params:training",
                ],
                outputs=["candidate_model", "calibration"],
                name="calibrate_classifier",
            ),
            node(
                fit_ood_detector,
                inputs=[
                    "candidate_model",
                    "cached_activations",
                    "holdout_predictions",
                    "params:training",
                ],
                outputs="candidate_ood_detector",
                name="fit_ood_detector",
            ),
            node(
                int8_feature_extractor,
                inputs="candidate_model",
                outputs="candidate_int8_model",
                name="quantize_classifier",
            ),
        ]
    )
