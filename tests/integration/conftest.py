"""The trained project the slow whole-project tests share: one ``kedro run --env test`` per
test process."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from tests.conftest import PROJECT_ROOT, run_tool

SHARES_THE_TRAINED_PROJECT = pytest.mark.xdist_group("trained_project")
"""Marks the files whose tests use ``trained_project``: they run on one worker (make test's
``--dist loadgroup``), and the project is trained once."""


def project_copy(root: Path) -> Path:
    """The project's conf, code and bundled sample copied into ``root``, ready to run."""
    for item in ("pyproject.toml", ".telemetry", "conf"):
        source = PROJECT_ROOT / item
        if source.is_dir():
            shutil.copytree(source, root / item, ignore=shutil.ignore_patterns("local"))
        else:
            shutil.copy2(source, root / item)
    (root / "conf" / "local").mkdir()
    shutil.copytree(PROJECT_ROOT / "src", root / "src", ignore=shutil.ignore_patterns("*.egg-info"))
    (root / "logs").mkdir()
    shutil.copytree(PROJECT_ROOT / "data" / "01_raw" / "sample", root / "data/01_raw/sample")
    return root


@pytest.fixture(scope="session")
def trained_project(tmp_path_factory) -> Path:
    """A copy of the project (conf, code, bundled sample) after ``kedro run --env test``: a
    trained model, its reports, and its registered champion in the copy's ``mlflow.db``."""
    root = project_copy(tmp_path_factory.mktemp("project"))
    run_tool(root, "kedro", "run", "--env", "test")
    return root
