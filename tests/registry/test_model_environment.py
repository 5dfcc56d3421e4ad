"""Which requirements a registered model is logged with: the packages the served code imports
and all they require, each pinned to the installed (locked) version."""

from __future__ import annotations

import logging
import tomllib
from importlib.metadata import requires, version

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from chest_ct_classifier.pipeline_registry import SERVING_REQUIREMENTS
from chest_ct_classifier.registry.model_environment import pinned_requirements
from tests.conftest import PROJECT_ROOT


def _lock_versions() -> dict[str, set[str]]:
    """Versions of each package in uv.lock, by canonical name."""
    lock = tomllib.loads((PROJECT_ROOT / "uv.lock").read_text())
    versions: dict[str, set[str]] = {}
    for package in lock["package"]:
        versions.setdefault(canonicalize_name(package["name"]), set()).add(package.get("version"))
    return versions


def _pins(lines: list[str]) -> dict[str, str]:
    """``name==version`` requirement lines as {canonical name: version}; fails on anything
    that is not one exact pin."""
    pins = {}
    for line in lines:
        requirement = Requirement(line)
        (specifier,) = requirement.specifier
        assert specifier.operator == "==" and requirement.marker is None, line
        pins[canonicalize_name(requirement.name)] = specifier.version
    return pins


# --- the registered model in environments made from its own files (slow) ---------------------


def test_requirements_follow_dependencies_and_asked_extras_pinned_as_installed():
    pins = _pins(pinned_requirements(["kedro-mlflow"]))
    # kedro-mlflow's own requirements, and theirs, as installed
    assert {"kedro", "mlflow", "mlflow-skinny", "pydantic", "fsspec"} <= set(pins)
    assert pins["kedro-mlflow"] == version("kedro-mlflow")
    assert pins["mlflow"] == version("mlflow")
    # kedro-mlflow's loader imports kedro-datasets, which it does not require: a root must say so
    assert "kedro-datasets" not in pins
    with_extra = pinned_requirements(["kedro-datasets[matplotlib-matplotlibdataset]"])
    datasets = version("kedro-datasets")
    assert f"kedro-datasets[matplotlib-matplotlibdataset]=={datasets}" in with_extra
    assert _pins(with_extra)["matplotlib"] == version("matplotlib")
    assert "matplotlib" not in _pins(pinned_requirements(["kedro-datasets"]))


def test_a_requirement_that_is_not_installed_stays_unpinned_and_is_reported(caplog):
    with caplog.at_level(logging.WARNING):
        assert pinned_requirements(["no-such-distribution-here>=1.0"]) == [
            "no-such-distribution-here>=1.0"
        ]
    assert "no-such-distribution-here" in caplog.text


def test_serving_requirements_are_closed_and_pinned_from_the_lock():
    lines = pinned_requirements(SERVING_REQUIREMENTS)
    pins = _pins(lines)
    lock = _lock_versions()
    assert {name: v for name, v in pins.items() if v not in lock.get(name, set())} == {}
    # closed: what each pinned distribution requires here (for the extras asked) is pinned too
    for requirement in map(Requirement, lines):
        for dependency in map(Requirement, requires(requirement.name) or []):
            marker = dependency.marker
            if marker is None or any(
                marker.evaluate({"extra": extra}) for extra in {"", *requirement.extras}
            ):
                assert canonicalize_name(dependency.name) in pins, (requirement, dependency)
