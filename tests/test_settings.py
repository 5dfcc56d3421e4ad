"""settings.py, which every kedro command reads (`kedro --version`, `kedro mlflow ui`, each DVC
stage's start), loads no TensorFlow: the pipelines that need it import it when they are made."""

from __future__ import annotations

from tests.conftest import PROJECT_ROOT, run_tool


def test_the_project_settings_import_no_tensorflow():
    script = (
        "import sys, chest_ct_classifier.settings; "
        "print(sorted(m for m in ('tensorflow', 'keras') if m in sys.modules))"
    )
    result = run_tool(PROJECT_ROOT, "python", "-c", script)
    assert result.stdout.strip().splitlines()[-1] == "[]"
