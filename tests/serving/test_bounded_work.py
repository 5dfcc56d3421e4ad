"""Expensive work is bounded: explanations beyond the allowed number are refused at once with
429, while /health and plain /predict keep answering."""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
import requests

from chest_ct_classifier.serving import served_model
from chest_ct_classifier.serving.settings import ServingSettings

pytestmark = pytest.mark.slow  # trains a small model once per session


def test_extra_explanations_get_429_and_the_rest_keeps_answering(
    live_server, trained_model_path, sample_image_path, monkeypatch
):
    original = served_model.grad_cam

    def slow_grad_cam(*args, **kwargs):  # an explanation as slow as VGG16's on a busy CPU
        time.sleep(1.5)
        return original(*args, **kwargs)

    monkeypatch.setattr(served_model, "grad_cam", slow_grad_cam)
    base = live_server(trained_model_path, max_explanations=1)
    image = sample_image_path("normal").read_bytes()

    def explain(_: int) -> requests.Response:
        return requests.post(f"{base}/predict?explain=1", files={"file": ("x.png", image)},
                             timeout=60)  # fmt: skip

    with ThreadPoolExecutor(8) as pool:
        answers = pool.map(explain, range(8))
        time.sleep(0.3)  # the explanations are under way
        started = time.perf_counter()
        health = requests.get(f"{base}/health", timeout=10)
        plain = requests.post(f"{base}/predict", files={"file": ("x.png", image)}, timeout=10)
        waited = time.perf_counter() - started
        answers = list(answers)
    assert health.status_code == 200 and plain.status_code == 200 and waited < 2.0
    statuses = [answer.status_code for answer in answers]
    assert set(statuses) <= {200, 429} and statuses.count(200) >= 1 and statuses.count(429) >= 5
    refused = next(answer for answer in answers if answer.status_code == 429)
    assert refused.json()["code"] == "explanations_busy"
    assert int(refused.headers["Retry-After"]) > 0
    assert refused.elapsed.total_seconds() < 1.0  # refused at once, not after waiting


def test_at_most_max_decodes_images_are_decoded_at_once(
    live_server, trained_model_path, sample_image_path, monkeypatch
):
    original = served_model.prepare_images
    running, most = [0], [0]
    counting = threading.Lock()

    def slow_decode(*args, **kwargs):  # a large image's decode, long enough to overlap
        with counting:
            running[0] += 1
            most[0] = max(most[0], running[0])
        try:
            time.sleep(0.3)
            return original(*args, **kwargs)
        finally:
            with counting:
                running[0] -= 1

    monkeypatch.setattr(served_model, "prepare_images", slow_decode)
    base = live_server(trained_model_path, max_decodes=2)
    image = sample_image_path("normal").read_bytes()

    def predict(_: int) -> int:
        return requests.post(
            f"{base}/predict", files={"file": ("x.png", image)}, timeout=60
        ).status_code

    with ThreadPoolExecutor(8) as pool:
        assert set(pool.map(predict, range(8))) == {200}  # every one answered, in turns
    assert most[0] == 2


def test_limits_default_to_what_ct_slices_need():
    settings = ServingSettings.from_environment({})
    assert settings.max_image_pixels == 4_000_000 and settings.max_explanations == 1
    assert settings.max_decodes == 2 and settings.forward_timeout_s == 30.0
    assert (
        ServingSettings.from_environment({"CHEST_CT_MAX_EXPLANATIONS": "3"}).max_explanations == 3
    )


def test_a_hung_forward_pass_answers_503_and_the_next_request_is_served(
    live_server, trained_model_path, sample_image_path, monkeypatch
):
    original = served_model.ServedModel._answers
    hang, release = threading.Event(), threading.Event()

    def answers(self, batch):  # a forward pass that hangs while `hang` is set
        if hang.is_set():
            release.wait(60)
        return original(self, batch)

    monkeypatch.setattr(served_model.ServedModel, "_answers", answers)
    base = live_server(trained_model_path, forward_timeout_s=1.0)
    image = sample_image_path("normal").read_bytes()
    try:
        hang.set()
        started = time.perf_counter()
        hung = requests.post(f"{base}/predict", files={"file": ("x.png", image)}, timeout=30)
        waited = time.perf_counter() - started
        assert hung.status_code == 503 and hung.json()["code"] == "model_timeout", hung.text
        assert int(hung.headers["Retry-After"]) > 0 and 1.0 <= waited < 5.0
        hang.clear()
        served = requests.post(f"{base}/predict", files={"file": ("x.png", image)}, timeout=30)
        assert served.status_code == 200, served.text  # a new batching thread answered
        batching = requests.get(f"{base}/health", timeout=10).json()["batching"]
        assert batching["forward_timeouts"] == 1 and batching["forward_timeout_s"] == 1.0
    finally:
        release.set()
