import numpy as np
import pytest
from kedro.io import DatasetError

from chest_ct_classifier.datasets.keras_model_dataset import KerasModelDataset


def test_round_trip_keeps_weights_and_frozen_layers(tiny_model, tmp_path):
    dataset = KerasModelDataset(str(tmp_path / "models" / "m.keras"))
    assert not dataset.exists()
    dataset.save(tiny_model)
    loaded = dataset.load()
    x = np.ones((1, 32, 32, 3), dtype=np.float32)
    np.testing.assert_allclose(loaded(x), tiny_model(x), atol=1e-6)
    assert len(loaded.trainable_weights) == len(tiny_model.trainable_weights)
    assert [p.name for p in (tmp_path / "models").iterdir()] == ["m.keras"]


def test_missing_model_says_how_to_get_one(tmp_path):
    with pytest.raises(DatasetError, match="kedro run"):
        KerasModelDataset(str(tmp_path / "none.keras")).load()


def test_a_shared_model_is_not_copied_by_deepcopy_and_still_saves(tiny_model, tmp_path):
    import copy

    path = tmp_path / "m.keras"
    KerasModelDataset(str(path)).save(tiny_model)
    plain = KerasModelDataset(str(path)).load()
    shared = KerasModelDataset(str(path), shared_on_deepcopy=True).load()
    assert copy.deepcopy({"model": shared})["model"] is shared
    assert copy.deepcopy(plain) is not plain
    assert isinstance(shared, type(plain))
    again = tmp_path / "again.keras"
    KerasModelDataset(str(again)).save(shared)
    x = np.ones((1, 32, 32, 3), dtype=np.float32)
    np.testing.assert_allclose(KerasModelDataset(str(again)).load()(x), tiny_model(x), atol=1e-6)


def test_a_shared_model_pickles_as_a_plain_model(tiny_model, tmp_path):
    import pickle

    path = tmp_path / "m.keras"
    KerasModelDataset(str(path)).save(tiny_model)
    shared = KerasModelDataset(str(path), shared_on_deepcopy=True).load()
    restored = pickle.loads(pickle.dumps(shared))
    x = np.ones((1, 32, 32, 3), dtype=np.float32)
    np.testing.assert_allclose(restored(x), tiny_model(x), atol=1e-6)
