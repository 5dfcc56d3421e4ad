"""`kedro run` with a bad parameter stops before any node runs, naming the key, the value and
what is allowed: a typo costs seconds, not the minutes of caching that come first."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.conftest import BIN, PROJECT_ROOT

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def project(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("project")
    for item in ("pyproject.toml", ".telemetry"):
        shutil.copy2(PROJECT_ROOT / item, root / item)
    shutil.copytree(PROJECT_ROOT / "conf", root / "conf", ignore=shutil.ignore_patterns("local"))
    (root / "conf" / "local").mkdir()
    shutil.copytree(PROJECT_ROOT / "src", root / "src", ignore=shutil.ignore_patterns("*.egg-info"))
    shutil.copytree(PROJECT_ROOT / "data" / "01_raw" / "sample", root / "data/01_raw/sample")
    (root / "logs").mkdir()
    return root


def _kedro_run(project: Path, params: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
    env |= {"KEDRO_DISABLE_TELEMETRY": "1", "DO_NOT_TRACK": "1", "COLUMNS": "200"}
    return subprocess.run(
        [str(BIN / "kedro"), "run", "--env", "test", "--params", params],
        cwd=project,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )


BAD_PARAMETERS = {
    "training.calibration.fit_on=vlaid": (
        "training.calibration.fit_on = 'vlaid': Input should be 'none', 'holdout' or 'valid'"
    ),
    "training.batch_size=many": "training.batch_size = 'many': Input should be a valid",
    "training.phase1.max_epoch=3": (
        "training.phase1.max_epoch: unknown key (value 3); allowed: max_epochs, patience,"
    ),
}


def test_bad_parameters_stop_the_run_before_any_node_each_named(project):
    """Three mistakes in one command: one run names them all (one kedro start, not three)."""
    result = _kedro_run(project, ",".join(BAD_PARAMETERS))
    output = result.stdout + result.stderr
    assert result.returncode != 0
    assert "ParameterError" in output, output[-3000:]
    for expected in BAD_PARAMETERS.values():
        assert expected in " ".join(output.split()), output[-3000:]
    assert "Running node" not in output and "Completed node" not in output
    assert not (project / "data" / "02_intermediate").exists()  # nothing written
    assert not (project / "mlflow.db").exists()  # no MLflow run opened
