"""The training benchmark runs end to end on real images (a small zip of the sample)."""

import json
import zipfile

import pytest

from ..conftest import PROJECT_ROOT, SAMPLE_ROOT, run_tool

pytestmark = pytest.mark.slow


def test_benchmark_times_both_loops_and_writes_its_report(tmp_path):
    archive = tmp_path / "sample.zip"
    with zipfile.ZipFile(archive, "w") as zipped:
        for path in sorted(SAMPLE_ROOT.rglob("*.png")):
            zipped.write(path, path.relative_to(SAMPLE_ROOT).as_posix())
    report = tmp_path / "report" / "bench"
    run_tool(
        tmp_path,
        "python",
        str(PROJECT_ROOT / "scripts" / "benchmark_training.py"),
        "--archive", str(archive), "--images", "8", "--epochs", "1", "--views", "1",
        "--image-size", "32", "--project", str(tmp_path), "--output", str(report),
    )  # fmt: skip
    result = json.loads(report.with_suffix(".json").read_text())
    assert result["images"] == 8 and result["views"] == 1
    assert set(result["seconds_per_epoch"]) == {
        "naive_phase1", "cached_phase1", "naive_phase2", "cached_phase2"
    }  # fmt: skip
    assert all(seconds > 0 for seconds in result["seconds_per_epoch"].values())
    assert result["stages"] == {}  # no run in this folder
    assert "| 2: block 5 + head |" in report.with_suffix(".md").read_text()
