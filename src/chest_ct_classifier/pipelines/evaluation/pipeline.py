"""Evaluation: metrics and plots to data/08_reporting and MLflow; an example request for the
served model (the model itself is logged and registered by pipeline_registry's
pipeline_ml_factory at the end of the run)."""

from kedro.pipeline import Pipeline, node, pipeline

from chest_ct_classifier.pipelines.inference.nodes import serving_input_example

from .nodes import (
    check_reduced_precisions,
    evaluate_classifier,
    measure_ood_detector,
    measure_seed_spread,
    metrics_for_mlflow,
    plot_confusion_matrices,
    plot_grad_cam_examples,
    plot_reliability_diagrams,
    plot_roc_curves,
    write_model_card,
)


def create_pipeline(**kwargs) -> Pipeline:
    return pipeline(
        [
            node(
                measure_ood_detector,
                inputs=[
                    "candidate_model",
                    "candidate_ood_detector",
                    "cached_activations",
                    "ingested_images",
                    "ood_reference_images",
                    "params:evaluation",
                    "params:preprocessing.dicom_window",
                ],
                outputs="ood_report",
                name="measure_ood_detector",
            ),
            node(
                measure_seed_spread,
                inputs=[
                    "candidate_model",
                    "cached_activations",
                    "untrained_model",
                    "training_schedule",
                    "calibration",
                    "params:training",
                    "params:evaluation",
                ],
                outputs="seed_spread",
                name="measure_seed_spread",
            ),
            node(
                evaluate_classifier,
                inputs=[
                    "candidate_model",
                    "cached_activations",
                    "weights_info",
                    "calibration",
                    "ood_report",
                    "seed_spread",
                    "params:evaluation",
                ],
                outputs="metrics",
                name="evaluate_classifier",
            ),
            node(metrics_for_mlflow, "metrics", "mlflow_metrics", name="metrics_for_mlflow"),
            node(
                plot_confusion_matrices,
                "metrics",
                "confusion_matrix_plot",
                name="plot_confusion_matrices",
            ),
            node(
                plot_reliability_diagrams,
                "metrics",
                "reliability_plot",
                name="plot_reliability_diagrams",
            ),
            node(plot_roc_curves, "metrics", "roc_plot", name="plot_roc_curves"),
            node(
                plot_grad_cam_examples,
                inputs=[
                    "candidate_model",
                    "ingested_images",
                    "cached_activations",
                    "params:evaluation",
                    "params:preprocessing.dicom_window",
                ],
                outputs="grad_cam_plot",
                name="plot_grad_cam_examples",
            ),
            node(
                check_reduced_precisions,
                inputs=[
                    "candidate_model",
                    "candidate_int8_model",
                    "ingested_images",
                    "image_table",
                    "params:evaluation",
                    "params:preprocessing.dicom_window",
                    "cached_activations",  # fp32's answers, computed once
                ],
                outputs=["candidate_precision_gate", "precision_metrics"],
                name="check_reduced_precisions",
            ),
            node(
                write_model_card,
                inputs=[
                    "candidate_model",
                    "metrics",
                    "data_quality",
                    "ingestion_summary",
                    "training_schedule",
                    "candidate_precision_gate",
                ],
                outputs=["model_card", "model_card_markdown"],
                name="write_model_card",
            ),
            node(
                serving_input_example,
                inputs=["ingested_images", "image_table"],
                outputs="serving_input",
                name="serving_input_example",
            ),
        ]
    )
