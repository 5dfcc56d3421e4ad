"""The JSON API over HTTP: the real app, a small model trained for real, real sample images."""

from __future__ import annotations

import base64
import io
import struct
import zlib
from concurrent.futures import ThreadPoolExecutor

import keras
import numpy as np
import pytest
import requests
from PIL import Image

from chest_ct_classifier.images.labels import LABELS
from chest_ct_classifier.pipelines.inference.nodes import predict_images

pytestmark = pytest.mark.slow  # trains a small model once per session (~10 s)


def _post_file(base: str, data: bytes, name: str = "scan.png", **kwargs) -> requests.Response:
    return requests.post(f"{base}/predict", files={"file": (name, data)}, timeout=60, **kwargs)


def _reference_probabilities(model_path, images: dict[str, bytes]) -> dict[str, np.ndarray]:
    """What the batch inference pipeline answers for the same images with the same model."""
    model = keras.saving.load_model(model_path, compile=False)
    table = predict_images({k: (lambda v=v: v) for k, v in images.items()}, model, batch_size=8)
    columns = [c for c in table.columns if c.startswith("p_")]
    return {row.image: row[columns].to_numpy(dtype=float) for _, row in table.iterrows()}


def test_health_reports_the_loaded_model(server):
    answer = requests.get(f"{server}/health", timeout=10)
    assert answer.status_code == 200
    body = answer.json()
    assert body["status"] == "ok" and body["model_loaded"] is True
    assert body["model"]["version"].startswith("sha256:")
    assert body["model"]["weights"] == "hed_bsds500"
    assert body["model"]["source"] == "file"
    assert body["uptime_seconds"] >= 0
    assert body["training"] == {"enabled": False, "running_job": None}


def test_predict_answers_like_the_batch_pipeline_for_every_class(
    server, trained_model_path, sample_image_path
):
    images = {label: sample_image_path(label).read_bytes() for label in LABELS}
    expected = _reference_probabilities(trained_model_path, images)
    for label, data in images.items():
        answer = requests.post(f"{server}/predict", files={"file": ("x.png", data)}, timeout=60)
        assert answer.status_code == 200, answer.text
        body = answer.json()
        probabilities = np.array([body["probabilities"][name] for name in LABELS])
        np.testing.assert_allclose(probabilities, expected[label], atol=1e-5)
        assert body["label"] == LABELS[int(np.argmax(expected[label]))]
        assert body["display_name"] and body["notice"].startswith("Research tool")
        assert [c["label"] for c in body["classes"]] == list(LABELS)
        assert body["confidence"] == pytest.approx(max(probabilities))
        assert body["uncertain"] == (body["confidence"] < 0.5)
        assert body["model"]["image_size"] == 32
        assert "heatmap_png" not in body


def test_json_base64_gives_the_same_answer_as_an_upload(server, sample_image_path):
    data = sample_image_path("normal").read_bytes()
    upload = _post_file(server, data).json()
    encoded = base64.b64encode(data).decode()
    plain = requests.post(f"{server}/predict", json={"image": encoded}, timeout=60).json()
    data_url = requests.post(
        f"{server}/predict", json={"image": f"data:image/png;base64,{encoded}"}, timeout=60
    ).json()
    assert plain["probabilities"] == upload["probabilities"] == data_url["probabilities"]


def test_explain_adds_a_grad_cam_overlay_of_the_model_input_size(server, sample_image_path):
    data = sample_image_path("adenocarcinoma").read_bytes()
    plain = _post_file(server, data).json()
    explained = requests.post(
        f"{server}/predict?explain=1", files={"file": ("x.png", data)}, timeout=60
    ).json()
    overlay = Image.open(io.BytesIO(base64.b64decode(explained["heatmap_png"])))
    assert overlay.format == "PNG" and overlay.size == (32, 32) and overlay.mode == "RGB"
    assert explained["label"] == plain["label"]
    for label in LABELS:
        assert explained["probabilities"][label] == pytest.approx(
            plain["probabilities"][label], abs=1e-5
        )


def _png(width: int, height: int) -> bytes:
    buffer = io.BytesIO()
    Image.new("L", (width, height), 90).save(buffer, format="PNG")
    return buffer.getvalue()


def _png_header_claiming(width: int, height: int) -> bytes:
    """A tiny PNG whose header claims a huge size: a decompression bomb's first bytes."""

    def chunk(kind: bytes, payload: bytes) -> bytes:
        body = kind + payload
        return struct.pack(">I", len(payload)) + body + struct.pack(">I", zlib.crc32(body))

    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(b"\x00" * 1024))
        + chunk(b"IEND", b"")
    )


