import io

import pandas as pd
import pytest
from PIL import Image

from chest_ct_classifier.images.labels import LABELS
from chest_ct_classifier.pipelines.data_ingestion.nodes import (
    INDEX_COLUMNS,
    assess_data_quality,
    index_images,
    locate,
    select_usable_images,
)
from tests.conftest import settings

PARAMS = settings(
    "data_ingestion",
    {
        "source": "sample",
        "near_duplicate_max_distance": 2,
        "split": {
            "mode": "auto", "ratios": {"train": 0.5, "valid": 0.25, "test": 0.25}, "seed": 0,
        },
    },
)  # fmt: skip


@pytest.mark.parametrize(
    ("path", "expected"),
    [
        (
            "Data/train/adenocarcinoma_left.lower.lobe_T2_N0_M0_Ib/000000 (6).png",
            ("train", "adenocarcinoma"),
        ),
        ("Data/test/large.cell.carcinoma/000108.png", ("test", "large_cell_carcinoma")),
        ("Data/valid/normal/6 - Copy.png", ("valid", "normal")),
        ("train/normal/extra/deeper/x.png", ("train", "normal")),
        ("normal/x.png", (None, "normal")),
        ("train/x.png", ("train", None)),
    ],
)
def test_locate_finds_split_and_label(path, expected):
    assert locate(path) == expected


@pytest.fixture(scope="module")
def indexed(sample_images):
    files = {path: (lambda data=data: data) for path, data in sample_images.items()}
    good = sample_images["Data/train/normal/n7.png"]
    files["Data/train/normal/broken scan (2).png"] = lambda: good[:300]
    files["Data/train/normal/notes.txt"] = lambda: b"hello"
    files["Data/valid/normal/6 - Copy.png"] = lambda: good
    return index_images(files, settings("data_ingestion", {"source": "sample"}))


def test_every_image_is_indexed_with_its_facts(indexed, sample_images):
    index, _ = indexed
    assert list(index.columns) == INDEX_COLUMNS
    assert len(index) == len(sample_images) + 2
    n7 = index.set_index("path").loc["Data/train/normal/n7.png"]
    assert (n7["format"], n7["mode"], n7["label"], n7["split"]) == (
        "JPEG",
        "RGB",
        "normal",
        "train",
    )
    assert n7["readable"] and len(n7["sha256"]) == 64 and n7["width"] > 0
    assert set(index["label"].dropna()) == set(LABELS)
    assert set(index["split"]) == {"train", "valid", "test"}


def test_unreadable_files_are_reported_not_raised(indexed):
    index, summary = indexed
    broken = index.set_index("path").loc["Data/train/normal/broken scan (2).png"]
    assert not broken["readable"] and broken["error"]
    assert [u["path"] for u in summary["unreadable"]] == ["Data/train/normal/broken scan (2).png"]
    assert summary["skipped_non_images"] == ["Data/train/normal/notes.txt"]


def test_summary_counts_usable_images_per_split_and_class(indexed, sample_images):
    _, summary = indexed
    assert summary["counts"]["train"] == {label: 8 for label in LABELS}
    assert summary["counts"]["valid"]["normal"] == 4
    assert summary["n_usable"] == len(sample_images) + 1


def test_usable_images_keep_their_bytes_and_exclude_broken(indexed, sample_images):
    index, _ = indexed
    table, _, _ = assess_data_quality(index, PARAMS)
    files = {p: (lambda d=d: d) for p, d in sample_images.items()}
    files["Data/valid/normal/6 - Copy.png"] = lambda: b"copy"
    usable = select_usable_images(files, table)
    assert "Data/train/normal/broken scan (2).png" not in usable
    assert usable["Data/train/normal/n7.png"] == sample_images["Data/train/normal/n7.png"]


def test_no_training_images_is_a_clear_error():
    index = pd.DataFrame([{"path": "test/normal/a.png", "split": "test", "label": "normal"}])
    with pytest.raises(ValueError, match="no readable, labelled training images"):
        select_usable_images({"test/normal/a.png": lambda: b""}, index)


@pytest.fixture(scope="module")
def quality(sample_images):
    """The sample plus crafted cases: a cross-split copy, a label conflict, a near copy."""
    files = {path: (lambda data=data: data) for path, data in sample_images.items()}
    n6 = sample_images["Data/train/normal/n6.jpg"]
    files["Data/valid/normal/6 - Copy.png"] = lambda: sample_images["Data/train/normal/n7.png"]
    files["Data/train/squamous.cell.carcinoma_x/sq2.png"] = lambda: n6
    files["Data/train/large.cell.carcinoma_x/l4.png"] = lambda: n6
    test_path = next(p for p in sample_images if p.startswith("Data/test/adenocarcinoma"))
    near = io.BytesIO()
    Image.open(io.BytesIO(sample_images[test_path])).convert("RGB").save(near, "JPEG", quality=85)
    files["Data/test/adenocarcinoma/near copy.jpg"] = near.getvalue
    index, _ = index_images(files, PARAMS)
    return assess_data_quality(index, PARAMS)


def test_report_has_every_required_key(quality):
    _, report, markdown = quality
    required = {"counts", "exact_duplicate_groups", "near_duplicate_groups", "cross_split_groups",
                "conflicting_labels", "unreadable", "format_mismatches"}  # fmt: skip
    assert required <= set(report)
    assert markdown.startswith("# Data quality report")
    assert "`Data/valid/normal/6 - Copy.png`" in markdown


