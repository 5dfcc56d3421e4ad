"""Every /predict request leaves one audit line, answered or refused; the answer carries the
line's request id. No pixels, file names or client addresses are kept."""

from __future__ import annotations

import hashlib
import json

import requests

from chest_ct_classifier.audit.hash_chain_log import verify
from chest_ct_classifier.images.labels import LABELS
from chest_ct_classifier.serving.settings import DEFAULT_AUDIT_LOG, ServingSettings


def _lines(path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_answers_and_refusals_are_audited_with_their_request_id(
    live_server, trained_model_path, sample_image_path, tmp_path
):
    audit = tmp_path / "logs" / "audit.jsonl"
    base = live_server(trained_model_path, audit_log=audit)
    image = sample_image_path("normal").read_bytes()

    answered = requests.post(
        f"{base}/predict", files={"file": ("patient-name.png", image)}, timeout=120
    )
    assert answered.status_code == 200
    body = answered.json()
    assert body["request_id"] == answered.headers["X-Request-ID"]
    assert body["status"] in ("ok", "uncertain") and body["label"] in LABELS

    refused = requests.post(
        f"{base}/predict", files={"file": ("notes.txt", b"no image")}, timeout=60
    )
    assert refused.status_code == 400
    assert refused.json()["request_id"] == refused.headers["X-Request-ID"]
    assert requests.get(f"{base}/health", timeout=30).status_code == 200  # not audited

    first, second = _lines(audit)
    assert first["request_id"] == body["request_id"] and first["http_status"] == 200
    assert first["endpoint"] == "/predict"
    assert first["input_sha256"] == hashlib.sha256(image).hexdigest()
    assert first["input_bytes"] == len(image)
    assert first["image_width"] > 0 and first["image_height"] > 0
    assert first["status"] == body["status"] and first["label"] == body["label"]
    assert first["probabilities"] == body["probabilities"]
    assert first["model"]["name"] == body["model"]["name"]
    assert first["model"]["fingerprint"] == body["model"]["fingerprint"]
    assert first["model"]["version"] == body["model"]["version"]
    assert first["precision"] == body["model"]["precision"]["served"]
    assert first["latency_ms"] > 0 and first["time"].endswith("+00:00")
    assert second["request_id"] == refused.json()["request_id"]
    assert second["http_status"] == 400 and second["status"] == "refused"
    assert second["error"] == "unreadable_image"
    assert second["input_sha256"] == hashlib.sha256(b"no image").hexdigest()
    text = audit.read_text()
    assert "patient-name" not in text and "notes.txt" not in text and "127.0.0.1" not in text
    assert verify(audit).ok


def test_the_audit_log_is_in_the_project_by_default_and_can_be_switched_off(tmp_path):
    default = ServingSettings.from_environment({"CHEST_CT_PROJECT_PATH": str(tmp_path)})
    assert default.audit_log == tmp_path / DEFAULT_AUDIT_LOG
    chosen = ServingSettings.from_environment(
        {"CHEST_CT_PROJECT_PATH": str(tmp_path), "CHEST_CT_AUDIT_LOG": "/var/log/ct/audit.jsonl"}
    )
    assert str(chosen.audit_log) == "/var/log/ct/audit.jsonl"
    off = ServingSettings.from_environment({"CHEST_CT_AUDIT_LOG": "off"})
    assert off.audit_log is None


def test_without_an_audit_log_the_app_still_answers_with_a_request_id(
    live_server, trained_model_path, sample_image_path, tmp_path
):
    base = live_server(trained_model_path, audit_log=None)
    answer = requests.post(
        f"{base}/predict",
        files={"file": ("x.png", sample_image_path("normal").read_bytes())},
        timeout=120,
    )
    assert answer.status_code == 200 and answer.json()["request_id"]
    assert not list(tmp_path.rglob("*.jsonl"))
