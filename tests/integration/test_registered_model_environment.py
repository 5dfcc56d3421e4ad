"""The registered model serves anywhere: what it was logged with is enough to run it.

The model's ``requirements.txt`` is every distribution its loader and serving code import, with
all they require, each pinned to the version of ``uv.lock`` (registry.model_environment, unit
tests in tests/registry/test_model_environment.py); it carries an input example. After
``kedro run --env test`` in a copy of the project (``trained_project``), the tests predict the
sample's test images with the registered champion in environments built from the model's own
files only, never from this project's: a bare uv virtual environment with ``uv pip install -r
requirements.txt``, and the one MLflow builds itself (``mlflow models predict --env-manager
uv``, what ``mlflow models serve --env-manager uv`` builds too). Both must answer as the
project's environment does. uv installs from its cache where it can and asks PyPI for the rest.
"""

from __future__ import annotations

import base64
import json
import os
import platform
import shutil
import subprocess
import sys
import time
from importlib.metadata import version
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pytest
import yaml

from chest_ct_classifier.images.labels import LABELS, probability_columns
from chest_ct_classifier.pipeline_registry import SERVING_REQUIREMENTS, logged_input_example
from chest_ct_classifier.registry.model_environment import pinned_requirements
from tests.conftest import BIN, run_tool
from tests.integration.conftest import SHARES_THE_TRAINED_PROJECT
from tests.registry.test_model_environment import _lock_versions, _pins

CHAMPION = "models:/chest-ct-classifier@champion"
UV = shutil.which("uv", path=f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}")
pytestmark = SHARES_THE_TRAINED_PROJECT

needs_uv = pytest.mark.skipif(UV is None, reason="uv is not installed (`make setup` installs it)")


# Run by this project's interpreter and by each fresh environment's.
_PREDICT = """
import importlib.util, json, sys
installed = importlib.util.find_spec("chest_ct_classifier") is not None
import mlflow, pandas as pd
mlflow.set_tracking_uri(sys.argv[4])
model = mlflow.pyfunc.load_model(sys.argv[1])
model.predict(pd.read_json(sys.argv[2], orient="split")).to_csv(sys.argv[3], index=False)
example = model.predict(model.input_example)
import chest_ct_classifier
print(json.dumps({"installed": installed, "package": chest_ct_classifier.__file__,
                  "example_statuses": list(example["status"])}))
"""


@pytest.fixture(scope="module")
def tracking_uri(trained_project) -> str:
    uri = f"sqlite:///{trained_project / 'mlflow.db'}"
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    return uri


@pytest.fixture(scope="module")
def model_dir(tracking_uri, tmp_path_factory) -> Path:
    """The champion's files, as the registry hands them out."""
    destination = tmp_path_factory.mktemp("champion")
    return Path(mlflow.artifacts.download_artifacts(CHAMPION, dst_path=str(destination)))


@pytest.fixture(scope="module")
def request_file(sample_images, tmp_path_factory) -> Path:
    """The sample's test images as one request (base64, pandas ``split`` JSON)."""
    paths = [p for p in sample_images if p.startswith("Data/test/")]
    request = pd.DataFrame(
        {"image": [base64.b64encode(sample_images[p]).decode("ascii") for p in paths]}
    )
    path = tmp_path_factory.mktemp("request") / "request.json"
    request.to_json(path, orient="split", index=False)
    return path


@pytest.fixture(scope="module")
def project_answers(tracking_uri, request_file, tmp_path_factory) -> pd.DataFrame:
    """The champion's answers in this project's environment."""
    folder = tmp_path_factory.mktemp("project_answers")
    run_tool(folder, "python", "-c", _PREDICT, CHAMPION, str(request_file), "answers.csv",
             tracking_uri)  # fmt: skip
    return pd.read_csv(folder / "answers.csv")


def _outside_env(**variables: str) -> dict[str, str]:
    """This process's environment without what points at this project's interpreter."""
    drop = ("VIRTUAL_ENV", "PYTHONPATH", "PYTHONHOME", "CONDA_PREFIX", "UV_PROJECT_ENVIRONMENT")
    env = {k: v for k, v in os.environ.items() if k not in drop and not k.startswith("MLFLOW_")}
    path = [p for p in env.get("PATH", "").split(os.pathsep) if p and Path(p) != BIN]
    return {**env, "PATH": os.pathsep.join(path), **variables}


def _run(command: list[str], cwd: Path, env: dict[str, str]) -> subprocess.CompletedProcess:
    result = subprocess.run(
        command, cwd=cwd, env=env, capture_output=True, text=True, timeout=900, check=False
    )
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]
    return result


