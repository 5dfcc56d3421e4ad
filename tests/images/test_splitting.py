import numpy as np
import pandas as pd
import pytest

from chest_ct_classifier.images.splitting import grouped_split

RATIOS = {"train": 0.7, "valid": 0.15, "test": 0.15}


def _data(n_groups=200, seed=0):
    rng = np.random.default_rng(seed)
    sizes = rng.integers(1, 5, size=n_groups)
    groups = np.repeat(np.arange(n_groups), sizes)
    labels = np.repeat(rng.choice(["a", "b", "c"], size=n_groups), sizes)
    return pd.Series(groups), pd.Series(labels)


def test_every_group_lands_whole_in_one_split():
    groups, labels = _data()
    splits = grouped_split(groups, labels, RATIOS, seed=1)
    assert pd.DataFrame({"g": groups, "s": splits}).groupby("g")["s"].nunique().max() == 1


def test_each_class_follows_the_ratios():
    groups, labels = _data()
    splits = grouped_split(groups, labels, RATIOS, seed=1)
    for label in "abc":
        shares = splits[labels == label].value_counts(normalize=True)
        for name, ratio in RATIOS.items():
            assert shares[name] == pytest.approx(ratio, abs=0.05)


def test_seeded_and_seed_sensitive():
    groups, labels = _data()
    first = grouped_split(groups, labels, RATIOS, seed=1)
    assert first.equals(grouped_split(groups, labels, RATIOS, seed=1))
    assert not first.equals(grouped_split(groups, labels, RATIOS, seed=2))


def test_bad_ratios_are_refused():
    groups, labels = _data(5)
    with pytest.raises(ValueError, match="ratios"):
        grouped_split(groups, labels, {"train": 0, "valid": 0}, seed=0)
