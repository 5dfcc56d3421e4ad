"""The whole project, run as a user runs it: ``kedro run`` then batch inference, via the CLI.

Runs in a temporary copy of the project (conf, bundled sample) in the committed ``conf/test``
environment (64 px images, a few epochs, one augmented view, the offline HED weights), then
checks the files, the MLflow run, the registered model and its champion gate.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pytest

from chest_ct_classifier.audit.hash_chain_log import verify
from chest_ct_classifier.datasets.keras_model_dataset import KerasModelDataset
from chest_ct_classifier.images.labels import DISPLAY_NAMES, LABELS, probability_columns
from chest_ct_classifier.images.preprocessing import preprocess_image_bytes
from chest_ct_classifier.model.numeric_precision import (
    forward_for,
    model_fingerprint,
    select_forward,
)
from chest_ct_classifier.pipelines.inference.nodes import PREDICTION_COLUMNS
from tests.conftest import PROJECT_ROOT, run_tool
from tests.integration.conftest import SHARES_THE_TRAINED_PROJECT

pytestmark = [pytest.mark.slow, SHARES_THE_TRAINED_PROJECT]


def _kedro(project: Path, *args: str) -> subprocess.CompletedProcess:
    return run_tool(project, "kedro", *args)


def _answers_of_the_served_path(project: Path, inputs: np.ndarray, precision: str) -> np.ndarray:
    """The project's model answering ``inputs`` (one batch) in the precision the served model
    uses: ``auto`` is decided by the run's own precision gate, as serving decides it. On a CPU
    with bfloat16 instructions the gate may allow bf16 on the sample, so comparing with fp32's
    answers would only hold to bf16's rounding; the same path gives the same numbers."""
    models = project / "data" / "06_models"
    model = KerasModelDataset(str(models / "classifier.keras")).load()
    int8_model = (models / "classifier_int8.tflite").read_bytes()
    if precision == "auto":
        gate = json.loads((models / "precision_gate.json").read_text())
        forward, _, _ = select_forward(model, "auto", int8_model, gate)
    else:
        forward = forward_for(model, precision, int8_model)
    return forward(inputs)


def _predicted_by_the_champion(
    project: Path, folder: Path, images: list[bytes], then: str = ""
) -> tuple[pd.DataFrame, subprocess.CompletedProcess]:
    """The registered champion's answers for ``images`` (one base64 request), loaded outside
    the project in a fresh interpreter that runs ``then`` afterwards."""
    import base64

    request = pd.DataFrame({"image": [base64.b64encode(data).decode("ascii") for data in images]})
    request.to_json(folder / "request.json", orient="split", index=False)
    script = (
        "import sys, mlflow, pandas as pd\n"
        f"mlflow.set_tracking_uri('sqlite:///{project / 'mlflow.db'}')\n"
        "model = mlflow.pyfunc.load_model('models:/chest-ct-classifier@champion')\n"
        "request = pd.read_json(sys.argv[1], orient='split')\n"
        "model.predict(request).to_csv(sys.argv[2], index=False)\n" + then
    )
    result = run_tool(folder, "python", "-c", script, "request.json", "served.csv")
    return pd.read_csv(folder / "served.csv"), result


@pytest.fixture(scope="module")
def project(trained_project: Path) -> Path:
    return trained_project


def test_default_run_leaves_model_metrics_and_plots(project):
    assert (project / "data/06_models/candidate/untrained_model.keras").is_file()
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
    # the default chosen by cross-validation: no temperature, so the ECE is the model's own
    assert metrics["calibration"] == {"temperature": 1.0, "fitted_on": "none", "n_images": 0}
    assert 0.0 <= metrics["splits"]["test"]["ece"] <= 1.0
    assert metrics["splits"]["test"]["ece"] == metrics["splits"]["test"]["ece_uncalibrated"]
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


def _client(project: Path) -> mlflow.MlflowClient:
    uri = f"sqlite:///{project / 'mlflow.db'}"
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    return mlflow.MlflowClient(tracking_uri=uri, registry_uri=uri)


