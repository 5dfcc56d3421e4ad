"""Batch scoring on Spark against the local inference pipeline, on a trained project: the same
rows (labels, probabilities within 1e-5, errors) for the bundled sample and for a folder of odd
names, a corrupt file and DICOM files. Needs a Java runtime (`.ci/run` installs one)."""

from __future__ import annotations

import shutil
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pytest

from chest_ct_classifier.images.labels import probability_columns
from chest_ct_classifier.pipelines.inference.nodes import PREDICTION_COLUMNS
from tests.conftest import run_tool
from tests.dicom_files import ct_dicom
from tests.integration.conftest import SHARES_THE_TRAINED_PROJECT

pytestmark = [
    SHARES_THE_TRAINED_PROJECT,
    pytest.mark.slow,  # a trained project, and Spark's start (about a minute)
    pytest.mark.skipif(
        shutil.which("java") is None,
        reason="Spark needs a Java runtime: apt-get install openjdk-17-jre-headless",
    ),
]


def _odd_folder(root: Path, sample: Path) -> Path:
    tests = sorted((sample / "Data" / "test").rglob("*.png"))
    files = {
        "scan 1 (copy).png": tests[0].read_bytes(),
        "a/b/c/odd name [2].PNG": tests[3].read_bytes(),
        "a/x.y.z.jpg": tests[6].read_bytes(),
        "a/corrupt scan.png": b"\x89PNG\r\n\x1a\n truncated",
        "deep/IM0001": ct_dicom(tests[9].read_bytes(), "jpeg2000"),
        "deep/multi.dcm": ct_dicom(tests[1].read_bytes(), "rle", frames=2),
        "notes.txt": b"not an image",
    }
    for name, data in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(data)
    return root


def _both(project: Path, folder: Path) -> tuple[pd.DataFrame, pd.DataFrame]:
    run_tool(project, "kedro", "run", "--env", "test", "--pipelines", "inference",
             "--params", f"inference.input_path={folder}")  # fmt: skip
    local = pd.read_csv(project / "data/07_model_output/predictions.csv")
    run_tool(project, "kedro", "run", "--env", "test", "--pipelines", "batch_scoring",
             "--params", f"batch_scoring.input_path={folder}")  # fmt: skip
    spark = pd.read_csv(project / "data/07_model_output/batch_predictions.csv")
    return local, spark


def _mlflow_run_ids(project: Path) -> set[str]:
    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{project / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("chest-ct-classifier")
    return {run.info.run_id for run in client.search_runs([experiment.experiment_id])}


def _same_rows(local: pd.DataFrame, spark: pd.DataFrame) -> None:
    assert list(spark.columns) == PREDICTION_COLUMNS
    order = ["image", "frame"]
    local = local.sort_values(order, na_position="first").reset_index(drop=True)
    spark = spark.sort_values(order, na_position="first").reset_index(drop=True)
    assert list(spark["image"]) == list(local["image"])
    for column in ("status", "label", "error", "series_uid", "frame"):
        assert list(spark[column].astype("string").fillna("")) == list(
            local[column].astype("string").fillna("")
        ), column
    np.testing.assert_allclose(
        spark[[*probability_columns(), "ood_score"]].to_numpy(float),
        local[[*probability_columns(), "ood_score"]].to_numpy(float),
        atol=1e-5,
    )


def test_spark_scores_like_the_local_pipeline(trained_project, sample_root, tmp_path):
    # one folder, one run of each: the sample's test images, odd names, a corrupt file, a text
    # file and DICOM files (one of two frames)
    folder = _odd_folder(tmp_path / "input", sample_root)
    shutil.copytree(sample_root / "Data" / "test", folder / "sample")
    runs_before = _mlflow_run_ids(trained_project)
    local, spark = _both(trained_project, folder)
    _same_rows(local, spark)
    # scoring reads the registry and writes predictions: no MLflow run of its own
    assert _mlflow_run_ids(trained_project) == runs_before
    assert len(spark) == 12 + 8  # 12 sample images, 6 odd files, a second frame, a text file
    parquet = pd.read_parquet(trained_project / "data/07_model_output/batch_predictions.parquet")
    assert len(parquet) == len(spark) and set(parquet.columns) == set(PREDICTION_COLUMNS)
    rows = spark.set_index(["image"])
    assert "not a readable image" in rows.loc["a/corrupt scan.png", "error"]
    assert rows.loc["notes.txt", "status"] == "unreadable"
    assert (spark["image"] == "deep/multi.dcm").sum() == 2  # a row per frame
    assert spark["image"].str.startswith("sample/").sum() == 12
