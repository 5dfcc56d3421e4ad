"""All the project's parameters as one typed model, checked once before a run's first node.

Each ``conf/base/parameters_<pipeline>.yml`` has its model (a ``Settings`` subclass). A key that
is unknown, missing, of the wrong type or outside its allowed values stops the run with the
key, the value given and what is allowed, instead of failing minutes later in a node
(``hooks.ParameterValidationHook``). Nodes declare their ``params:`` inputs with these models
as type hints, and Kedro hands them the validated, typed settings (Kedro 1.7's parameter
validation), never dicts.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from pydantic import ValidationError

from chest_ct_classifier.config.base import Settings
from chest_ct_classifier.config.batch_scoring import BatchScoringParameters
from chest_ct_classifier.config.data_ingestion import DataIngestionParameters
from chest_ct_classifier.config.evaluation import EvaluationParameters
from chest_ct_classifier.config.inference import InferenceParameters
from chest_ct_classifier.config.model_preparation import ModelPreparationParameters
from chest_ct_classifier.config.preprocessing import PreprocessingParameters
from chest_ct_classifier.config.training import TrainingParameters


class ProjectParameters(Settings):
    preprocessing: PreprocessingParameters
    data_ingestion: DataIngestionParameters
    model_preparation: ModelPreparationParameters
    training: TrainingParameters
    evaluation: EvaluationParameters
    inference: InferenceParameters
    batch_scoring: BatchScoringParameters


class ParameterError(ValueError):
    """Parameters that do not fit their model; the message lists every problem, one a line."""


def validate_parameters(parameters: Mapping[str, Any]) -> ProjectParameters:
    """The typed parameters, or a ParameterError naming every bad key."""
    try:
        return ProjectParameters.model_validate(dict(parameters))
    except ValidationError as error:
        raise ParameterError(_explain(error, ProjectParameters, "parameters")) from None


def _explain(error: ValidationError, model: Any, where: str) -> str:
    lines = []
    for problem in error.errors():
        location = [str(part) for part in problem["loc"]]
        key = ".".join(location)
        if problem["type"] == "extra_forbidden":
            allowed = ", ".join(_fields_at(model, location[:-1]))
            lines.append(f"  {key}: unknown key (value {problem['input']!r}); allowed: {allowed}")
        elif problem["type"] == "missing":
            lines.append(f"  {key}: missing")
        else:
            lines.append(f"  {key} = {problem['input']!r}: {problem['msg']}")
    return f"Invalid {where} ({len(lines)} problem{'s' if len(lines) > 1 else ''}):\n" + "\n".join(
        lines
    )


def _fields_at(model: Any, location: list[str]) -> list[str]:
    for key in location:
        fields = getattr(model, "model_fields", {})
        if key not in fields:
            return []
        model = fields[key].annotation
    return list(getattr(model, "model_fields", {}))