def test_mlflow_run_has_params_epoch_metrics_weights_tag_and_registered_model(project, tmp_path):
    client = _client(project)
    (run,) = mlflow.search_runs(experiment_names=["chest-ct-classifier"], output_format="list")
    assert run.info.status == "FINISHED"
    assert run.data.params["training.phase1.max_epochs"] == "4"
    assert run.data.params["model_preparation.image_size"] == "64"
    assert run.data.tags["weights_used"] == "hed_bsds500"
    schedule = json.loads((project / "data/06_models/training_schedule.json").read_text())
    history = client.get_metric_history(run.info.run_id, "epoch.phase1_train_loss")
    assert [m.step for m in history] == list(range(1, schedule["phase1_epochs"] + 1))
    phase2 = client.get_metric_history(run.info.run_id, "epoch.phase2_valid_accuracy")
    assert len(phase2) == schedule["phase2_epochs"]
    assert client.get_metric_history(run.info.run_id, "selection.phase1_monitor_loss")
    for name in ("test_macro_f1", "valid_balanced_accuracy", "valid_leak_free_accuracy"):
        assert name in run.data.metrics
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"metrics.json", "confusion_matrix.png", "reliability.png", "roc.png",
            "grad_cam_examples.png", "data_quality.json", "training_schedule.json",
            } <= artifacts  # fmt: skip
    assert run.data.metrics["temperature"] > 0
    (version,) = client.search_model_versions("name='chest-ct-classifier'")
    assert version.run_id == run.info.run_id
    assert client.get_model_version_by_alias("chest-ct-classifier", "champion").version == (
        version.version
    )
    assert version.tags["champion_gate.decision"] == "promoted"
    # the package travels with the model, so it loads outside the project
    model = Path(
        mlflow.artifacts.download_artifacts(
            f"models:/chest-ct-classifier/{version.version}", dst_path=str(tmp_path)
        )
    )
    assert (model / "code" / "chest_ct_classifier" / "images" / "preprocessing.py").is_file()
    assert (model / "artifacts" / "classifier.keras").is_file()


def test_registered_model_predicts_images_outside_the_project(project, sample_images, tmp_path):

    paths = [p for p in sample_images if p.startswith("Data/test/")]
    served, result = _predicted_by_the_champion(
        project, tmp_path, [sample_images[p] for p in paths],
        "import chest_ct_classifier\nprint(chest_ct_classifier.__file__)\n",
    )  # fmt: skip
    # the package came with the model (code_paths), not from this checkout
    assert "/code/chest_ct_classifier/" in result.stdout.strip().splitlines()[-1]
    assert list(served["image"]) == list(range(len(paths)))
    assert served["error"].isna().all()
    # every answer carries its status; a slice the detector refuses has no label
    assert set(served["status"]) <= {"ok", "uncertain", "out_of_distribution"}
    refused = served["status"] == "out_of_distribution"
    assert served.loc[refused, "label"].isna().all()
    assert set(served.loc[~refused, "label"]) <= set(LABELS)
    assert served["ood_score"].notna().all()
    # the same answers as the project's calibrated model on the same preprocessing, in the
    # precision the run's gate chose (inference.precision: auto), in one batch as served
    inputs = np.stack([preprocess_image_bytes(sample_images[p], 64) for p in paths])
    expected = _answers_of_the_served_path(project, inputs, "auto")
    np.testing.assert_allclose(served[probability_columns()].to_numpy(), expected, atol=1e-5)


def test_registered_model_and_batch_inference_read_dicom_and_keep_patient_data_out(
    project, sample_images, tmp_path
):

    from tests.dicom_files import ENCODINGS, PATIENT_MARKERS, ct_dicom

    paths = [p for p in sample_images if p.startswith("Data/test/")][:4]
    dicoms = [ct_dicom(sample_images[p], ENCODINGS[i % len(ENCODINGS)], slope=0.5,
                       intercept=-2000, unsigned=True) for i, p in enumerate(paths)]  # fmt: skip
    served, result = _predicted_by_the_champion(
        project, tmp_path, [*dicoms, *(sample_images[p] for p in paths)]
    )
    dicom, png = served.iloc[: len(paths)], served.iloc[len(paths) :]
    assert list(dicom["status"]) == list(png["status"])
    assert list(dicom["label"].fillna("")) == list(png["label"].fillna(""))
    np.testing.assert_allclose(
        dicom[probability_columns()].to_numpy(float),
        png[probability_columns()].to_numpy(float),
        atol=0.02,
    )
    assert dicom["series_uid"].notna().all() and png["series_uid"].isna().all()

    # batch inference on a folder of them, names without an extension
    folder = project / "dicom_input"
    for index, data in enumerate(dicoms):
        (folder / "series" / f"IM{index}").parent.mkdir(parents=True, exist_ok=True)
        (folder / "series" / f"IM{index}").write_bytes(data)
    run = _kedro(project, "run", "--env", "test", "--pipelines", "inference",
                 "--params", f"inference.input_path={folder}")  # fmt: skip
    predictions = pd.read_csv(project / "data/07_model_output/predictions.csv")
    assert predictions["series_uid"].notna().all() and len(predictions) == len(paths)
    series = pd.read_csv(project / "data/07_model_output/series_predictions.csv")
    assert len(series) == 1 and series.loc[0, "n_slices"] == len(paths)

    outputs = [result.stdout, result.stderr, run.stdout, run.stderr]
    for folder_name in ("data/07_model_output", "data/08_reporting", "logs", "mlruns"):
        for file in (project / folder_name).rglob("*"):
            if file.is_file() and file.stat().st_size < 50_000_000:
                outputs.append(file.read_bytes().decode("latin-1"))
    outputs.append((project / "mlflow.db").read_bytes().decode("latin-1"))
    text = "\n".join(outputs)
    for marker in PATIENT_MARKERS.values():
        assert marker not in text


