"""The data-quality facts of the real archive (../shared/data/chest-ct-scan.zip).

Skipped, saying so, when the archive is absent (a user's clone has no ../shared).
"""

from __future__ import annotations

import pytest

from chest_ct_classifier.datasets.image_source_dataset import ImageSourceDataset
from chest_ct_classifier.pipelines.data_ingestion.nodes import assess_data_quality, index_images
from tests.conftest import FULL_ARCHIVE, settings

pytestmark = [
    pytest.mark.full_data,
    pytest.mark.slow,
    pytest.mark.skipif(
        not FULL_ARCHIVE.is_file(), reason=f"full archive not found at {FULL_ARCHIVE}"
    ),
]
PARAMS = settings(
    "data_ingestion",
    {
        "source": str(FULL_ARCHIVE),
        "near_duplicate_max_distance": 2,
        "split": {
            "mode": "auto", "ratios": {"train": 0.7, "valid": 0.15, "test": 0.15}, "seed": 42,
        },
    },
)  # fmt: skip


@pytest.fixture(scope="module")
def quality(tmp_path_factory):
    files = ImageSourceDataset(
        str(FULL_ARCHIVE),
        workdir=str(tmp_path_factory.mktemp("raw")),
        sha256="341c8d38087ebc9335e7ae096f05a76e660bdc74368fb20a475f8a32f53ecf63",
    ).load()
    index, _ = index_images(files, PARAMS)
    return index, *assess_data_quality(index, PARAMS)


def test_every_file_is_indexed_and_readable(quality):
    index, _, report, _ = quality
    assert len(index) == 843 and index["readable"].all()
    assert report["n_distinct_contents"] == 712
    assert report["counts"]["train"] == {
        "adenocarcinoma": 195, "large_cell_carcinoma": 115,
        "normal": 148, "squamous_cell_carcinoma": 155,
    }  # fmt: skip
    assert sum(report["counts"]["test"].values()) == 158


def test_ten_valid_normal_files_are_copies_of_train_files(quality):
    _, table, report, _ = quality
    valid_normal = table[(table["split"] == "valid") & (table["label"] == "normal")]
    exact_in_train = {
        f for g in report["exact_duplicate_groups"] if "train" in g["splits"] for f in g["files"]
    }
    assert len(valid_normal) == 13
    assert valid_normal["path"].isin(exact_in_train).sum() == 10
    assert report["leak_free"]["valid"]["leak_free"] == 62


def test_the_file_with_two_labels_and_the_jpegs_named_png(quality):
    _, _, report, _ = quality
    (conflict,) = report["conflicting_labels"]
    assert [f.rsplit("/", 1)[1] for f in conflict["files"]] == ["l4.png", "sq2.png"]
    mismatched = sorted(m["path"].rsplit("/", 1)[1] for m in report["format_mismatches"])
    assert mismatched == ["n7 (2) - Copy.png", "n7 (2).png", "n7 - Copy.png", "n7.png"]
