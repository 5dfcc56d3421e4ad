"""DVC reproduces the Kedro pipelines, skips what is up to date, and round-trips the data.

Runs in a temporary git repository holding a copy of the project, in the committed test
environment (KEDRO_ENV=test, conf/test) and with a temporary local DVC remote.
"""

from __future__ import annotations

import hashlib
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from tests.conftest import PROJECT_ROOT, run_tool

pytestmark = pytest.mark.slow

COPIED = (
    "pyproject.toml",
    ".telemetry",
    "dvc.yaml",
    ".dvcignore",
    "conf",
    "src",
    "data/01_raw/sample",
)


def _dvc(repo: Path, *args: str) -> str:
    return run_tool(repo, "dvc", *args, KEDRO_ENV="test").stdout


def _md5(path: Path) -> str:
    return hashlib.md5(path.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def repo(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("dvc-project")
    for item in COPIED:
        source, target = PROJECT_ROOT / item, root / item
        if source.is_dir():
            ignore = shutil.ignore_patterns("__pycache__", "*.egg-info", "local")
            shutil.copytree(source, target, ignore=ignore)
        else:
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, target)
    (root / "conf" / "local").mkdir()
    (root / "logs").mkdir()
    (root / ".dvc").mkdir()
    shutil.copy2(PROJECT_ROOT / ".dvc" / "config", root / ".dvc" / "config")
    subprocess.run(["git", "init", "-q"], cwd=root, check=True)
    _dvc(root, "remote", "add", "--force", "--default", "local", str(root.parent / "remote"))
    _dvc(root, "repro")
    return root


def test_repro_runs_every_stage_and_a_second_repro_does_nothing(repo):
    stages = yaml.safe_load((PROJECT_ROOT / "dvc.yaml").read_text())["stages"]
    lock = yaml.safe_load((repo / "dvc.lock").read_text())["stages"]
    assert set(lock) == set(stages) == {
        "data_ingestion", "model_preparation", "training", "evaluation", "inference",
    }  # fmt: skip
    assert (repo / "data/06_models/classifier.keras").is_file()
    assert (repo / "data/07_model_output/predictions.csv").is_file()
    assert "Data and pipelines are up to date" in _dvc(repo, "repro")


def test_a_changed_parameter_reruns_only_its_stage_and_what_follows(repo):
    params = repo / "conf/base/parameters_evaluation.yml"
    original = params.read_text()
    params.write_text(original.replace("batch_size: 64", "batch_size: 32"))
    try:
        status = _dvc(repo, "status")
        assert "evaluation:" in status and "training:" not in status
    finally:
        params.write_text(original)


def test_push_then_pull_restores_the_outputs(repo):
    model = repo / "data/06_models/classifier.keras"
    index = repo / "data/02_intermediate/image_index.csv"
    before = {model: _md5(model), index: _md5(index)}
    _dvc(repo, "push")
    model.unlink()
    shutil.rmtree(repo / "data/02_intermediate/images")
    index.unlink()
    shutil.rmtree(repo / ".dvc" / "cache")
    _dvc(repo, "pull")
    assert {path: _md5(path) for path in before} == before
    assert len(list((repo / "data/02_intermediate/images").rglob("*.png"))) > 50