@pytest.fixture(scope="module")
def fresh_python(model_dir, tmp_path_factory) -> Path:
    """A uv virtual environment with the model's Python and its ``requirements.txt``, and
    nothing else (not this project)."""
    python_env = yaml.safe_load((model_dir / "python_env.yaml").read_text())
    # logged by this interpreter: the same Python version, found without a download
    assert python_env["python"] == platform.python_version()
    folder = tmp_path_factory.mktemp("fresh")
    env = _outside_env()
    started = time.perf_counter()
    _run([UV, "venv", "--python", sys._base_executable, str(folder / "venv")], folder, env)
    python = folder / "venv" / "bin" / "python"
    requirements = str(model_dir / "requirements.txt")
    _run([UV, "pip", "install", "--python", str(python), "-r", requirements], folder, env)
    print(f"fresh environment built in {time.perf_counter() - started:.1f} s")
    return python


def _same_answers(answers: pd.DataFrame, expected: pd.DataFrame) -> None:
    assert list(answers["image"]) == list(range(len(answers))) == list(expected["image"])
    assert answers["error"].isna().all()
    assert set(answers["label"].dropna()) <= set(LABELS)
    assert list(answers["status"]) == list(expected["status"])
    assert list(answers["label"].fillna("")) == list(expected["label"].fillna(""))
    np.testing.assert_allclose(answers["ood_score"], expected["ood_score"], rtol=1e-5)
    # the same weights, preprocessing and precision path on the same CPU
    np.testing.assert_allclose(
        answers[probability_columns()].to_numpy(dtype=float),
        expected[probability_columns()].to_numpy(dtype=float),
        atol=1e-5,
    )


@pytest.mark.slow
def test_the_registered_requirements_are_complete_pins_from_the_lock(model_dir):
    lines = [
        line.strip()
        for line in (model_dir / "requirements.txt").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    assert lines == pinned_requirements(SERVING_REQUIREMENTS)
    pins = _pins(lines)
    lock = _lock_versions()
    assert {name: v for name, v in pins.items() if v not in lock.get(name, set())} == {}
    # the loader's imports that kedro-mlflow does not require, with the served datasets' extras
    assert f"kedro-datasets[json-jsondataset]=={version('kedro-datasets')}" in lines
    assert {"mlflow", "kedro-mlflow", "kedro", "tensorflow", "keras", "h5py", "pillow"} <= set(pins)
    # the input example travels with the model, in the request format of the served model
    example = mlflow.models.Model.load(str(model_dir)).load_input_example(str(model_dir))
    pd.testing.assert_frame_equal(example, logged_input_example())
    assert (model_dir / "serving_input_example.json").is_file()


@pytest.mark.slow
@needs_uv
def test_an_environment_of_the_model_requirements_alone_predicts_as_the_project(
    fresh_python, tracking_uri, request_file, project_answers, model_dir, tmp_path
):
    # exactly the pins: nothing unpinned came with them, nothing is missing
    frozen = _run([UV, "pip", "freeze", "--python", str(fresh_python)], tmp_path, _outside_env())
    installed = _pins(frozen.stdout.split())
    pinned = _pins((model_dir / "requirements.txt").read_text().split())
    assert installed == pinned

    script = tmp_path / "predict.py"
    script.write_text(_PREDICT)
    command = [str(fresh_python), str(script), CHAMPION, str(request_file), "answers.csv",
               tracking_uri]  # fmt: skip
    result = _run(command, tmp_path, _outside_env())
    report = json.loads(result.stdout.strip().splitlines()[-1])
    # the project is not installed there: the package came with the model (code_paths)
    assert not report["installed"] and "/code/chest_ct_classifier/" in report["package"]
    # the logged example, a bright disc on black, is no chest CT slice: refused, not labelled
    assert report["example_statuses"] == ["out_of_distribution"]
    _same_answers(pd.read_csv(tmp_path / "answers.csv"), project_answers)


@pytest.mark.slow
@needs_uv
def test_mlflow_builds_the_model_environment_with_uv_and_predicts_as_the_project(
    tracking_uri, request_file, project_answers, tmp_path
):
    split = json.loads(request_file.read_text())
    (tmp_path / "request.json").write_text(json.dumps({"dataframe_split": split}))
    # uv on PATH for MLflow; the environment it builds comes from the model's files
    env = _outside_env(MLFLOW_TRACKING_URI=tracking_uri)
    env["PATH"] = f"{Path(UV).parent}{os.pathsep}{env['PATH']}"
    env["MLFLOW_ENV_ROOT"] = str(tmp_path / "envs")
    command = [str(BIN / "mlflow"), "models", "predict", "--model-uri", CHAMPION,
               "--input-path", "request.json", "--content-type", "json",
               "--output-path", "answers.json", "--env-manager", "uv"]  # fmt: skip
    _run(command, tmp_path, env)
    answers = pd.DataFrame(json.loads((tmp_path / "answers.json").read_text())["predictions"])
    answers["image"] = answers["image"].astype(int)
    _same_answers(answers, project_answers)
