"""Shared fixtures: the bundled sample of real images, and a tiny real model built from it."""

from __future__ import annotations

import functools
import os
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest

for _variable, _value in (
    ("KEDRO_DISABLE_TELEMETRY", "1"),
    ("DO_NOT_TRACK", "1"),
    ("MLFLOW_DISABLE_TELEMETRY", "true"),
    ("TF_CPP_MIN_LOG_LEVEL", "2"),
):
    os.environ.setdefault(_variable, _value)

PROJECT_ROOT = Path(__file__).resolve().parents[1]
SAMPLE_ROOT = PROJECT_ROOT / "data" / "01_raw" / "sample"
FULL_ARCHIVE = PROJECT_ROOT.parent / "shared" / "data" / "chest-ct-scan.zip"


BIN = Path(sys.executable).parent  # the environment's console scripts: kedro, dvc, jupyter


def run_tool(cwd: Path, tool: str, *args: str, **env: str) -> subprocess.CompletedProcess:
    """Run one of the environment's command-line tools as a user would; fail with its output.

    Local MLflow tracking (MLFLOW_TRACKING_URI and MLFLOW_REGISTRY_URI are dropped); telemetry
    off; the environment's bin folder first on PATH (DVC stages call ``kedro``).
    """
    full_env = {
        **os.environ,
        "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}",
        "KEDRO_DISABLE_TELEMETRY": "1",
        "DO_NOT_TRACK": "1",
        **env,
    }
    # mlflow.set_tracking_uri/set_registry_uri in this process also export these variables
    for variable in ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI"):
        full_env.pop(variable, None)
    result = subprocess.run(
        [str(BIN / tool), *args],
        check=False,
        cwd=cwd,
        env=full_env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]
    return result


def _merged(base: Any, overrides: Any) -> Any:
    if isinstance(base, Mapping) and isinstance(overrides, Mapping):
        return {**base, **{k: _merged(base.get(k), v) for k, v in overrides.items()}}
    return overrides


@functools.cache
def _base_parameters() -> dict[str, Any]:
    from kedro.config import OmegaConfigLoader

    loader = OmegaConfigLoader(str(PROJECT_ROOT / "conf"), base_env="base", default_run_env="base")
    return dict(loader["parameters"])


def settings(key: str, overrides: Mapping[str, Any] | None = None) -> Any:
    """The typed settings a node receives as ``params:<key>`` (e.g. ``training``): conf/base's
    values with ``overrides`` merged in key by key, validated as a run validates them (a bad
    value raises ParameterError)."""
    from chest_ct_classifier.config.parameters import validate_parameters

    *parents, last = key.split(".")
    nested: dict[str, Any] = {last: overrides or {}}
    for parent in reversed(parents):
        nested = {parent: nested}
    typed: Any = validate_parameters(_merged(_base_parameters(), nested))
    for part in key.split("."):
        typed = getattr(typed, part)
    return typed


@pytest.fixture(scope="session")
def sample_root() -> Path:
    return SAMPLE_ROOT


@pytest.fixture(scope="session")
def sample_images() -> dict[str, bytes]:
    """Every bundled sample image, by path relative to the sample root."""
    return {
        p.relative_to(SAMPLE_ROOT).as_posix(): p.read_bytes()
        for p in sorted(SAMPLE_ROOT.rglob("*"))
        if p.suffix.lower() in {".png", ".jpg"}
    }


def bf16_without_a_kernel(monkeypatch: pytest.MonkeyPatch, module: Any, message: str) -> None:
    """``module.forward_for`` as it is, except that the bf16 forward pass raises ``message`` when
    called, as oneDNN does where it has no bfloat16 kernel (``ONEDNN_MAX_CPU_ISA=AVX2`` on a CPU
    that advertises bfloat16)."""

    def no_kernel(batch: Any) -> Any:
        raise RuntimeError(message)

    built = module.forward_for
    monkeypatch.setattr(
        module,
        "forward_for",
        lambda model, precision, *args: (
            no_kernel if precision == "bf16" else built(model, precision, *args)
        ),
    )


@pytest.fixture(scope="session")
def tiny_model():
    """A real VGG16 classifier (HED weights) at 32 px: fast enough for unit tests."""
    from chest_ct_classifier.model.architecture import build_classifier
    from chest_ct_classifier.model.pretrained_weights import load_hed_conv_weights

    return build_classifier(32, load_hed_conv_weights(), dense_units=16, seed=0)


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Under ``--dist loadgroup`` (make test) each test file runs whole on one worker, as with
    ``loadfile`` (its module fixtures, a served app, are made once), except files marked with
    one ``xdist_group``: those run together on one worker, so that the trained project they
    share (tests/integration/conftest.py) is trained once, not once per worker."""
    for item in items:
        if not any(item.iter_markers("xdist_group")):
            item.add_marker(pytest.mark.xdist_group(item.nodeid.split("::")[0]))

    # The slow files first (make test passes --no-loadscope-reorder, which keeps this order):
    # the workers start on the longest groups and fill in with the quick ones at the end,
    # instead of one worker finishing a long group alone.
    def group(item: pytest.Item) -> str:  # pytest-xdist's own rule (xdist/remote.py)
        names = {
            str(mark.args[0] if mark.args else mark.kwargs.get("name", "default"))
            for mark in item.iter_markers("xdist_group")
        }
        return "_".join(sorted(names))

    slow = {group(item) for item in items if any(item.iter_markers("slow"))}
    items.sort(key=lambda item: group(item) not in slow)
