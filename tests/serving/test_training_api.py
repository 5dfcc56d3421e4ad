"""POST /train over HTTP: token, one run at a time, the model switch, a failed run."""

from __future__ import annotations

import shutil
import sys
import time

import pytest
import requests

pytestmark = pytest.mark.slow

TOKEN = "s3cret-token-long-enough-for-the-api-0123"  # at least 32 characters
AUTH = {"Authorization": f"Bearer {TOKEN}"}


def _training_command(new_model, model_path, gate) -> tuple[str, ...]:
    """Stands in for ``kedro run`` (minutes): a process that runs until the test opens the gate
    file, then writes a new model where the app loads it from, as a training run does."""
    code = (
        "import os, shutil, time; print('training', flush=True)\n"
        f"while not os.path.exists({str(gate)!r}): time.sleep(0.05)\n"
        f"shutil.copy({str(new_model)!r}, {str(model_path)!r}); print('saved')"
    )
    return (sys.executable, "-c", code)


def _wait(base: str, job_id: str, timeout: float = 240) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        body = requests.get(f"{base}/train/{job_id}", headers=AUTH, timeout=10).json()
        if body["state"] != "running":
            return body
        time.sleep(0.5)
    raise AssertionError(f"training run {job_id} did not finish in {timeout} s")


def test_training_is_disabled_without_a_token(server):
    answer = requests.post(f"{server}/train", headers=AUTH, timeout=10)
    assert answer.status_code == 403
    assert "CHEST_CT_TRAIN_TOKEN" in answer.json()["error"]
    assert requests.get(f"{server}/train/abc", headers=AUTH, timeout=10).status_code == 403


def test_a_training_run_switches_the_app_to_the_new_model(
    live_server, trained_model_path, retrained_model_path, tmp_path, sample_image_path
):
    model_path = tmp_path / "models" / "classifier.keras"
    model_path.parent.mkdir()
    shutil.copy(trained_model_path, model_path)
    gate = tmp_path / "finish-training"
    command = _training_command(retrained_model_path, model_path, gate)
    base = live_server(model_path, train_token=TOKEN, train_command=command)
    image = sample_image_path("large_cell_carcinoma").read_bytes()
    before = requests.get(f"{base}/health", timeout=10).json()["model"]
    answer_before = requests.post(
        f"{base}/predict", files={"file": ("x.png", image)}, timeout=60
    ).json()

    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": TOKEN}):
        refused = requests.post(f"{base}/train", headers=headers, timeout=10)
        assert refused.status_code == 401
        assert refused.headers["WWW-Authenticate"].startswith("Bearer")

    started = requests.post(f"{base}/train", headers=AUTH, timeout=10)
    assert started.status_code == 202, started.text
    job = started.json()
    assert job["state"] == "running" and started.headers["Location"] == job["status_url"]
    busy = requests.post(f"{base}/train", headers=AUTH, timeout=10)
    assert busy.status_code == 409 and busy.json()["code"] == "training_busy"
    assert (
        requests.get(f"{base}/health", timeout=10).json()["training"]["running_job"]
        == (job["job_id"])
    )
    # the old model answers while the run goes on
    during = requests.post(f"{base}/predict", files={"file": ("x.png", image)}, timeout=60)
    assert during.json()["model"]["version"] == before["version"]
    gate.touch()

    finished = _wait(base, job["job_id"])
    assert finished["state"] == "succeeded", finished
    assert finished["returncode"] == 0 and "saved" in finished["log_tail"]
    assert (
        finished["message"]
        == f"the app now serves the new model (version {finished['model']['version']})"
    )
    after = requests.get(f"{base}/health", timeout=10).json()["model"]
    assert after["version"] != before["version"] and finished["model"] == after
    answer_after = requests.post(
        f"{base}/predict", files={"file": ("x.png", image)}, timeout=60
    ).json()
    assert answer_after["model"]["version"] == after["version"]
    assert answer_after["probabilities"] != answer_before["probabilities"]
    assert requests.get(f"{base}/train/nope", headers=AUTH, timeout=10).status_code == 404


