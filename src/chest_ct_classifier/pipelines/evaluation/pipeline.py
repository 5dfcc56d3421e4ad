"""Evaluation: metrics and plots to data/08_reporting and MLflow; the model registered."""

from kedro.pipeline import Pipeline, node, pipeline

from .nodes import (
    evaluate_classifier,
    metrics_for_mlflow,
    model_for_registry,
    plot_confusion_matrices,
    plot_grad_cam_examples,
    plot_reliability_diagrams,
)


def create_pipeline(**kwargs) -> Pipeline:
    return pipeline(
        [
            node(
                evaluate_classifier,
                inputs=[
                    "trained_model",
                    "frozen_features",
                    "weights_info",
                    "calibration",
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
            node(
                plot_grad_cam_examples,
                inputs=["trained_model", "ingested_images", "frozen_features", "params:evaluation"],
                outputs="grad_cam_plot",
                name="plot_grad_cam_examples",
            ),
            node(
                model_for_registry,
                "trained_model",
                "registered_model",
                name="register_model",
            ),
        ]
    )
