"""The command line's table: what a person reads after `chest-ct predict` (the run itself is
tested on a trained project in tests/integration/test_project_run.py)."""

from __future__ import annotations

import pandas as pd
from click.testing import CliRunner

from chest_ct_classifier.cli import cli, format_predictions
from chest_ct_classifier.images.labels import LABELS, probability_columns


def test_the_table_shows_the_display_name_and_its_probability_or_why_there_is_none():
    rows = [
        {"image": "scans/a.png", "label": "large_cell_carcinoma",
         **dict(zip(probability_columns(), [0.1, 0.7, 0.15, 0.05], strict=True)), "error": None},
        {"image": "scans/broken.png", "label": None,
         **dict.fromkeys(probability_columns()), "error": "not a readable image"},
        {"image": "cat.jpg", "status": "out_of_distribution", "label": None,
         **dict(zip(probability_columns(), [0.9, 0.05, 0.03, 0.02], strict=True)),
         "ood_reason": "a colour image: CT slices are grey", "error": None},
        {"image": "scans/b.png", "status": "uncertain", "label": "normal",
         **dict(zip(probability_columns(), [0.3, 0.2, 0.4, 0.1], strict=True)), "error": None},
    ]  # fmt: skip
    table = format_predictions(pd.DataFrame(rows)).splitlines()
    assert table[0].split() == ["image", "predicted", "probability", "note"]
    assert set(table[1]) <= {"-", " "}
    assert table[2].split()[:5] == ["scans/a.png", "Large", "cell", "carcinoma", "0.700"]
    assert (
        table[3].startswith("scans/broken.png") and "unreadable: not a readable image" in table[3]
    )
    # refused: no type and no probability shown, the reason instead
    assert table[4].split()[:2] == ["cat.jpg", "-"]
    assert "not a chest CT slice: a colour image" in table[4] and "0.9" not in table[4]
    assert table[5].split()[-2:] == ["0.400", "uncertain"]
    assert len(LABELS) == len(probability_columns())


def test_predict_needs_a_path_that_exists(tmp_path):
    runner = CliRunner()
    assert runner.invoke(cli, ["predict"]).exit_code == 2
    missing = runner.invoke(cli, ["predict", str(tmp_path / "nowhere.png")])
    assert missing.exit_code == 2 and "does not exist" in missing.output


def test_python_m_runs_kedro_or_predicts():
    """``python -m chest_ct_classifier`` is ``kedro run`` (its options), ``... predict`` the
    command line's predict."""
    import subprocess
    import sys

    from tests.conftest import PROJECT_ROOT

    def help_of(*args: str) -> str:
        result = subprocess.run(
            [sys.executable, "-m", "chest_ct_classifier", *args, "--help"],
            cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=300, check=False,
        )  # fmt: skip
        assert result.returncode == 0, result.stderr[-3000:]
        return result.stdout

    assert "--pipelines" in help_of()
    assert "Predict every image of each PATH" in help_of("predict")