@pytest.mark.parametrize(
    ("request_kwargs", "status", "code"),
    [
        ({"data": b"hello", "headers": {"Content-Type": "text/plain"}}, 415, None),
        ({"data": b""}, 400, "empty_body"),
        ({"files": {"file": ("notes.txt", b"not an image at all")}}, 400, "unreadable_image"),
        ({"files": {"file": ("scan.png", b"")}}, 400, "empty_file"),
        ({"files": {"other": ("scan.png", b"\x89PNG")}}, 400, "missing_file"),
        ({"json": {"image": "@@not base64@@"}}, 400, "invalid_base64"),
        ({"json": {"picture": "AAAA"}}, 400, "invalid_json"),
        ({"json": ["AAAA"]}, 400, "invalid_json"),
        (
            {"data": b"{not json", "headers": {"Content-Type": "application/json"}},
            400,
            "invalid_json",
        ),
        # 25 megapixels: over the app's default limit, under PIL's own bomb threshold
        ({"files": {"file": ("huge.png", _png_header_claiming(5000, 5000))}}, 413, None),
        ({"files": {"file": ("bomb.png", _png_header_claiming(100_000, 100_000))}}, 413, None),
        (
            {"data": b"[" * 100_000, "headers": {"Content-Type": "application/json"}},
            400,
            "invalid_json",
        ),
        ({"files": {f"field{i}": ("x", b"x") for i in range(1100)}}, 413, "payload_too_large"),
    ],
    ids=[
        "wrong-content-type",
        "empty-body",
        "not-an-image",
        "empty-file",
        "missing-file-field",
        "invalid-base64",
        "json-without-image",
        "json-not-an-object",
        "malformed-json",
        "over-the-pixel-limit",
        "decompression-bomb",
        "deeply-nested-json",
        "too-many-form-parts",
    ],
)
def test_bad_input_gets_a_clear_4xx_and_the_server_stays_up(server, request_kwargs, status, code):
    answer = requests.post(f"{server}/predict", timeout=60, **request_kwargs)
    assert answer.status_code == status, answer.text
    body = answer.json()
    assert set(body) == {"error", "code", "request_id"} and len(body["error"]) > 15
    assert body["request_id"] == answer.headers["X-Request-ID"]
    assert code is None or body["code"] == code
    assert "Traceback" not in answer.text
    assert requests.get(f"{server}/health", timeout=10).status_code == 200


