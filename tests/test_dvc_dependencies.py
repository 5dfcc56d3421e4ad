"""dvc.yaml's code dependencies cannot drift from the code: each stage's project modules are
derived from the import graph (grimp, import-linter's engine, reads every import statically,
those inside functions too), and every one of them must lie under one of the stage's
dependencies."""

from __future__ import annotations

import functools
from pathlib import Path

import grimp
import pytest
import yaml
from kedro.framework.project import configure_project

from chest_ct_classifier.pipeline_registry import register_pipelines
from tests.conftest import PROJECT_ROOT

PACKAGE = "chest_ct_classifier"
CATALOG = PROJECT_ROOT / "conf" / "base" / "catalog.yml"

# Modules a stage runs beyond its own pipeline: `kedro run --pipelines evaluation` registers the
# served model (pipeline_registry wraps evaluation with inference) and the champion gate hook
# moves the alias; no other stage's outputs depend on them.
ENTRY_MODULES = {"evaluation": [f"{PACKAGE}.pipeline_registry", f"{PACKAGE}.hooks"]}


def stages() -> dict[str, dict]:
    return yaml.safe_load((PROJECT_ROOT / "dvc.yaml").read_text())["stages"]


@functools.cache
def pipeline_datasets() -> dict[str, list[str]]:
    """Each pipeline's dataset names (its nodes' inputs and outputs)."""
    configure_project(PACKAGE)  # find_pipelines needs the package's name
    return {name: sorted(p.datasets()) for name, p in register_pipelines().items()}


def catalog_dataset_modules(stage: str) -> set[str]:
    """The project's modules that the catalog entries of ``stage``'s datasets name as their
    types (nested ones too)."""
    found: set[str] = set()

    def visit(entry: object) -> None:
        if isinstance(entry, dict):
            for key, value in entry.items():
                if key == "type" and isinstance(value, str) and value.startswith(PACKAGE):
                    found.add(value.rpartition(".")[0])
                visit(value)

    catalog = yaml.safe_load(CATALOG.read_text())
    for name in pipeline_datasets()[stage]:
        visit(catalog.get(name))
    return found


def module_file(graph: grimp.ImportGraph, module: str) -> Path:
    relative = Path("src", *module.split("."))
    if (PROJECT_ROOT / relative).is_dir():
        return relative / "__init__.py"
    return relative.with_suffix(".py")


def project_files_of(stage: str) -> set[Path]:
    """The package's source files that running ``stage``'s pipeline may execute."""
    graph = grimp.build_graph(PACKAGE)
    roots = {
        module
        for module in graph.modules
        if module.startswith(f"{PACKAGE}.pipelines.{stage}.")
        or module in ENTRY_MODULES.get(stage, [])
        or module in catalog_dataset_modules(stage)
    }
    modules = set(roots)
    for root in roots:
        modules |= graph.find_upstream_modules(root)
    return {module_file(graph, module) for module in modules}


def missing_dependencies(dependencies: list[str], files: set[Path]) -> list[str]:
    """The files that no dependency (the file itself or a folder above it) covers. Package
    markers (``__init__.py``, docstrings only) are left out."""
    covered = [Path(dependency) for dependency in dependencies]
    return sorted(
        str(file)
        for file in files
        if file.name != "__init__.py" and not any(file == d or d in file.parents for d in covered)
    )


@pytest.mark.parametrize("stage", sorted(stages()))
def test_every_stage_depends_on_the_modules_its_pipeline_imports(stage):
    files = project_files_of(stage)
    assert Path(f"src/{PACKAGE}/pipelines/{stage}/nodes.py") in files
    assert all((PROJECT_ROOT / file).is_file() for file in files)
    missing = missing_dependencies(stages()[stage]["deps"], files)
    assert not missing, f"dvc.yaml stage {stage!r} misses these code dependencies: {missing}"


def test_a_stage_that_misses_a_module_is_caught():
    dependencies = [dep for dep in stages()["training"]["deps"] if dep != f"src/{PACKAGE}/scoring"]
    missing = missing_dependencies(dependencies, project_files_of("training"))
    assert missing == [f"src/{PACKAGE}/scoring/metrics.py"]
