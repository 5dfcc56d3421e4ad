"""The whole project, run as a user runs it: ``kedro run`` then batch inference, via the CLI.

Runs in a temporary copy of the project (conf, bundled sample) with a small test configuration
(64 px images, a few epochs, the offline HED weights), then checks the files and the MLflow run.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import mlflow
import pandas as pd
import pytest

from chest_ct_classifier.labels import LABELS, probability_columns

from .conftest import PROJECT_ROOT, run_tool

pytestmark = pytest.mark.slow

TEST_CONF = {
    "globals.yml": "vgg16_weights: hed_bsds500\n",
    "parameters.yml": (
        "model_preparation:\n  image_size: 64\n  head:\n    dense_units: 32\n"
        "training:\n  epochs: 4\n"
    ),
}


def _kedro(project: Path, *args: str) -> subprocess.CompletedProcess:
    return run_tool(project, "kedro", *args)


@pytest.fixture(scope="module")
def project(tmp_path_factory) -> Path:
    """A copy of the project after ``kedro run --env test``."""
    root = tmp_path_factory.mktemp("project")
    for item in ("pyproject.toml", ".telemetry", "conf"):
        source = PROJECT_ROOT / item
        if source.is_dir():
            shutil.copytree(source, root / item, ignore=shutil.ignore_patterns("local"))
        else:
            shutil.copy2(source, root / item)
    (root / "conf" / "local").mkdir()
    shutil.copytree(PROJECT_ROOT / "src", root / "src", ignore=shutil.ignore_patterns("*.egg-info"))
    (root / "logs").mkdir()
    shutil.copytree(PROJECT_ROOT / "data" / "01_raw" / "sample", root / "data/01_raw/sample")
    test_conf = root / "conf" / "test"
    test_conf.mkdir()
    for name, text in TEST_CONF.items():
        (test_conf / name).write_text(text)
    _kedro(root, "run", "--env", "test")
    return root


def test_default_run_leaves_model_metrics_and_plots(project):
    assert (project / "data/06_models/untrained_model.keras").is_file()
    assert (project / "data/06_models/classifier.keras").is_file()
    assert (project / "data/08_reporting/confusion_matrix.png").stat().st_size > 1000
    metrics = json.loads((project / "data/08_reporting/metrics.json").read_text())
    assert metrics["weights"]["used"] == "hed_bsds500"
    for split in ("valid", "test"):
        scores = metrics["splits"][split]
        assert scores["n_images"] == 12
        assert 0.0 <= scores["accuracy"] <= 1.0 and 0.0 <= scores["macro_f1"] <= 1.0
        assert set(scores["per_class"]) == set(LABELS)
    assert set(metrics["leak_free"]) == {"valid", "test"}
    assert metrics["calibration"]["fitted_on"] == "valid"
    assert 0.0 <= metrics["splits"]["test"]["ece"] <= 1.0
    assert (project / "data/08_reporting/reliability.png").stat().st_size > 1000
    assert (project / "data/08_reporting/grad_cam_examples.png").stat().st_size > 1000
    quality = json.loads((project / "data/08_reporting/data_quality.json").read_text())
    assert quality["format_mismatches"] == [
        {"path": "Data/train/normal/n7.png", "extension": ".png", "format": "JPEG"}
    ]
    assert "# Data quality report" in (project / "data/08_reporting/data_quality.md").read_text()
    index = pd.read_csv(project / "data/02_intermediate/image_index.csv")
    assert len(index) == 56 and index["readable"].all()
    assert "Data/train/normal/n7.png" in set(index["path"])
    assert (project / "logs/info.log").read_text().count("Completed node") >= 7


def test_mlflow_run_has_params_epoch_metrics_weights_tag_and_registered_model(project):
    mlflow.set_tracking_uri(f"sqlite:///{project / 'mlflow.db'}")
    client = mlflow.MlflowClient()
    (run,) = mlflow.search_runs(experiment_names=["chest-ct-classifier"], output_format="list")
    assert run.info.status == "FINISHED"
    assert run.data.params["training.epochs"] == "4"
    assert run.data.params["model_preparation.image_size"] == "64"
    assert run.data.tags["weights_used"] == "hed_bsds500"
    history = client.get_metric_history(run.info.run_id, "epoch.train_loss")
    assert [m.step for m in history] == [1, 2, 3, 4]
    assert len(client.get_metric_history(run.info.run_id, "epoch.valid_accuracy")) == 4
    assert "test_macro_f1" in run.data.metrics
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"metrics.json", "confusion_matrix.png", "reliability.png", "grad_cam_examples.png",
            "data_quality.json"} <= artifacts  # fmt: skip
    assert "valid_leak_free_accuracy" in run.data.metrics
    assert run.data.metrics["temperature"] > 0
    (version,) = client.search_model_versions("name='chest-ct-classifier'")
    assert version.run_id == run.info.run_id
    model = mlflow.keras.load_model(f"models:/chest-ct-classifier/{version.version}")
    assert model.output_shape == (None, len(LABELS))


def test_inference_predicts_an_unseen_nested_folder_with_a_corrupt_file(project, sample_images):
    unseen = project / "unseen"
    chosen = [p for p in sample_images if p.startswith("Data/test/")][:4]
    targets = ["scan 1 (copy).png", "a/b/c/odd name [2].PNG", "a/x.y.z.jpg", "deep/er/n.png"]
    for source, target in zip(chosen, targets, strict=True):
        (unseen / target).parent.mkdir(parents=True, exist_ok=True)
        (unseen / target).write_bytes(sample_images[source])
    (unseen / "a" / "corrupt scan.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")

    _kedro(
        project,
        "run",
        "--env",
        "test",
        "--pipelines",
        "inference",
        "--params",
        f"inference.input_path={unseen}",
    )

    predictions = pd.read_csv(project / "data/07_model_output/predictions.csv")
    assert list(predictions.columns) == ["image", "label", *probability_columns(), "error"]
    assert sorted(predictions["image"]) == sorted([*targets, "a/corrupt scan.png"])
    corrupt = predictions.set_index("image").loc["a/corrupt scan.png"]
    assert pd.isna(corrupt["label"]) and "not a readable image" in corrupt["error"]
    readable = predictions[predictions["error"].isna()]
    assert len(readable) == 4 and set(readable["label"]) <= set(LABELS)
    assert readable[probability_columns()].sum(axis=1).round(4).eq(1.0).all()


def test_notebook_loads_metrics_and_predictions_from_the_catalog(project):
    shutil.copytree(PROJECT_ROOT / "notebooks", project / "notebooks", dirs_exist_ok=True)
    run_tool(
        project, "jupyter", "nbconvert", "--to", "notebook", "--execute",
        "--output-dir", str(project / "executed"), "notebooks/explore_results.ipynb",
        KEDRO_ENV="test",
    )  # fmt: skip
    executed = json.loads((project / "executed" / "explore_results.ipynb").read_text())
    outputs = json.dumps([cell.get("outputs", []) for cell in executed["cells"]])
    assert "VGG16 weights used: hed_bsds500" in outputs
    assert "macro_f1" in outputs
