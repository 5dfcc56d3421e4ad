from pathlib import Path

import pytest
import yaml

from chest_ct_classifier.serving.settings import (
    COMPANION_FILES,
    DEFAULT_TRAIN_COMMAND,
    ServingSettings,
    catalog_model_path,
)
from tests.conftest import PROJECT_ROOT


def test_defaults_serve_the_file_the_catalog_names():
    catalog = yaml.safe_load((PROJECT_ROOT / "conf/base/catalog.yml").read_text())
    settings = ServingSettings.from_environment({"CHEST_CT_PROJECT_PATH": str(PROJECT_ROOT)})
    assert settings.resolved_model_path() == PROJECT_ROOT / catalog["trained_model"]["filepath"]
    assert settings.model_uri is None and settings.train_token is None
    assert settings.cors_origins == () and settings.train_command == DEFAULT_TRAIN_COMMAND
    assert settings.max_upload_bytes == 10 * 2**20
    parameters = yaml.safe_load((PROJECT_ROOT / "conf/base/parameters_inference.yml").read_text())
    assert settings.precision == parameters["inference"]["precision"] == "auto"
    assert (settings.max_batch, settings.batch_wait_ms) == (16, 5.0)
    assert settings.catalog_file("int8_model") == PROJECT_ROOT / catalog["int8_model"]["filepath"]
    gate = catalog["precision_gate"]["filepath"]
    assert settings.catalog_file("precision_gate") == PROJECT_ROOT / gate
    for name, file_name in COMPANION_FILES.items():  # what is looked for without a catalog
        assert settings.catalog_file(name).name == file_name


def test_reports_are_read_where_the_release_serves_them_not_from_the_candidate():
    settings = ServingSettings.from_environment({"CHEST_CT_PROJECT_PATH": str(PROJECT_ROOT)})
    catalog = yaml.safe_load((PROJECT_ROOT / "conf/base/catalog.yml").read_text())
    written = catalog["metrics"]["dataset"]["filepath"]
    assert "/candidate/" in written  # a run writes a candidate report...
    served = settings.resolved_metrics_path()
    assert served == PROJECT_ROOT / "data/08_reporting/metrics.json"  # ...the app reads this
    assert settings.catalog_file("model_card") == PROJECT_ROOT / "data/08_reporting/model_card.json"


def test_environment_overrides_every_setting(tmp_path):
    settings = ServingSettings.from_environment(
        {
            "CHEST_CT_PROJECT_PATH": str(tmp_path),
            "CHEST_CT_MODEL_PATH": "models/m.keras",
            "CHEST_CT_MODEL_URI": "models:/chest-ct-classifier@champion",
            "CHEST_CT_MAX_UPLOAD_MB": "2.5",
            "CHEST_CT_MAX_IMAGE_PIXELS": "1000",
            "CHEST_CT_UNCERTAIN_BELOW": "0.6",
            "CHEST_CT_CORS_ORIGINS": "https://a.example, https://b.example,",
            "CHEST_CT_TRAIN_TOKEN": "t0ken",
            "CHEST_CT_TRAIN_COMMAND": "kedro run --params 'a=1 2'",
            "MODEL_PRECISION": "int8",
            "CHEST_CT_MAX_BATCH": "4",
            "CHEST_CT_BATCH_WAIT_MS": "2.5",
        }
    )
    assert settings.resolved_model_path() == tmp_path / "models/m.keras"
    assert settings.model_uri == "models:/chest-ct-classifier@champion"
    assert settings.max_upload_bytes == int(2.5 * 2**20)
    assert (settings.max_image_pixels, settings.uncertain_below) == (1000, 0.6)
    assert settings.cors_origins == ("https://a.example", "https://b.example")
    assert settings.train_token == "t0ken"
    assert settings.train_command == ("kedro", "run", "--params", "a=1 2")
    assert (settings.precision, settings.max_batch, settings.batch_wait_ms) == ("int8", 4, 2.5)


def test_precision_comes_from_the_project_parameters_unless_the_environment_says(tmp_path):
    (tmp_path / "conf/base").mkdir(parents=True)
    (tmp_path / "conf/base/parameters_inference.yml").write_text("inference:\n  precision: bf16\n")
    project = {"CHEST_CT_PROJECT_PATH": str(tmp_path)}
    assert ServingSettings.from_environment(project).precision == "bf16"
    assert ServingSettings.from_environment({**project, "MODEL_PRECISION": "fp32"}).precision == (
        "fp32"
    )
    assert ServingSettings.from_environment({}).precision in ("auto", "bf16", "fp32", "int8")


def test_outside_a_project_the_missing_model_path_is_explained(tmp_path):
    with pytest.raises(FileNotFoundError, match="CHEST_CT_MODEL_PATH"):
        catalog_model_path(tmp_path)
    assert ServingSettings(model_path=Path("/abs/m.keras")).resolved_model_path() == Path(
        "/abs/m.keras"
    )
