import json
import os

from chest_ct_classifier.images.labels import LABELS
from chest_ct_classifier.serving.measured_quality import from_metrics_file, from_run_metrics


def _report(split: str) -> dict:
    per_class = {label: {"recall": 0.25 * (i + 1)} for i, label in enumerate(LABELS)}
    scores = {"n_images": 158, "accuracy": 0.55, "macro_f1": 0.58, "ece": 0.13}
    return {"splits": {split: {**scores, "per_class": per_class}}}


def test_the_report_written_after_the_model_is_its_record(tmp_path):
    model, report = tmp_path / "classifier.keras", tmp_path / "metrics.json"
    model.write_bytes(b"model")
    report.write_text(json.dumps(_report("test")))
    measured = from_metrics_file(report, model)
    assert measured == {
        "split": "test",
        "images": 158,
        "accuracy": 0.55,
        "macro_f1": 0.58,
        "recall": {label: 0.25 * (i + 1) for i, label in enumerate(LABELS)},
        "ece": 0.13,
    }
    report.write_text(json.dumps(_report("valid")))
    assert from_metrics_file(report, model)["split"] == "valid"


def test_a_model_newer_than_the_report_or_a_bad_report_has_no_record(tmp_path):
    model, report = tmp_path / "classifier.keras", tmp_path / "metrics.json"
    report.write_text(json.dumps(_report("test")))
    model.write_bytes(b"retrained after the last evaluation")
    os.utime(report, (1_000_000, 1_000_000))
    assert from_metrics_file(report, model) is None
    os.utime(report, None)
    os.utime(model, (1_000_000, 1_000_000))
    report.write_text("{not json")
    assert from_metrics_file(report, model) is None
    assert from_metrics_file(tmp_path / "missing.json", model) is None


def test_run_metrics_give_the_test_record_else_valid_else_none():
    valid = {f"valid_recall_{label}": 0.5 for label in LABELS}
    valid |= {"valid_accuracy": 0.7, "valid_macro_f1": 0.6, "valid_ece": 0.1}
    assert from_run_metrics(valid)["split"] == "valid"
    test = {k.replace("valid", "test"): v / 2 for k, v in valid.items()}
    measured = from_run_metrics(valid | test)
    assert measured["split"] == "test" and measured["accuracy"] == 0.35
    assert measured["images"] is None
    assert from_run_metrics({"test_accuracy": 0.5}) is None
