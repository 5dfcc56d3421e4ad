"""Project pipelines."""

from kedro.framework.project import find_pipelines
from kedro.pipeline import Pipeline

TRAINING_FLOW = ("data_ingestion", "model_preparation", "training", "evaluation")


def register_pipelines() -> dict[str, Pipeline]:
    """Every pipeline by its folder name; ``__default__`` is the training flow, in order.

    Batch ``inference`` is not part of the default run: it needs a trained model and images.
    """
    pipelines = find_pipelines(raise_errors=True)
    # `kedro run --pipelines X` makes find_pipelines load only X: build __default__ from what
    # was loaded.
    pipelines["__default__"] = sum(
        (pipelines[name] for name in TRAINING_FLOW if name in pipelines), Pipeline([])
    )
    return pipelines
