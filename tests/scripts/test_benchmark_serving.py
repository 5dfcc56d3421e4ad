"""The serving benchmark runs end to end: gunicorn as the image starts it, a small real model, in
each precision it is asked for, and the seed-style baseline."""

import json

import keras
import pytest

from chest_ct_classifier.model.numeric_precision import int8_feature_extractor

from ..conftest import PROJECT_ROOT, SAMPLE_ROOT, run_tool
from ..serving.conftest import train_small_model

pytestmark = pytest.mark.slow


def test_benchmark_measures_each_precision_raw_and_served_and_checks_the_answers(tmp_path):
    model = train_small_model(tmp_path / "model" / "classifier.keras", 1, seed=0)
    # an int8 model beside it, but no gate report: the app must refuse int8 and serve fp32
    int8 = int8_feature_extractor(keras.saving.load_model(model, compile=False))
    (model.parent / "classifier_int8.tflite").write_bytes(int8)
    report = tmp_path / "report" / "serving"
    run_tool(
        tmp_path,
        "python",
        str(PROJECT_ROOT / "scripts" / "benchmark_serving.py"),
        "--model", str(model), "--images", str(SAMPLE_ROOT), "--max-images", "4",
        "--precisions", "fp32,int8", "--repeats", "3", "--single", "4", "--clients", "2",
        "--requests", "3", "--baseline", "2", "--threads", "4", "--rounds", "2",
        "--output", str(report),
    )  # fmt: skip
    result = json.loads(report.with_suffix(".json").read_text())
    assert result["image_size"] == 32 and result["images"] == 4 and result["threads"] == 4
    assert set(result["precisions"]) == {"fp32", "int8"}
    fp32, int8_row = result["precisions"]["fp32"], result["precisions"]["int8"]
    assert fp32["served_precision"] == "fp32"
    assert int8_row["served_precision"] == "fp32"  # no gate report: never served in int8
    assert int8_row["raw"]["forward_batch16_per_image_ms"] > 0  # measured all the same
    for row in (fp32, int8_row):
        # two rounds each, the precisions taking turns; the row is the median (lower) round
        assert len(row["rounds_images_per_second"]) == 2
        assert row["concurrent"]["images_per_second"] == min(row["rounds_images_per_second"])
        concurrent = row["concurrent"]
        assert concurrent["requests"] == 6 and concurrent["errors"] == 0
        assert concurrent["answers_not_matching_single_client"] == 0
        assert row["peak_rss_mb"] > 0 and row["latency_over_forward"] > 0
    assert result["seed_baseline"]["requests"] == 2 and result["seed_baseline"]["p50_ms"] > 0
    table = report.with_suffix(".md").read_text()
    assert "| int8 (fp32) |" in table and "seed-style" in table and "2 round(s)" in table
    ratio = int8_row["concurrent"]["images_per_second"] / fp32["concurrent"]["images_per_second"]
    assert f"| {ratio:.2f} |" in table  # int8's median round over fp32's
