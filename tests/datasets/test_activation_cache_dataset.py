"""The activation cache round-trips through an .npz without pickle, and refuses what is not one."""

from __future__ import annotations

import numpy as np
import pytest
from kedro.io import DatasetError

from chest_ct_classifier.datasets.activation_cache_dataset import ActivationCacheDataset
from chest_ct_classifier.model.activation_cache import ActivationCache


def _cache(n_views: int = 2) -> ActivationCache:
    rng = np.random.default_rng(0)
    return ActivationCache(
        path=np.array(["Data/train/a/1.png", "Data/train/a/copy of 1.png", "Data/test/b/2.png"]),
        split=np.array(["train", "train", "test"]),
        label=np.array([0, 0, 3], np.int64),
        sha256=np.array(["a" * 64, "a" * 64, "b" * 64]),
        group=np.array([0, 0, 1], np.int64),
        copy_in_train=np.array([True, True, False]),
        label_conflict=np.array([False, False, False]),
        content=np.array([0, 0, 1], np.int64),
        activations=rng.normal(size=(2, 2, 2, 8)).astype(np.float32),
        features=rng.normal(size=(2, 24)).astype(np.float32),
        view_content=np.array([0], np.int64),
        view_activations=rng.normal(size=(1, n_views, 2, 2, 8)).astype(np.float16),
        view_features=rng.normal(size=(1, n_views, 24)).astype(np.float16),
        features_fingerprint=np.asarray("0123456789abcdef"),
    )


def test_a_saved_cache_loads_back_field_for_field(tmp_path):
    dataset = ActivationCacheDataset(str(tmp_path / "04_feature" / "activations.npz"))
    cache = _cache()
    dataset.save(cache)
    loaded = dataset.load()
    for name, array in cache.arrays().items():
        np.testing.assert_array_equal(getattr(loaded, name), array)
        assert getattr(loaded, name).dtype == array.dtype, name
    assert loaded.n_views == 2
    assert [p.name for p in (tmp_path / "04_feature").iterdir()] == ["activations.npz"]


def test_a_cache_without_views_round_trips(tmp_path):
    dataset = ActivationCacheDataset(str(tmp_path / "activations.npz"))
    dataset.save(_cache(n_views=0))
    assert dataset.load().n_views == 0


def test_a_file_that_needs_pickle_is_refused_not_run(tmp_path):
    path = tmp_path / "activations.npz"
    arrays = _cache().arrays() | {"path": np.array([object(), object(), object()], dtype=object)}
    np.savez(path, **arrays)
    with pytest.raises(DatasetError, match="allow_pickle=False"):
        ActivationCacheDataset(str(path)).load()


def test_a_file_that_is_not_a_cache_is_an_error(tmp_path):
    path = tmp_path / "activations.npz"
    np.savez(path, activations=np.zeros(3))
    with pytest.raises(DatasetError, match="not an activation cache: missing"):
        ActivationCacheDataset(str(path)).load()


def test_inconsistent_arrays_are_refused():
    with pytest.raises(ValueError, match="row arrays differ in length"):
        _cache().with_rows(split=np.array(["train"]))
    with pytest.raises(ValueError, match="points to a content it does not hold"):
        _cache().with_rows(content=np.array([0, 0, 5]))


def test_a_failed_save_leaves_the_previous_cache_and_no_partial_file(tmp_path, monkeypatch):
    dataset = ActivationCacheDataset(str(tmp_path / "activations.npz"))
    dataset.save(_cache())

    def broken_savez(file, **arrays):
        file.write(b"PK half a file")
        raise OSError("disk full")

    monkeypatch.setattr(np, "savez", broken_savez)
    with pytest.raises(DatasetError, match="disk full"):
        dataset.save(_cache(n_views=1))
    assert dataset.load().n_views == 2
    assert [p.name for p in tmp_path.iterdir()] == ["activations.npz"]
