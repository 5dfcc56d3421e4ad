"""The serving benchmark runs end to end: gunicorn as the image starts it, a small real model."""

import json

import pytest

from ..conftest import PROJECT_ROOT, SAMPLE_ROOT, run_tool
from ..serving.conftest import train_small_model

pytestmark = pytest.mark.slow


def test_benchmark_measures_raw_and_served_and_checks_the_answers(tmp_path):
    model = train_small_model(tmp_path / "model" / "classifier.keras", 1, seed=0)
    report = tmp_path / "report" / "serving"
    run_tool(
        tmp_path,
        "python",
        str(PROJECT_ROOT / "scripts" / "benchmark_serving.py"),
        "--model", str(model), "--images", str(SAMPLE_ROOT), "--max-images", "4",
        "--repeats", "3", "--single", "4", "--clients", "2", "--requests", "3",
        "--output", str(report),
    )  # fmt: skip
    result = json.loads(report.with_suffix(".json").read_text())
    assert result["raw"]["image_size"] == 32 and result["images"] == 4
    concurrent = result["served"]["concurrent"]
    assert concurrent["requests"] == 6 and concurrent["errors"] == 0
    assert concurrent["answers_not_matching_single_client"] == 0
    assert result["raw"]["forward_batch1"]["p50_ms"] > 0 and result["peak_rss_mb"] > 0
    assert "| `/predict`, 2 clients x 3 |" in report.with_suffix(".md").read_text()
