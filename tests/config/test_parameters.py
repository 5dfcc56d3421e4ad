"""The typed parameters: conf's files fit them, and every kind of mistake is named."""

from __future__ import annotations

import pytest
from kedro.config import OmegaConfigLoader

from chest_ct_classifier.config.batch_scoring import BatchScoringParameters
from chest_ct_classifier.config.data_ingestion import DataIngestionParameters
from chest_ct_classifier.config.evaluation import EvaluationParameters
from chest_ct_classifier.config.model_preparation import ModelPreparationParameters
from chest_ct_classifier.config.parameters import (
    ParameterError,
    ProjectParameters,
    validate_parameters,
)
from chest_ct_classifier.config.training import TrainingParameters
from tests.conftest import PROJECT_ROOT, _base_parameters, _merged


@pytest.mark.parametrize("env", ["base", "test"])
def test_every_committed_environment_fits_the_models(env):
    loader = OmegaConfigLoader(
        str(PROJECT_ROOT / "conf"),
        base_env="base",
        default_run_env=env,
        merge_strategy={"parameters": "soft"},
    )
    parameters = validate_parameters(loader["parameters"])
    assert isinstance(parameters, ProjectParameters)
    assert isinstance(parameters.training, TrainingParameters)


def test_every_parameters_file_has_its_model():
    files = {
        path.stem.removeprefix("parameters_")
        for path in PROJECT_ROOT.glob("conf/base/parameters_*.yml")
    }
    assert files == set(ProjectParameters.model_fields)


def _with(section: str, key_path: str, value) -> dict:
    """conf/base's parameters with one key set."""
    nested = value
    for key in reversed([section, *key_path.split(".")]):
        nested = {key: nested}
    return _merged(_base_parameters(), nested)


def test_a_value_outside_its_allowed_set_names_the_key_the_value_and_the_choices():
    with pytest.raises(ParameterError) as caught:
        validate_parameters(_with("training", "calibration.fit_on", "vlaid"))
    assert (
        "training.calibration.fit_on = 'vlaid': Input should be 'none', 'holdout' or 'valid'"
        in str(caught.value)
    )


@pytest.mark.parametrize(
    ("key_path", "value", "expected"),
    [
        ("early_stopping.monitor", "auc", "= 'auc': Input should be 'loss' or 'macro_f1'"),
        ("class_weights", "balance", "= 'balance': Input should be 'balanced' or 'none'"),
        ("calibration.fit_on", "test", "= 'test': Input should be 'none', 'holdout' or 'valid'"),
        ("label_smoothing", 1.0, "= 1.0: Input should be less than 1"),
    ],
)
def test_training_choices_are_checked(key_path, value, expected):
    with pytest.raises(ParameterError) as caught:
        validate_parameters(_with("training", key_path, value))
    assert f"training.{key_path} {expected}" in str(caught.value)


def test_an_empty_checksum_means_none_and_a_bad_one_is_refused():
    assert validate_parameters(_with("data_ingestion", "sha256", "")).data_ingestion.sha256 is None
    with pytest.raises(ParameterError, match=r"data_ingestion\.sha256 = 'abc'"):
        validate_parameters(_with("data_ingestion", "sha256", "abc"))


def test_a_wrong_type_is_named():
    with pytest.raises(ParameterError, match=r"training\.batch_size = 'abc': .*valid integer"):
        validate_parameters(_with("training", "batch_size", "abc"))
    with pytest.raises(ParameterError, match=r"phase1\.max_epochs = 2\.5: .*fractional part"):
        validate_parameters(_with("training", "phase1.max_epochs", 2.5))


def test_an_unknown_key_lists_the_keys_allowed_there():
    with pytest.raises(ParameterError) as caught:
        validate_parameters(_with("training", "phase1.max_epoch", 3))
    assert (
        "training.phase1.max_epoch: unknown key (value 3); "
        "allowed: max_epochs, patience, learning_rate"
    ) in str(caught.value)
    with pytest.raises(
        ParameterError, match=r"trainng: unknown key .* allowed: preprocessing, data_ingestion"
    ):
        validate_parameters({**_base_parameters(), "trainng": {"batch_size": 3}})


def test_limits_and_missing_keys_are_errors_and_all_are_reported_at_once():
    parameters = _with("evaluation", "precision_gate.decided_margin", 1.5)
    del parameters["inference"]
    with pytest.raises(ParameterError) as caught:
        validate_parameters(parameters)
    message = str(caught.value)
    assert message.startswith("Invalid parameters (2 problems):")
    assert (
        "evaluation.precision_gate.decided_margin = 1.5: Input should be less than or equal to 1"
        in message
    )
    assert "  inference: missing" in message


def test_nodes_declare_the_settings_models_kedro_gives_them():
    """Kedro (1.7+) turns a node's ``params:`` input into the model its type hint names: every
    node that reads a whole parameters section says which model it wants."""
    from kedro.framework.project import configure_project
    from kedro.validation.type_extractor import TypeExtractor

    from chest_ct_classifier.pipeline_registry import register_pipelines

    configure_project("chest_ct_classifier")
    wanted = TypeExtractor(register_pipelines()).extract_types_from_pipelines()
    assert wanted == {
        "data_ingestion": DataIngestionParameters,
        "model_preparation": ModelPreparationParameters,
        "training": TrainingParameters,
        "evaluation": EvaluationParameters,
        "batch_scoring": BatchScoringParameters,
    }


def test_settings_cannot_be_changed_after_validation():
    training = validate_parameters(_base_parameters()).training
    with pytest.raises(Exception, match="frozen"):
        training.batch_size = 1
