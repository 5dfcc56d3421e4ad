"""The Python environment a registered model declares: its ``requirements.txt``.

MLflow builds a fresh environment for a model from what it was logged with (``mlflow models
serve --env-manager uv``, a serving image, another machine). A short hand list of top-level
packages leaves out what they do not depend on themselves (kedro-mlflow's loader imports
kedro-datasets, which kedro-mlflow does not require) and leaves every other version to the
resolver of the day. :func:`pinned_requirements` instead takes the packages the served code
imports and adds everything they require, recursively, as installed here, each pinned to its
installed version: in an environment installed from ``uv.lock``, the lock's versions.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from importlib.metadata import PackageNotFoundError, distribution

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

logger = logging.getLogger(__name__)


def pinned_requirements(roots: Iterable[str]) -> list[str]:
    """``roots`` (requirement strings, extras allowed) and their dependencies, recursively,
    each as ``name[extras]==installed version``, sorted by name.

    Dependencies are those the installed distributions declare for this interpreter and
    platform (environment markers evaluated here) and for the extras asked for. A required
    distribution that is not installed (an environment not synced from the lock) is kept
    with its own version range, and a warning says so.
    """
    extras: dict[str, set[str]] = {}  # canonical name -> extras asked for
    unpinned: dict[str, Requirement] = {}
    versions: dict[str, tuple[str, str]] = {}  # canonical name -> (name, version)
    pending = [Requirement(root) for root in roots]
    while pending:
        requirement = pending.pop()
        key = canonicalize_name(requirement.name)
        if key in extras and set(requirement.extras) <= extras[key]:
            continue
        extras[key] = extras.get(key, set()) | set(requirement.extras)
        try:
            installed = distribution(requirement.name)
        except PackageNotFoundError:
            unpinned[key] = requirement
            continue
        versions[key] = (installed.metadata["Name"], installed.version)
        for text in installed.requires or []:
            dependency = Requirement(text)
            if dependency.marker is None or any(
                dependency.marker.evaluate({"extra": extra}) for extra in {"", *extras[key]}
            ):
                dependency.marker = None
                pending.append(dependency)
    for requirement in unpinned.values():
        logger.warning(
            "%s is required by the served model but not installed: its requirement stays "
            "unpinned (%s). Install the environment from uv.lock (`make setup`).",
            requirement.name,
            requirement,
        )
    lines = {
        key: f"{name}{_extras(extras[key])}=={version}" for key, (name, version) in versions.items()
    }
    lines |= {key: str(requirement) for key, requirement in unpinned.items()}
    return [lines[key] for key in sorted(lines)]


def _extras(names: set[str]) -> str:
    return f"[{','.join(sorted(names))}]" if names else ""
