"""The out-of-distribution check at the point of answer, over HTTP: images that are not chest
CT slices get ``status: out_of_distribution`` and no label; chest CT slices get an answer. The
real app, a small model trained for real with its detector, real images."""

from __future__ import annotations

import json

import numpy as np
import pytest
import requests
from skimage import data

from chest_ct_classifier.datasets.reference_images_dataset import png_bytes
from chest_ct_classifier.images.labels import LABELS

pytestmark = pytest.mark.slow  # trains a small model once per session

NOT_CT = {
    "grey photograph": data.camera(),  # only the features can tell
    "colour photograph": data.astronaut(),  # the input checks tell
    "page of text": data.text(),
    "flat grey": np.full((256, 256), 128, np.uint8),
}


def _post(base: str, image: bytes) -> requests.Response:
    return requests.post(f"{base}/predict", files={"file": ("x.png", image)}, timeout=60)


@pytest.mark.parametrize("kind", sorted(NOT_CT))
def test_images_that_are_not_ct_get_no_label(server, kind):
    answer = _post(server, png_bytes(NOT_CT[kind]))
    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert body["status"] == "out_of_distribution"
    assert body["label"] is None and body["display_name"] is None
    assert body["uncertain"] is False
    assert body["ood"]["reason"]  # says why, in words
    assert body["ood"]["threshold"] > 0 and body["ood"]["score"] is not None
    assert sorted(body["probabilities"]) == sorted(LABELS)  # kept, for the details switch


def test_chest_ct_slices_are_answered_with_their_score_under_the_threshold(
    server, sample_paths_by_label
):
    for label in LABELS:
        for path in sample_paths_by_label[label][:2]:
            body = _post(server, path.read_bytes()).json()
            assert body["status"] in ("ok", "uncertain"), (path, body["ood"])
            assert body["label"] in LABELS
            assert body["ood"]["reason"] is None
            assert 0 <= body["ood"]["score"] <= body["ood"]["threshold"]


def test_health_names_the_detector_and_the_audit_keeps_the_score(
    live_server, trained_model_path, sample_image_path, tmp_path
):
    audit = tmp_path / "audit.jsonl"
    base = live_server(trained_model_path, audit_log=audit)
    detector = requests.get(f"{base}/health", timeout=30).json()["model"]["ood_detector"]
    assert detector["method"] == "mahalanobis_shared_covariance"
    assert detector["target_false_rejection"] == pytest.approx(0.02)
    refused = _post(base, png_bytes(data.camera())).json()
    answered = _post(base, sample_image_path("normal").read_bytes()).json()
    lines = [json.loads(line) for line in audit.read_text().splitlines()]
    assert [line["status"] for line in lines] == [refused["status"], answered["status"]]
    assert [line["ood_score"] for line in lines] == [
        refused["ood"]["score"],
        answered["ood"]["score"],
    ]
    assert lines[0]["label"] is None


def test_without_a_usable_detector_answers_say_the_check_was_not_made(
    live_server, trained_model_path, retrained_model_path, sample_image_path, tmp_path
):
    # the retrained model's folder, with the first model's detector: fitted on other weights
    folder = tmp_path / "mixed"
    folder.mkdir()
    (folder / "classifier.keras").write_bytes(retrained_model_path.read_bytes())
    (folder / "ood_detector.npz").write_bytes(
        (trained_model_path.parent / "ood_detector.npz").read_bytes()
    )
    base = live_server(folder / "classifier.keras")
    assert requests.get(f"{base}/health", timeout=30).json()["model"]["ood_detector"] is None
    body = _post(base, sample_image_path("normal").read_bytes()).json()
    assert body["status"] in ("ok", "uncertain") and body["label"] in LABELS
    assert body["ood"]["score"] is None and body["ood"]["reason"].startswith("not checked")
    # the input checks still hold without a detector
    colour = _post(base, png_bytes(data.astronaut())).json()
    assert colour["status"] == "out_of_distribution" and "colour" in colour["ood"]["reason"]