def test_a_second_run_is_registered_but_the_gate_keeps_an_equal_champion(project):
    # DVC's evaluation stage registers too; the same model scores the same: a tie keeps it
    _kedro(project, "run", "--env", "test", "--pipelines", "evaluation")
    client = _client(project)
    versions = sorted(
        client.search_model_versions("name='chest-ct-classifier'"), key=lambda v: int(v.version)
    )
    assert [int(v.version) for v in versions] == [1, 2]
    second = versions[-1]
    assert second.tags["champion_gate.decision"] == "kept_champion"
    assert (
        second.tags["champion_gate.candidate_value"] == second.tags["champion_gate.champion_value"]
    )
    champion = client.get_model_version_by_alias("chest-ct-classifier", "champion")
    assert str(champion.version) == str(versions[0].version)


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
    assert list(predictions.columns) == PREDICTION_COLUMNS
    assert sorted(predictions["image"]) == sorted([*targets, "a/corrupt scan.png"])
    corrupt = predictions.set_index("image").loc["a/corrupt scan.png"]
    assert pd.isna(corrupt["label"]) and "not a readable image" in corrupt["error"]
    assert corrupt["status"] == "unreadable"
    readable = predictions[predictions["error"].isna()]
    assert len(readable) == 4 and readable["ood_score"].notna().all()
    assert set(readable["label"].dropna()) <= set(LABELS)
    assert readable["label"].isna().eq(readable["status"] == "out_of_distribution").all()
    assert readable[probability_columns()].sum(axis=1).round(4).eq(1.0).all()
    # the run is in the audit log, chained with everything before it
    runs = [json.loads(line) for line in (project / "logs/audit.jsonl").read_text().splitlines()]
    (this_run,) = [r for r in runs if r.get("input") == str(unseen)]
    assert this_run["kind"] == "batch_inference" and this_run["n_files"] == 5
    assert this_run["n_unreadable"] == 1 and sum(this_run["statuses"].values()) == 5
    assert sum(this_run["labels"].values()) == readable["label"].notna().sum()
    assert len(this_run["model"]["fingerprint"]) == 16
    assert verify(project / "logs/audit.jsonl").ok


def test_the_command_line_predicts_a_file_and_a_folder_and_prints_a_table(project, sample_root):
    image = sorted((sample_root / "Data" / "test").rglob("*.png"))[0]
    folder = sample_root / "Data" / "test"
    result = run_tool(project, "chest-ct", "predict", str(image), str(folder))
    lines = result.stdout.splitlines()
    start = next(i for i, line in enumerate(lines) if line.split()[:2] == ["image", "predicted"])
    rows = [line for line in lines[start + 2 :] if line.strip()]
    n_folder = len([p for p in folder.rglob("*") if p.suffix.lower() in {".png", ".jpg"}])
    assert len(rows) == 1 + n_folder
    assert rows[0].startswith(str(image))
    assert all(any(name in row for name in DISPLAY_NAMES.values()) for row in rows)
    # batch inference wrote the last path's predictions, as `kedro run --pipelines inference`
    predictions = pd.read_csv(project / "data/07_model_output/predictions.csv")
    assert len(predictions) == n_folder