def test_truncated_and_corrupt_images_are_refused(server, sample_image_path):
    data = sample_image_path("squamous_cell_carcinoma").read_bytes()
    corrupt = data[:64] + bytes(len(data) - 64)
    for broken in (data[: len(data) // 2], corrupt):
        answer = _post_file(server, broken)
        assert answer.status_code == 400, answer.text
        assert answer.json()["code"] == "unreadable_image"
    assert _post_file(server, data).status_code == 200


def test_size_and_pixel_limits(live_server, trained_model_path):
    base = live_server(trained_model_path, max_upload_bytes=200_000, max_image_pixels=250_000)
    too_many_pixels = _post_file(base, _png(600, 600))
    assert too_many_pixels.status_code == 413
    assert "250,000" in too_many_pixels.json()["error"]
    assert _post_file(base, _png(400, 400)).status_code == 200
    noise = Image.fromarray(np.random.default_rng(0).integers(0, 255, (400, 400), np.uint8))
    buffer = io.BytesIO()
    noise.save(buffer, format="PNG")  # ~160 KB as a file, over the limit once base64-encoded
    encoded = base64.b64encode(buffer.getvalue()).decode()
    too_big = requests.post(f"{base}/predict", json={"image": encoded}, timeout=60)
    assert too_big.status_code == 413
    assert too_big.json()["code"] == "payload_too_large"
    assert requests.get(f"{base}/health", timeout=10).status_code == 200


def test_concurrent_clients_get_their_own_answers(server, sample_paths_by_label):
    images = [p.read_bytes() for paths in sample_paths_by_label.values() for p in paths][:16]
    expected = [_post_file(server, data).json()["probabilities"] for data in images]

    def client(number: int) -> list[tuple[int, dict]]:
        answers = []
        with requests.Session() as session:
            for request in range(25):
                index = (number * 25 + request) % len(images)
                answer = session.post(
                    f"{server}/predict", files={"file": ("x.png", images[index])}, timeout=120
                )
                answers.append(
                    (index, answer.json() if answer.ok else {"status": answer.status_code})
                )
        return answers

    with ThreadPoolExecutor(max_workers=8) as pool:
        results = [answer for answers in pool.map(client, range(8)) for answer in answers]
    assert len(results) == 200
    for index, body in results:
        assert "probabilities" in body, body
        for label in LABELS:
            assert body["probabilities"][label] == pytest.approx(expected[index][label], abs=1e-5)


def test_without_a_model_health_and_predict_say_how_to_train_one(live_server, sample_image_path):
    base = live_server(None)
    health = requests.get(f"{base}/health", timeout=10)
    assert health.status_code == 503
    body = health.json()
    assert body["status"] == "no_model" and body["model"] is None
    assert "kedro run" in body["message"]
    answer = _post_file(base, sample_image_path("normal").read_bytes())
    assert answer.status_code == 503
    assert answer.json()["code"] == "no_model" and "kedro run" in answer.json()["error"]
    assert requests.get(base, timeout=10).status_code == 200


def test_a_broken_model_file_is_reported_not_crashed_on(live_server, tmp_path):
    broken = tmp_path / "classifier.keras"
    broken.write_bytes(b"PK\x03\x04 not really a keras file")
    health = requests.get(f"{live_server(broken)}/health", timeout=10)
    assert health.status_code == 503
    assert "cannot be loaded" in health.json()["message"]


def test_a_model_that_is_not_a_four_class_classifier_is_refused_at_start(live_server, tmp_path):
    inputs = keras.Input((32, 32, 3))
    features = keras.layers.GlobalAveragePooling2D()(inputs)
    foreign = keras.Model(inputs, keras.layers.Dense(3, activation="softmax")(features))
    foreign.save(tmp_path / "foreign.keras")
    health = requests.get(f"{live_server(tmp_path / 'foreign.keras')}/health", timeout=10)
    assert health.status_code == 503
    assert "3 outputs, not one per class" in health.json()["message"]


def test_page_and_vendored_assets_are_served(server):
    page = requests.get(server, timeout=10)
    assert page.status_code == 200 and "text/html" in page.headers["Content-Type"]
    assert "not a diagnosis" in page.text
    assert "cdn" not in page.text.lower()
    for asset in (
        "/static/vendor/bootstrap/bootstrap.min.css",
        "/static/vendor/bootstrap/bootstrap.bundle.min.js",
    ):
        assert requests.get(server + asset, timeout=10).status_code == 200


def test_errors_are_json_and_headers_are_safe(server):
    missing = requests.get(f"{server}/nothing-here", timeout=10)
    assert missing.status_code == 404 and missing.json()["code"] == "not_found"
    wrong_method = requests.get(f"{server}/predict", timeout=10)
    assert wrong_method.status_code == 405 and "error" in wrong_method.json()
    assert "POST" in wrong_method.headers["Allow"]
    headers = requests.get(f"{server}/health", timeout=10).headers
    assert headers["X-Content-Type-Options"] == "nosniff"
    assert headers["X-Frame-Options"] == "DENY"
    assert "default-src 'self'" in headers["Content-Security-Policy"]
    assert "Access-Control-Allow-Origin" not in headers


def test_cors_allows_only_the_configured_origins(live_server, trained_model_path):
    base = live_server(trained_model_path, cors_origins=("https://viewer.example.org",))
    allowed = requests.get(
        f"{base}/health", headers={"Origin": "https://viewer.example.org"}, timeout=10
    )
    assert allowed.headers["Access-Control-Allow-Origin"] == "https://viewer.example.org"
    other = requests.get(f"{base}/health", headers={"Origin": "https://evil.example"}, timeout=10)
    assert "Access-Control-Allow-Origin" not in other.headers


def test_the_model_card_page_says_why_there_is_none(live_server, trained_model_path, tmp_path):
    """No card for the served weights: a 404 page that says so (the trained project's card is
    tested in tests/integration/test_project_run.py)."""
    base = live_server(trained_model_path, project_path=tmp_path)
    page = requests.get(f"{base}/model-card", timeout=30)
    assert page.status_code == 404 and page.headers["Content-Type"].startswith("text/html")
    assert "No model card was found" in page.text
    (tmp_path / "conf" / "base").mkdir(parents=True)
    (tmp_path / "conf" / "base" / "catalog.yml").write_text(
        "model_card:\n  type: x\n  dataset:\n    type: json.JSONDataset\n    filepath: card.json\n"
    )
    (tmp_path / "card.json").write_text('{"model": {"fingerprint": "another"}}')
    page = requests.get(f"{base}/model-card", timeout=30)
    assert page.status_code == 404 and "describes other weights" in page.text
