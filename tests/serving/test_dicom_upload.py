"""DICOM through the app over HTTP: the same answer as the PNG it was made from, the windowed
slice sent back, one answer per frame, clear refusals, and no patient data anywhere."""

from __future__ import annotations

import base64
import io
import json
from pathlib import Path

import numpy as np
import pytest
import requests
from PIL import Image
from pydicom.data import get_testdata_file

from chest_ct_classifier.images.labels import LABELS
from tests.dicom_files import ENCODINGS, PATIENT_MARKERS, ct_dicom

pytestmark = pytest.mark.slow  # trains a small model once per session


def _post(base: str, data: bytes, name: str = "slice") -> requests.Response:
    return requests.post(f"{base}/predict", files={"file": (name, data)}, timeout=60)


def _testdata(name: str) -> bytes:
    return Path(get_testdata_file(name, download=False)).read_bytes()


@pytest.mark.parametrize("encoding", ENCODINGS)
def test_a_dicom_slice_gets_the_answer_of_its_png(server, sample_image_path, encoding):
    png = sample_image_path("adenocarcinoma").read_bytes()
    expected = _post(server, png, "x.png").json()
    answer = _post(server, ct_dicom(png, encoding, intercept=-1500, unsigned=True))
    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert body["label"] == expected["label"] and body["status"] == expected["status"]
    for label in LABELS:
        assert body["probabilities"][label] == pytest.approx(
            expected["probabilities"][label], abs=0.02
        )
    assert body["slice"]["modality"] == "CT" and body["slice"]["frame"] is None
    assert body["slice"]["instance_number"] == 1 and body["slice"]["series_uid"]
    preview = Image.open(io.BytesIO(base64.b64decode(body["preview_png"])))
    assert preview.size == (body["model"]["image_size"],) * 2  # the square the model saw
    assert expected["slice"] is None and "preview_png" not in expected  # a PNG needs neither


def test_multi_frame_files_get_an_answer_per_frame(server, sample_image_path):
    png = sample_image_path("normal").read_bytes()
    body = _post(server, ct_dicom(png, "rle", frames=3)).json()
    assert [frame["slice"]["frame"] for frame in body["frames"]] == [0, 1, 2]
    assert body["label"] == body["frames"][0]["label"]
    assert all("preview_png" in frame for frame in body["frames"])


def test_dicom_that_is_no_ct_slice_is_refused_or_flagged(server):
    no_pixels = _post(server, _testdata("rtplan.dcm"))
    assert no_pixels.status_code == 400 and "without an image" in no_pixels.json()["error"]
    truncated = _post(server, _testdata("MR_truncated.dcm"))
    assert truncated.status_code == 400 and "cannot be decoded" in truncated.json()["error"]
    mr = _post(server, _testdata("MR_small.dcm")).json()
    assert mr["status"] == "out_of_distribution" and mr["label"] is None
    assert mr["ood"]["reason"] == "a DICOM image of modality MR, not CT"


def test_patient_data_never_leaves_the_file(live_server, trained_model_path, sample_image_path,
                                            tmp_path, caplog):  # fmt: skip
    audit = tmp_path / "audit.jsonl"
    base = live_server(trained_model_path, audit_log=audit)
    png = sample_image_path("squamous_cell_carcinoma").read_bytes()
    answers = [
        _post(base, ct_dicom(png)).text,
        _post(base, ct_dicom(png, "jpeg2000", frames=2)).text,
        _post(base, ct_dicom(png)[:3000]).text,  # truncated: an error
        requests.post(
            f"{base}/predict", json={"image": base64.b64encode(ct_dicom(png)).decode()}, timeout=60
        ).text,
    ]
    outputs = "\n".join([*answers, audit.read_text(), caplog.text])
    assert json.loads(answers[2])["code"] == "unreadable_image"
    for marker in PATIENT_MARKERS.values():
        assert marker not in outputs
    lines = [json.loads(line) for line in audit.read_text().splitlines()]
    assert [line["http_status"] for line in lines] == [200, 200, 400, 200]
    assert lines[1]["n_frames"] == 2


def test_the_window_is_a_setting(live_server, trained_model_path, sample_image_path):
    png = sample_image_path("normal").read_bytes()
    data = ct_dicom(png)
    lung = _post(live_server(trained_model_path), data).json()
    own = _post(live_server(trained_model_path, dicom_window="file"), data).json()
    assert lung["preview_png"] != own["preview_png"]  # the file's own 40 / 400 window
    preview = np.asarray(Image.open(io.BytesIO(base64.b64decode(own["preview_png"]))))
    assert preview.shape[-1] == 3
