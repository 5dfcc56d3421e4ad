"""The app serves the precision the gate allows, says which in /health, and batches requests."""

from __future__ import annotations

import base64
import io
import json
import shutil
import threading
from pathlib import Path

import keras
import numpy as np
import pytest
import requests
from PIL import Image

from chest_ct_classifier.images.labels import LABELS
from chest_ct_classifier.images.preprocessing import fitted_rgb, scale_for_vgg16
from chest_ct_classifier.model.explanation import grad_cam, overlay_heatmap
from chest_ct_classifier.model.numeric_precision import (
    Int8Forward,
    choose_precision,
    int8_feature_extractor,
)
from tests.conftest import PROJECT_ROOT, SAMPLE_ROOT, settings

from .conftest import SERVED_IMAGE_SIZE


@pytest.fixture(scope="module")
def project(tmp_path_factory) -> Path:
    """A project folder whose catalog names the model files (the app finds the int8 model and
    the gate report beside a model file by the catalog's names)."""
    root = tmp_path_factory.mktemp("precision-project")
    (root / "conf/base").mkdir(parents=True)
    shutil.copy2(PROJECT_ROOT / "conf/base/catalog.yml", root / "conf/base/catalog.yml")
    return root


@pytest.fixture(scope="module")
def model_files(trained_model_path: Path, tmp_path_factory) -> dict:
    """The small trained model, its int8 model and its real gate report, in a folder."""
    import pandas as pd

    from chest_ct_classifier.images.labels import label_from_folder
    from chest_ct_classifier.pipelines.evaluation.nodes import check_reduced_precisions

    folder = tmp_path_factory.mktemp("models")
    model_path = folder / "classifier.keras"
    shutil.copy2(trained_model_path, model_path)
    model = keras.saving.load_model(model_path, compile=False)
    int8 = int8_feature_extractor(model)
    (folder / "classifier_int8.tflite").write_bytes(int8)
    files = sorted(p for p in SAMPLE_ROOT.rglob("*") if p.suffix in (".png", ".jpg"))
    relative = [p.relative_to(SAMPLE_ROOT).as_posix() for p in files]
    table = pd.DataFrame(
        {"path": relative,
         "split": [p.split("/")[1] for p in relative],
         "label": [label_from_folder(p.split("/")[2]) for p in relative],
         "label_conflict": False}
    )  # fmt: skip
    images = {r: (lambda p=p: p.read_bytes()) for r, p in zip(relative, files, strict=True)}
    params = settings(
        "evaluation",
        {"precision_gate": {"decided_margin": 0.05, "max_accuracy_drop": 0.01, "batch_size": 8,
                            "timing_batch_size": 4, "timing_repeats": 1}},
    )  # fmt: skip
    gate, _ = check_reduced_precisions(model, int8, images, table, params)
    return {"folder": folder, "model": model, "int8": int8, "gate": gate}


def _with_gate(model_files: dict, int8_passed: bool, tmp_path: Path) -> Path:
    """A copy of the model folder whose gate report says int8 passed (or not)."""
    folder = tmp_path / "models"
    shutil.copytree(model_files["folder"], folder)
    gate = json.loads(json.dumps(model_files["gate"]))
    gate["paths"]["int8"] |= {"passed": int8_passed, "reason": "set by the test"}
    gate["paths"]["int8"]["ms_per_image"] = 0.001  # the fastest, for auto
    (folder / "precision_gate.json").write_text(json.dumps(gate))
    return folder / "classifier.keras"


def _post(base: str, path: Path, **params) -> dict:
    with path.open("rb") as handle:
        response = requests.post(
            f"{base}/predict", files={"file": (path.name, handle)}, params=params, timeout=60
        )
    assert response.status_code == 200, response.text
    return response.json()


def _model_input(path: Path) -> tuple[np.ndarray, np.ndarray]:
    rgb = fitted_rgb(path.read_bytes(), SERVED_IMAGE_SIZE)
    return rgb, scale_for_vgg16(rgb)


def test_health_reports_the_precision_the_gate_and_auto_chose(live_server, model_files, project):
    (model_files["folder"] / "precision_gate.json").write_text(json.dumps(model_files["gate"]))
    base = live_server(model_files["folder"] / "classifier.keras", project_path=project)
    health = requests.get(f"{base}/health", timeout=30).json()
    expected, reason = choose_precision("auto", model_files["gate"])
    assert health["precision"] == expected
    precision = health["model"]["precision"]
    assert precision["requested"] == "auto" and precision["reason"] == reason
    assert set(precision["passed_gate"]) == {"bf16", "int8"}
    assert health["batching"]["max_batch"] == 16