def test_a_failed_run_keeps_the_old_model(live_server, trained_model_path):
    failing = (sys.executable, "-c", "import sys; print('no data'); sys.exit(3)")
    base = live_server(trained_model_path, train_token=TOKEN, train_command=failing)
    before = requests.get(f"{base}/health", timeout=10).json()["model"]
    job = requests.post(f"{base}/train", headers=AUTH, timeout=10).json()
    finished = _wait(base, job["job_id"], timeout=60)
    assert finished["state"] == "failed" and finished["returncode"] == 3
    assert finished["log_tail"] == ["no data"] and "3" in finished["message"]
    health = requests.get(f"{base}/health", timeout=10).json()
    assert health["model"] == before and health["training"]["running_job"] is None
    # a new run may start once the failed one is over
    assert requests.post(f"{base}/train", headers=AUTH, timeout=10).status_code == 202


def test_a_run_that_leaves_the_model_unchanged_says_so(live_server, trained_model_path):
    # as in registry mode when the champion gate keeps the previous version
    unchanged = (sys.executable, "-c", "print('nothing better')")
    base = live_server(trained_model_path, train_token=TOKEN, train_command=unchanged)
    job = requests.post(f"{base}/train", headers=AUTH, timeout=10).json()
    finished = _wait(base, job["job_id"], timeout=120)
    assert finished["state"] == "succeeded" and "unchanged" in finished["message"]


def test_a_run_that_writes_a_broken_model_keeps_the_old_one(
    live_server, trained_model_path, tmp_path
):
    model_path = tmp_path / "classifier.keras"
    shutil.copy(trained_model_path, model_path)
    breaking = (sys.executable, "-c", f"open({str(model_path)!r}, 'wb').write(b'garbage')")
    base = live_server(model_path, train_token=TOKEN, train_command=breaking)
    before = requests.get(f"{base}/health", timeout=10).json()["model"]
    job = requests.post(f"{base}/train", headers=AUTH, timeout=10).json()
    finished = _wait(base, job["job_id"], timeout=120)
    assert finished["state"] == "failed" and "cannot be loaded" in finished["message"]
    health = requests.get(f"{base}/health", timeout=10)
    assert health.status_code == 200 and health.json()["model"] == before


def test_a_short_token_leaves_training_disabled(live_server, trained_model_path):
    base = live_server(trained_model_path, train_token="short-token")
    answer = requests.post(f"{base}/train", headers={"Authorization": "Bearer short-token"},
                           timeout=10)  # fmt: skip
    assert answer.status_code == 403 and "shorter than 32 characters" in answer.json()["error"]


def test_wrong_tokens_lock_the_door_for_a_while(live_server, trained_model_path, tmp_path):
    base = live_server(
        trained_model_path, train_token=TOKEN, train_command=(sys.executable, "-c", "")
    )
    for _ in range(5):
        wrong = requests.post(f"{base}/train", headers={"Authorization": "Bearer guess"},
                              timeout=10)  # fmt: skip
        assert wrong.status_code == 401
    locked = requests.post(f"{base}/train", headers=AUTH, timeout=10)  # even the right one
    assert locked.status_code == 429 and int(locked.headers["Retry-After"]) > 0


def test_the_training_process_never_sees_the_token(live_server, trained_model_path, monkeypatch):
    monkeypatch.setenv("CHEST_CT_TRAIN_TOKEN", TOKEN)  # as the app's own environment holds it
    code = "import os; print('token seen:', 'CHEST_CT_TRAIN_TOKEN' in os.environ)"
    base = live_server(
        trained_model_path, train_token=TOKEN, train_command=(sys.executable, "-c", code)
    )
    job = requests.post(f"{base}/train", headers=AUTH, timeout=10).json()
    finished = _wait(base, job["job_id"])
    assert "token seen: False" in "\n".join(finished["log_tail"])
