"""The whole flow on DICOM: the bundled sample stored as CT DICOM files (every encoding, names
with and without ``.dcm``, patient fields holding marker values) is ingested, trained on,
evaluated and registered; no output of any step holds a marker. Serving DICOM files (the
registered model and batch inference) has its test on the trained project, in
test_project_run.py."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

from tests.conftest import run_tool
from tests.dicom_files import ENCODINGS, PATIENT_MARKERS, ct_dicom
from tests.integration.conftest import project_copy

pytestmark = pytest.mark.slow  # one `kedro run --env test` (about a minute)


def _dicom_sample(sample: Path, target: Path) -> int:
    """The sample's images as DICOM files in the same folders; how many."""
    images = sorted(p for p in sample.rglob("*") if p.suffix.lower() in {".png", ".jpg"})
    for index, path in enumerate(images):
        relative = path.relative_to(sample).with_suffix("" if index % 2 else ".dcm")
        (target / relative).parent.mkdir(parents=True, exist_ok=True)
        (target / relative).write_bytes(
            ct_dicom(path.read_bytes(), ENCODINGS[index % len(ENCODINGS)], instance=index + 1)
        )
    return len(images)


def test_the_whole_flow_on_dicom_keeps_patient_data_out(tmp_path):
    root = project_copy(tmp_path)
    n_files = _dicom_sample(root / "data/01_raw/sample", root / "dicom_sample")
    run = run_tool(
        root, "kedro", "run", "--env", "test",
        "--params", f"data_ingestion.source={root / 'dicom_sample'}",
    )  # fmt: skip

    index = pd.read_csv(root / "data/02_intermediate/image_index.csv")
    assert len(index) == n_files and (index["format"] == "DICOM").all()
    metrics = json.loads((root / "data/08_reporting/metrics.json").read_text())
    assert metrics["splits"]["test"]["n_images"] == 12  # the same images as the PNG sample

    outputs = [run.stdout, run.stderr]
    # the input files, and ingestion's byte-for-byte copies of them, hold the markers: they
    # are the data; everything the flow wrote about them must not
    inputs = (root / "data" / "01_raw", root / "data" / "02_intermediate" / "images")
    for folder in ("data", "logs", "mlruns"):
        for file in (root / folder).rglob("*"):
            if file.is_file() and not any(kept in file.parents for kept in inputs):
                outputs.append(file.read_bytes().decode("latin-1"))
    outputs.append((root / "mlflow.db").read_bytes().decode("latin-1"))
    text = "\n".join(outputs)
    for marker in PATIENT_MARKERS.values():
        assert marker not in text
