"""How Spark's file paths become the relative names batch inference gives (no Spark needed)."""

from __future__ import annotations

import re

import pytest
from kedro.io import DatasetError

from chest_ct_classifier.datasets.spark_binary_files_dataset import (
    SparkBinaryFilesDataset,
    _path_prefix,
)


def _relative(prefix: str, path: str) -> str:
    return re.sub(prefix, "", path)


def test_local_folders_and_single_files_give_relative_names(tmp_path):
    folder = tmp_path / "in [1]"
    (folder / "a").mkdir(parents=True)
    (folder / "a" / "x (2).png").write_bytes(b"x")
    prefix = _path_prefix(str(folder))
    assert _relative(prefix, f"file:{folder}/a/x (2).png") == "a/x (2).png"
    assert _relative(prefix, f"file://{folder}/a/x (2).png") == "a/x (2).png"
    single = _path_prefix(str(folder / "a" / "x (2).png"))
    assert _relative(single, f"file:{folder}/a/x (2).png") == "x (2).png"


def test_remote_paths_are_read_where_they_are():
    prefix = _path_prefix("s3a://bucket/ct slices")
    assert _relative(prefix, "s3a://bucket/ct slices/p1/IM0001") == "p1/IM0001"
    dataset = SparkBinaryFilesDataset("hdfs:///data/ct")
    assert dataset._root() == "hdfs:///data/ct"


def test_a_missing_local_source_is_a_clear_error(tmp_path):
    with pytest.raises(DatasetError, match="not found"):
        SparkBinaryFilesDataset(str(tmp_path / "nowhere"))._root()