def test_the_model_card_repeats_the_runs_own_numbers(project):
    metrics = json.loads((project / "data/08_reporting/metrics.json").read_text())
    card = json.loads((project / "data/08_reporting/model_card.json").read_text())
    quality = json.loads((project / "data/08_reporting/data_quality.json").read_text())
    schedule = json.loads((project / "data/06_models/training_schedule.json").read_text())
    model = KerasModelDataset(str(project / "data/06_models/classifier.keras")).load()
    assert card["model"]["fingerprint"] == model_fingerprint(model)
    for subset in ("splits", "leak_free"):
        for split, scores in metrics[subset].items():
            shown = card["evaluation"][subset][split]
            for key in ("n_images", "accuracy", "macro_f1", "balanced_accuracy", "ece"):
                assert shown[key] == scores[key], (subset, split, key)
            assert shown["accuracy_interval"] == scores["intervals"]["accuracy"]
            assert shown["macro_f1_interval"] == scores["intervals"]["macro_f1"]
            assert shown["recall_interval"] == scores["intervals"]["recall"]
            interval = scores["intervals"]["accuracy"]
            assert interval["low"] <= scores["accuracy"] <= interval["high"]
            for label in LABELS:
                assert shown["recall"][label] == scores["per_class"][label]["recall"]
    assert card["calibration"] == metrics["calibration"]
    assert card["seed_spread"] == metrics["seed_spread"]
    assert set(metrics["seed_spread"]["subsets"]) == {
        "valid", "valid_leak_free", "test", "test_leak_free",
    }  # fmt: skip
    assert card["data"]["counts"] == quality["counts"]
    assert card["training"]["phase1_epochs"] == schedule["phase1_epochs"]
    text = (project / "data/08_reporting/model_card.md").read_text()
    assert text.startswith("# Model card: chest-ct-classifier")
    assert f"| accuracy | {metrics['splits']['test']['accuracy']:.3f} |" in text
    assert "No temperature scaling (T = 1): training.calibration.fit_on is none." in text
    assert "| ECE (no temperature) |" in text
    test_spread = metrics["seed_spread"]["subsets"]["test"]["accuracy"]
    assert f"| test | {test_spread['mean']:.3f} ± {test_spread['std']:.3f} " in text
    client = _client(project)
    # every training or evaluation run logs its card beside the version it registers
    runs = mlflow.search_runs(experiment_names=["chest-ct-classifier"], output_format="list")
    for run in runs:
        artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
        assert {"model_card.json", "model_card.md"} <= artifacts
        assert "test_accuracy_ci_low" in run.data.metrics


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


_SERVE_SCRIPT = """
import json, sys
from chest_ct_classifier.serving import create_app
client = create_app().test_client()
health = client.get("/health")
image = open(sys.argv[1], "rb").read()
answer = client.post("/predict", data={"file": (__import__("io").BytesIO(image), "x.png")})
card = client.get("/model-card")
print(json.dumps({"health": health.get_json(), "status": health.status_code,
                  "answer": answer.get_json(), "card_status": card.status_code,
                  "card_html": card.get_data(as_text=True)}))
"""


@pytest.mark.parametrize("source", ["catalog", "registry"])
def test_web_app_serves_the_trained_model_from_the_catalog_or_the_registry(
    project, sample_root, source
):
    """The app as configured by environment: the project's catalog file by default, or the
    registered champion (``CHEST_CT_MODEL_URI``) from the project's MLflow store."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "CHEST_CT_"))}
    env["CHEST_CT_PROJECT_PATH"] = str(project)
    if source == "registry":
        env["CHEST_CT_MODEL_URI"] = "models:/chest-ct-classifier@champion"
        env["MLFLOW_TRACKING_URI"] = f"sqlite:///{project / 'mlflow.db'}"
    image = next((sample_root / "Data" / "test").rglob("*.png"))
    result = subprocess.run(
        [sys.executable, "-c", _SERVE_SCRIPT, str(image)],
        cwd=project, env=env, capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    served = json.loads(result.stdout.strip().splitlines()[-1])
    assert served["status"] == 200, served
    # the served model's own card, from the catalog's file or the registered version's run
    assert served["card_status"] == 200, served["card_html"][-2000:]
    assert "Model card: chest-ct-classifier" in served["card_html"]
    assert 'id="card-seed-spread"' in served["card_html"]  # the spread over training seeds
    assert "No temperature scaling (T = 1)" in served["card_html"]
    assert served["health"]["model_card"] == "/model-card"
    model = served["health"]["model"]
    assert model["source"] == ("registry" if source == "registry" else "file")
    assert model["weights"] == "hed_bsds500" and model["image_size"] == 64
    # its record on held-out images: the same run's evaluation of the test split
    report = json.loads((project / "data/08_reporting/metrics.json").read_text())["splits"]
    assert model["measured"]["split"] == "test"
    assert model["measured"]["accuracy"] == pytest.approx(report["test"]["accuracy"])
    if source == "registry":
        champion = _client(project).get_model_version_by_alias("chest-ct-classifier", "champion")
        assert model["version"] == str(champion.version)
    else:
        assert model["measured"]["images"] == report["test"]["n_images"]
    # the answer of the path it says it serves (the gate may allow bf16 or int8 on this CPU)
    served_precision = model["precision"]["served"]
    probabilities = _answers_of_the_served_path(
        project, preprocess_image_bytes(image.read_bytes(), 64)[None], served_precision
    )
    np.testing.assert_allclose(
        [served["answer"]["probabilities"][label] for label in LABELS], probabilities[0], atol=1e-5
    )
    # the detector trained with this model, from beside the file or from the registered version
    assert model["ood_detector"]["threshold"] == pytest.approx(
        json.loads((project / "data/08_reporting/ood.json").read_text())["detector"]["threshold"]
    )
    assert served["answer"]["ood"]["threshold"] == pytest.approx(model["ood_detector"]["threshold"])
    assert served["answer"]["ood"]["score"] is not None
