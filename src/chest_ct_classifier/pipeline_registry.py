"""Project pipelines."""

from importlib.metadata import version
from pathlib import Path

from kedro.framework.project import find_pipelines
from kedro.pipeline import Pipeline
from kedro_mlflow.pipeline import pipeline_ml_factory

import chest_ct_classifier
from chest_ct_classifier.pipelines.inference.pipeline import (
    SERVING_INPUT,
    create_serving_pipeline,
)
from chest_ct_classifier.registry.champion_gate import MODEL_NAME

TRAINING_FLOW = ("data_ingestion", "model_preparation", "training", "evaluation")
# What the served model needs at prediction time (``mlflow models serve`` installs these when
# it builds an environment; with ``--env-manager local`` it uses the current one).
SERVING_REQUIREMENTS = (
    "mlflow",
    "tensorflow",
    "keras",
    "kedro",
    "kedro-mlflow",
    "pillow",
    "pandas",
)


def registering_model(training: Pipeline) -> Pipeline:
    """``training`` that, when run with MLflow tracking, logs and registers the served model:
    the serving pipeline (request decoding, preprocessing, the calibrated network) with the
    trained model file, as an MLflow pyfunc model named ``MODEL_NAME``.

    The champion gate (hooks.ChampionGateHook) then decides whether it becomes the champion.
    """
    return pipeline_ml_factory(
        training=training,
        inference=create_serving_pipeline(),
        input_name=SERVING_INPUT,
        kpm_kwargs={"copy_mode": "assign"},
        log_model_kwargs={
            "name": "model",
            "registered_model_name": MODEL_NAME,
            "signature": "auto",
            # the package travels with the model, so it loads outside this project
            "code_paths": [str(Path(chest_ct_classifier.__file__).parent)],
            "pip_requirements": [f"{name}=={version(name)}" for name in SERVING_REQUIREMENTS],
        },
    )


def register_pipelines() -> dict[str, Pipeline]:
    """Every pipeline by its folder name; ``__default__`` is the training flow, in order.

    ``__default__`` and ``evaluation`` (the last step of the flow, run on its own by DVC) each
    register the served model at the end of a run. Batch ``inference`` is not part of the
    default run: it needs a trained model and images.
    """
    pipelines = find_pipelines(raise_errors=True)
    # `kedro run --pipelines X` makes find_pipelines load only X: build __default__ from what
    # was loaded.
    flow = sum((pipelines[name] for name in TRAINING_FLOW if name in pipelines), Pipeline([]))
    if "evaluation" in pipelines:
        pipelines["evaluation"] = registering_model(pipelines["evaluation"])
        flow = registering_model(flow)
    pipelines["__default__"] = flow
    return pipelines
