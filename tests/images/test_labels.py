import pytest

from chest_ct_classifier.images.labels import (
    DISPLAY_NAMES,
    LABELS,
    label_from_folder,
    probability_columns,
    split_from_folder,
)


@pytest.mark.parametrize(
    ("folder", "label"),
    [
        ("adenocarcinoma_left.lower.lobe_T2_N0_M0_Ib", "adenocarcinoma"),
        ("large.cell.carcinoma_left.hilum_T2_N2_M0_IIIa", "large_cell_carcinoma"),
        ("squamous.cell.carcinoma_left.hilum_T1_N2_M0_IIIa", "squamous_cell_carcinoma"),
        ("normal", "normal"),
        ("adenocarcinoma", "adenocarcinoma"),
        ("large.cell.carcinoma", "large_cell_carcinoma"),
        ("squamous.cell.carcinoma", "squamous_cell_carcinoma"),
        ("large_cell_carcinoma", "large_cell_carcinoma"),
        ("Large Cell Carcinoma", "large_cell_carcinoma"),
        ("NORMAL", "normal"),
    ],
)
def test_both_archive_naming_styles_map_to_canonical_labels(folder, label):
    assert label_from_folder(folder) == label


@pytest.mark.parametrize("folder", ["normalized", "carcinoma", "adeno", "Data", ""])
def test_unknown_folders_have_no_label(folder):
    assert label_from_folder(folder) is None


def test_splits_and_aliases():
    assert [split_from_folder(f) for f in ("train", "Valid", "val", "TEST", "other")] == [
        "train",
        "valid",
        "valid",
        "test",
        None,
    ]


def test_label_order_and_names_are_consistent():
    assert LABELS == ("adenocarcinoma", "large_cell_carcinoma", "normal", "squamous_cell_carcinoma")
    assert set(DISPLAY_NAMES) == set(LABELS)
    assert probability_columns() == [f"p_{label}" for label in LABELS]
