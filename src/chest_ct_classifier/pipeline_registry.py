"""Project pipelines."""

import base64
import io
from functools import cache
from pathlib import Path

import numpy as np
import pandas as pd
from kedro.framework.project import find_pipelines
from kedro.pipeline import Pipeline, pipeline
from kedro_mlflow.pipeline import pipeline_ml_factory
from PIL import Image

import chest_ct_classifier
from chest_ct_classifier.pipelines.inference.pipeline import (
    SERVING_INPUT,
    create_serving_pipeline,
)
from chest_ct_classifier.registry.champion_gate import MODEL_NAME
from chest_ct_classifier.registry.model_environment import pinned_requirements
from chest_ct_classifier.registry.release import CANDIDATE_OF_SERVED

TRAINING_FLOW = ("data_ingestion", "model_preparation", "training", "evaluation")
# What loading the served model and predicting with it imports, beside the package itself
# (which travels with the model, code_paths): MLflow's loader, kedro-mlflow's
# KedroPipelineModel (which imports kedro-datasets, not among kedro-mlflow's requirements),
# Kedro's catalog and runner, kedro-datasets' JSONDataset (the precision gate) and PickleDataset
# (the parameters, stdlib pickle: no extra needed), and the libraries of the serving code
# (request decoding, preprocessing with DICOM and its decoders, the network in each precision).
# The model is logged with
# these and all they require, each pinned as installed from uv.lock (model_environment);
# tests/integration/test_registered_model_environment.py predicts in an environment made from
# nothing else.
SERVING_REQUIREMENTS = (
    "mlflow",
    "kedro-mlflow",
    "kedro",
    "kedro-datasets[json-jsondataset]",
    "tensorflow",
    "keras",
    "numpy",
    "pandas",
    "pillow",
    "pydicom",
    "pylibjpeg",
    "pylibjpeg-libjpeg",
    "pylibjpeg-openjpeg",
    "pylibjpeg-rle",
)


def logged_input_example() -> pd.DataFrame:
    """A request to the served model, logged with it as its input example (MLflow shows it and
    checks at logging that the model answers it): one small greyscale PNG, a bright disc on
    black, base64 in column ``image``, as ``images_from_request`` reads requests. Made here:
    ``log_model_kwargs`` are fixed when the pipelines are registered, before a run writes the
    sample request of real images (``serving_input``); and every version carries the same."""
    size = 32
    y, x = np.mgrid[:size, :size] - (size - 1) / 2
    disc = np.where(x**2 + y**2 <= (size / 3) ** 2, 200, 20).astype(np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(disc).save(buffer, format="PNG")
    return pd.DataFrame({"image": [base64.b64encode(buffer.getvalue()).decode("ascii")]})


@cache
def _pinned_serving_requirements() -> tuple[str, ...]:
    return tuple(pinned_requirements(SERVING_REQUIREMENTS))


def registering_model(training: Pipeline) -> Pipeline:
    """``training`` that, when run with MLflow tracking, logs and registers the served model:
    the serving pipeline (request decoding, preprocessing, the trained network) with the
    trained model file, as an MLflow pyfunc model named ``MODEL_NAME``.

    The champion gate (hooks.ChampionGateHook) then decides whether it becomes the champion.
    """
    return pipeline_ml_factory(
        training=training,
        # the candidate this run evaluated (the served files change only after the run)
        inference=pipeline(create_serving_pipeline(), inputs=CANDIDATE_OF_SERVED),
        input_name=SERVING_INPUT,
        kpm_kwargs={"copy_mode": "assign"},
        log_model_kwargs={
            "name": "model",
            "registered_model_name": MODEL_NAME,
            "signature": "auto",
            # the package travels with the model, so it loads outside this project
            "code_paths": [str(Path(chest_ct_classifier.__file__).parent)],
            # complete and pinned: an environment made from them alone serves the model
            "pip_requirements": list(_pinned_serving_requirements()),
            "input_example": logged_input_example(),
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
