import json
import os
from pathlib import Path

import pytest
import yaml

from chest_ct_classifier.registry import release
from chest_ct_classifier.registry.release import (
    JOURNAL_NAME,
    RELEASE_NAME,
    ReleaseFolder,
    complete_interrupted_promotion,
    promote,
    served_path,
)
from tests.conftest import PROJECT_ROOT


def _folders(root: Path) -> list[ReleaseFolder]:
    return [
        ReleaseFolder(root / "models/candidate", root / "models", ("model.keras", "ood.npz")),
        ReleaseFolder(root / "reports/candidate", root / "reports", ("metrics.json",)),
    ]


def _candidate(folders: list[ReleaseFolder], tag: str) -> None:
    for folder in folders:
        folder.candidate.mkdir(parents=True, exist_ok=True)
        for name in folder.files:
            (folder.candidate / name).write_text(f"{tag} {name}")


def _served(folders: list[ReleaseFolder], where: str = "") -> dict[str, str]:
    return {
        name: ((folder.served / where / name).read_text())
        for folder in folders
        for name in folder.files
    }


def test_a_promotion_serves_every_file_and_keeps_the_replaced_ones(tmp_path):
    folders = _folders(tmp_path)
    _candidate(folders, "first")
    promote(folders, {"run": 1})
    _candidate(folders, "second")
    promote(folders, {"run": 2})
    assert set(_served(folders).values()) == {"second model.keras", "second ood.npz",
                                              "second metrics.json"}  # fmt: skip
    assert set(_served(folders, "previous").values()) == {"first model.keras", "first ood.npz",
                                                          "first metrics.json"}  # fmt: skip
    assert json.loads((tmp_path / "models" / RELEASE_NAME).read_text()) == {"run": 2}
    assert _served(folders) != {}  # the candidates stay (MLflow logs them after the run)
    assert (
        not list(tmp_path.rglob("*.incoming")) and not (tmp_path / "models" / JOURNAL_NAME).exists()
    )


def test_a_missing_candidate_file_changes_nothing(tmp_path):
    folders = _folders(tmp_path)
    _candidate(folders, "first")
    promote(folders, {})
    _candidate(folders, "second")
    (folders[1].candidate / "metrics.json").unlink()  # evaluation did not finish
    with pytest.raises(FileNotFoundError, match=r"metrics\.json"):
        promote(folders, {})
    assert set(_served(folders).values()) == {"first model.keras", "first ood.npz",
                                              "first metrics.json"}  # fmt: skip


def test_a_promotion_killed_among_its_moves_is_finished_before_anything_is_read(
    tmp_path, monkeypatch
):
    folders = _folders(tmp_path)
    _candidate(folders, "first")
    promote(folders, {})
    _candidate(folders, "second")
    real_replace, calls = os.replace, []

    def dying_replace(source, target):  # the process dies after the journal and two moves
        calls.append(target)
        if len(calls) > 3:
            raise KeyboardInterrupt
        real_replace(source, target)

    monkeypatch.setattr(release.os, "replace", dying_replace)
    with pytest.raises(KeyboardInterrupt):
        promote(folders, {})
    monkeypatch.setattr(release.os, "replace", real_replace)
    assert (tmp_path / "models" / JOURNAL_NAME).exists()
    assert len(set(_served(folders).values()) & {"first model.keras", "first ood.npz",
                                                 "first metrics.json"}) > 0  # fmt: skip
    assert complete_interrupted_promotion(folders)  # what the app and the next run call first
    assert set(_served(folders).values()) == {"second model.keras", "second ood.npz",
                                              "second metrics.json"}  # fmt: skip
    assert set(_served(folders, "previous").values()) == {"first model.keras", "first ood.npz",
                                                          "first metrics.json"}  # fmt: skip
    assert not (tmp_path / "models" / JOURNAL_NAME).exists()


def test_copies_left_by_a_process_killed_before_its_journal_are_removed(tmp_path):
    folders = _folders(tmp_path)
    _candidate(folders, "first")
    promote(folders, {})
    (tmp_path / "models" / ".model.keras.abc.incoming").write_text("half a copy")
    assert not complete_interrupted_promotion(folders)
    assert not list(tmp_path.rglob("*.incoming"))
    assert _served(folders)["model.keras"] == "first model.keras"


def test_a_candidate_file_maps_to_where_it_is_served(tmp_path):
    folders = _folders(tmp_path)
    assert served_path(tmp_path / "reports/candidate/metrics.json", folders) == (
        tmp_path / "reports/metrics.json"
    )
    other = tmp_path / "reports/candidate/notes.txt"
    assert served_path(other, folders) == other


def test_dvc_keeps_the_served_release_while_stages_run_and_caches_it():
    """`dvc repro` removes a stage's outputs before running it unless they persist: the served
    files persist (a killed repro leaves them), and are cached (dvc checkout restores them)."""
    catalog = yaml.safe_load((PROJECT_ROOT / "conf/base/catalog.yml").read_text())
    folders = [ReleaseFolder.from_config(f) for f in catalog["model_release"]["folders"]]
    stages = yaml.safe_load((PROJECT_ROOT / "dvc.yaml").read_text())["stages"]
    outs = {}
    for name, stage in stages.items():
        for kind in ("outs", "metrics", "plots"):
            for out in stage.get(kind, []):
                path, options = (out, {}) if isinstance(out, str) else next(iter(out.items()))
                outs[path] = (name, options)
    for folder in folders:
        for file in folder.files:
            stage, options = outs[(folder.served / file).as_posix()]
            assert stage == "evaluation" and options.get("persist") is True, file
            assert options.get("cache", True) is True, file
            candidate = (folder.candidate / file).as_posix()
            assert candidate in outs or folder.candidate.as_posix() in outs, candidate