def test_exact_copy_across_splits_is_leakage_and_not_leak_free(quality):
    table, report, _ = quality
    crossing = [g["files"] for g in report["cross_split_groups"]]
    assert ["Data/train/normal/n7.png", "Data/valid/normal/6 - Copy.png"] in crossing
    row = table.set_index("path").loc["Data/valid/normal/6 - Copy.png"]
    assert row["copy_in_train"]
    assert report["leak_free"]["valid"]["official"] == 13
    assert report["leak_free"]["valid"]["leak_free"] == 12


def test_files_with_two_labels_are_listed_and_flagged(quality):
    table, report, _ = quality
    (conflict,) = report["conflicting_labels"]
    assert conflict["labels"] == ["large_cell_carcinoma", "normal", "squamous_cell_carcinoma"]
    flagged = set(table.loc[table["label_conflict"], "path"])
    assert flagged == set(conflict["files"])


def test_near_copy_is_grouped_with_its_original_but_not_exact(quality):
    _, report, _ = quality
    near_files = [g["files"] for g in report["near_duplicate_groups"]]
    assert any("Data/test/adenocarcinoma/near copy.jpg" in files for files in near_files)
    exact_files = {f for g in report["exact_duplicate_groups"] for f in g["files"]}
    assert "Data/test/adenocarcinoma/near copy.jpg" not in exact_files


def test_jpegs_named_png_are_format_mismatches_and_real_jpgs_are_not(quality):
    _, report, _ = quality
    assert {m["path"] for m in report["format_mismatches"]} == {
        "Data/train/normal/n7.png",
        "Data/valid/normal/6 - Copy.png",
        "Data/train/squamous.cell.carcinoma_x/sq2.png",
        "Data/train/large.cell.carcinoma_x/l4.png",
    }
    assert {(m["extension"], m["format"]) for m in report["format_mismatches"]} == {
        (".png", "JPEG")
    }


def test_data_without_splits_is_resplit_keeping_copies_together(sample_images):
    files = {}
    for path, data in sample_images.items():
        label_folder = path.split("/")[2]
        files[f"images/{label_folder}/{path.rsplit('/', 1)[1]}"] = lambda d=data: d
    n7 = sample_images["Data/train/normal/n7.png"]
    copies = [f"images/normal/copy {i}.png" for i in range(3)]
    for copy in copies:
        files[copy] = lambda: n7
    index, _ = index_images(files, PARAMS)
    assert index["split"].isna().all()

    table, report, _ = assess_data_quality(index, PARAMS)
    assert report["split_source"] == "resplit"
    assert len(table) == len(files)
    assert set(table["split"]) == {"train", "valid", "test"}
    copy_splits = table.set_index("path").loc[[*copies, "images/normal/n7.png"], "split"]
    assert copy_splits.nunique() == 1
    assert report["cross_split_groups"] == []
    assert not table.loc[table["split"] != "train", "copy_in_train"].any()
    again, _, _ = assess_data_quality(index, PARAMS)
    pd.testing.assert_frame_equal(table, again)  # seeded: reproducible


def test_official_split_is_kept_unless_resplit_is_asked(indexed):
    index, _ = indexed
    table, report, _ = assess_data_quality(index, PARAMS)
    assert report["split_source"] == "official"
    official = index.set_index("path").loc[table["path"], "split"].to_numpy()
    assert (table["split"].to_numpy() == official).all()
    resplit_params = PARAMS.model_copy(
        update={"split": PARAMS.split.model_copy(update={"mode": "resplit"})}
    )
    _, resplit_report, _ = assess_data_quality(index, resplit_params)
    assert resplit_report["split_source"] == "resplit"


def test_dicom_files_are_indexed_by_content_with_labels_from_their_folders(sample_images):
    from tests.dicom_files import PATIENT_MARKERS, ct_dicom

    pngs = [p for p in sample_images if p.startswith("Data/train/")]
    files = {}
    for index, path in enumerate(pngs):
        folder = path.rsplit("/", 1)[0]
        name = f"{folder}/series 1/IM{index:04d}" if index % 2 else f"{folder}/{index}.dcm"
        data = ct_dicom(sample_images[path], "rle" if index % 3 else "explicit")
        files[name] = lambda data=data: data
    files["Data/train/normal/README"] = lambda: b"not an image, no extension"
    multi = ct_dicom(sample_images[pngs[0]], frames=2)
    files["Data/train/normal/multi.dcm"] = lambda: multi
    mr = ct_dicom(sample_images[pngs[0]], modality="MR")
    files["Data/train/normal/mr.dcm"] = lambda: mr

    index, summary = index_images(files, PARAMS)

    dicom = index[index["format"] == "DICOM"]
    assert len(dicom) == len(pngs) + 2 and dicom["mode"].eq("DICOM").all()
    readable = dicom[dicom["readable"]]
    assert len(readable) == len(pngs)  # neither the multi-frame file nor the MR slice
    assert "multi-frame" in index.set_index("path").loc["Data/train/normal/multi.dcm", "error"]
    assert "modality MR, not CT" in index.set_index("path").loc["Data/train/normal/mr.dcm", "error"]
    assert readable["label"].notna().all() and (readable["split"] == "train").all()
    # the same slices as the PNGs: the same perceptual hashes, the same sizes
    as_png = index_images({p: (lambda p=p: sample_images[p]) for p in pngs}, PARAMS)[0]
    assert sorted(readable["phash"]) == sorted(as_png["phash"])
    assert sorted(readable["width"]) == sorted(as_png["width"])
    assert "Data/train/normal/README" in summary["skipped_non_images"]
    for marker in PATIENT_MARKERS.values():
        assert marker not in index.to_csv() + str(summary)