def test_int8_that_passed_serves_int8_answers_with_float_heatmaps_of_the_served_class(
    live_server, model_files, project, tmp_path, sample_image_path
):
    model_path = _with_gate(model_files, int8_passed=True, tmp_path=tmp_path)
    base = live_server(model_path, project_path=project, precision="int8")
    health = requests.get(f"{base}/health", timeout=30).json()
    assert health["precision"] == "int8", health["model"]["precision"]
    image = sample_image_path("squamous_cell_carcinoma")
    rgb, model_input = _model_input(image)
    expected = Int8Forward(model_files["model"], model_files["int8"])(model_input[None])[0]
    answer = _post(base, image, explain="1")
    served = np.array([answer["probabilities"][label] for label in LABELS])
    np.testing.assert_allclose(served, expected, atol=1e-5)
    heatmap, _ = grad_cam(model_files["model"], model_input, int(expected.argmax()))
    shown = np.asarray(Image.open(io.BytesIO(base64.b64decode(answer["heatmap_png"]))))
    np.testing.assert_allclose(shown.astype(int), overlay_heatmap(rgb, heatmap).astype(int), atol=1)


def test_int8_that_failed_the_gate_is_not_served(
    live_server, model_files, project, tmp_path, sample_image_path
):
    model_path = _with_gate(model_files, int8_passed=False, tmp_path=tmp_path)
    base = live_server(model_path, project_path=project, precision="int8")
    health = requests.get(f"{base}/health", timeout=30).json()
    assert health["precision"] == "fp32"
    assert "did not pass the gate" in health["model"]["precision"]["reason"]
    image = sample_image_path("normal")
    _, model_input = _model_input(image)
    expected = model_files["model"].predict_on_batch(model_input[None])[0]
    served = _post(base, image)["probabilities"]
    np.testing.assert_allclose([served[label] for label in LABELS], expected, atol=1e-5)


def test_a_gate_report_of_another_model_is_not_used(
    live_server, model_files, project, tmp_path, retrained_model_path
):
    model_path = _with_gate(model_files, int8_passed=True, tmp_path=tmp_path)
    shutil.copy2(retrained_model_path, model_path)  # a new model beside the old run's report
    base = live_server(model_path, project_path=project, precision="int8")
    health = requests.get(f"{base}/health", timeout=30).json()
    assert health["precision"] == "fp32"
    assert "made for another model" in health["model"]["precision"]["reason"]


def test_bad_batching_settings_are_explained(live_server, model_files, project):
    base = live_server(model_files["folder"] / "classifier.keras", project_path=project,
                       max_batch=0)  # fmt: skip
    response = requests.get(f"{base}/health", timeout=30)
    assert response.status_code == 503 and "CHEST_CT_MAX_BATCH" in response.json()["message"]


def test_an_unknown_precision_is_explained(live_server, model_files, project):
    base = live_server(model_files["folder"] / "classifier.keras", project_path=project,
                       precision="fp16")  # fmt: skip
    response = requests.get(f"{base}/health", timeout=30)
    assert response.status_code == 503
    assert "MODEL_PRECISION" in response.json()["message"]


def test_concurrent_requests_are_batched_and_each_gets_its_own_answer(
    live_server, trained_model_path, project, sample_paths_by_label
):
    base = live_server(trained_model_path, project_path=project, batch_wait_ms=50.0)
    images = [paths[0] for paths in sample_paths_by_label.values()] * 2
    alone = [_post(base, image)["probabilities"] for image in images]
    answers: list = [None] * len(images)
    start = threading.Barrier(len(images))

    def ask(i: int) -> None:
        start.wait()
        answers[i] = _post(base, images[i])["probabilities"]

    threads = [threading.Thread(target=ask, args=(i,)) for i in range(len(images))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    for together, single in zip(answers, alone, strict=True):
        for label in LABELS:
            assert together[label] == pytest.approx(single[label], abs=1e-5)
    batching = requests.get(f"{base}/health", timeout=30).json()["batching"]
    assert batching["images"] == 2 * len(images)
    assert batching["batches"] < batching["images"]  # the concurrent ones shared passes
