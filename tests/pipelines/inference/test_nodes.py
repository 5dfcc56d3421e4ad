from pathlib import Path

import numpy as np
import pandas as pd

from chest_ct_classifier.images.labels import LABELS, probability_columns
from chest_ct_classifier.pipelines.inference.nodes import PREDICTION_COLUMNS, predict_images


def test_predicts_every_file_and_reports_unreadable_ones(tiny_model, sample_images):
    paths = list(sample_images)[:5]
    files = {
        f"deep/er/{i} scan (copy).png": (lambda p=p: sample_images[p]) for i, p in enumerate(paths)
    }
    files["corrupt.png"] = lambda: b"\x89PNG garbage"
    files["readme.txt"] = lambda: b"not an image"

    predictions = predict_images(files, tiny_model, 2)

    assert list(predictions.columns) == PREDICTION_COLUMNS
    assert sorted(predictions["image"]) == sorted(files)
    ok = predictions[predictions["error"].isna()]
    bad = predictions[predictions["error"].notna()]
    assert len(ok) == 5 and set(bad["image"]) == {"corrupt.png", "readme.txt"}
    assert bad["label"].isna().all()
    assert set(ok["label"]) <= set(LABELS)
    probabilities = ok[probability_columns()].to_numpy()
    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, atol=1e-5)
    assert (ok["label"] == [LABELS[i] for i in probabilities.argmax(axis=1)]).all()


def test_batching_does_not_change_answers(tiny_model, sample_images):
    files = {p: (lambda p=p: sample_images[p]) for p in list(sample_images)[:5]}
    one = predict_images(files, tiny_model, 1)
    five = predict_images(files, tiny_model, 5)
    np.testing.assert_allclose(
        one[probability_columns()].to_numpy(), five[probability_columns()].to_numpy(), atol=1e-5
    )


def test_a_request_table_is_predicted_in_row_order_with_bad_rows_reported(
    tiny_model, sample_images
):
    import base64

    import pandas as pd

    from chest_ct_classifier.pipelines.inference.nodes import images_from_request

    paths = list(sample_images)[:3]
    encoded = [base64.b64encode(sample_images[p]).decode("ascii") for p in paths]
    wrapped = "\n".join(encoded[1][i : i + 76] for i in range(0, len(encoded[1]), 76))
    request = pd.DataFrame(
        {"image": [encoded[0], "%%% not base64", wrapped, f"data:image/png;base64,{encoded[2]}"]}
    )
    predictions = predict_images(images_from_request(request), tiny_model, 2)
    assert list(predictions["image"]) == ["0", "1", "2", "3"]
    assert "base64" in predictions.loc[1, "error"]
    direct = predict_images({p: (lambda p=p: sample_images[p]) for p in paths}, tiny_model, 2)
    np.testing.assert_allclose(
        predictions.loc[[0, 2, 3], probability_columns()].to_numpy(),
        direct[probability_columns()].to_numpy(),
        atol=1e-6,
    )


def test_a_request_without_an_image_column_is_refused():
    import pandas as pd
    import pytest

    from chest_ct_classifier.pipelines.inference.nodes import images_from_request

    with pytest.raises(ValueError, match="'image' column"):
        images_from_request(pd.DataFrame({"picture": ["x"]}))


def test_serving_example_has_one_image_per_class(sample_images):
    import base64

    import pandas as pd

    from chest_ct_classifier.pipelines.inference.nodes import serving_input_example

    table = pd.DataFrame(
        {
            "path": list(sample_images),
            "split": [p.split("/")[1] for p in sample_images],
            "label": [p.split("/")[2] for p in sample_images],
        }
    )
    files = {p: (lambda p=p: sample_images[p]) for p in sample_images}
    example = serving_input_example(files, table)
    assert list(example.columns) == ["image"] and len(example) == len(LABELS)
    decoded = {base64.b64decode(text) for text in example["image"]}
    valid = {d for p, d in sample_images.items() if p.split("/")[1] == "valid"}
    assert decoded <= valid


def test_a_precision_is_used_only_as_far_as_the_gate_allows(tiny_model, sample_images):
    from chest_ct_classifier.images.preprocessing import preprocess_image_bytes
    from chest_ct_classifier.model.numeric_precision import (
        Int8Forward,
        int8_feature_extractor,
        int8_fingerprint,
        model_fingerprint,
    )

    files = {p: (lambda p=p: sample_images[p]) for p in list(sample_images)[:4]}
    int8 = int8_feature_extractor(tiny_model)
    checked = {"model_fingerprint": model_fingerprint(tiny_model),
               "int8_fingerprint": int8_fingerprint(int8)}  # fmt: skip
    passed = {**checked, "paths": {"fp32": {"ms_per_image": 3.0},
              "int8": {"passed": True, "reason": "ok", "ms_per_image": 1.0}}}  # fmt: skip
    failed = {**checked, "paths": {"int8": {"passed": False, "reason": "valid: 0.9"}}}
    other_model = {**passed, "model_fingerprint": "0123456789abcdef"}

    def probabilities(gate):
        table = predict_images(files, tiny_model, 2, int8, gate, "int8")
        return table[probability_columns()].to_numpy()

    inputs = np.stack([preprocess_image_bytes(sample_images[p], 32) for p in files])
    np.testing.assert_allclose(
        probabilities(passed), Int8Forward(tiny_model, int8)(inputs), atol=1e-5
    )
    fp32 = predict_images(files, tiny_model, 2)[probability_columns()].to_numpy()
    np.testing.assert_allclose(probabilities(failed), fp32, atol=1e-6)
    np.testing.assert_allclose(probabilities(other_model), fp32, atol=1e-6)
    np.testing.assert_allclose(probabilities(None), fp32, atol=1e-6)


def _detector_of(model, sample_images):
    """An out-of-distribution detector of ``model``, fitted on the sample's train images, its
    threshold set on the valid ones (as training does with its hold-out)."""
    from chest_ct_classifier.images.labels import label_from_folder
    from chest_ct_classifier.images.preprocessing import preprocess_image_bytes
    from chest_ct_classifier.model.architecture import feature_extractor, model_fingerprint
    from chest_ct_classifier.model.ood import fit_detector

    features = feature_extractor(model)

    def of(split):
        paths = [p for p in sample_images if p.split("/")[1] == split]
        inputs = np.stack([preprocess_image_bytes(sample_images[p], 32) for p in paths])
        labels = [LABELS.index(label_from_folder(p.split("/")[2])) for p in paths]
        return features.predict(inputs, verbose=0), np.array(labels)

    train, labels = of("train")
    return fit_detector(train, labels, of("valid")[0], 0.02, model_fingerprint(model))


def _not_ct_images():
    from skimage import data

    from chest_ct_classifier.datasets.reference_images_dataset import png_bytes

    return {
        "camera.png": png_bytes(data.camera()),
        "astronaut.png": png_bytes(data.astronaut()),
        "flat.png": png_bytes(np.full((64, 64), 90, np.uint8)),
    }


def test_images_that_are_not_ct_get_a_status_and_no_label(tiny_model, sample_images):
    from chest_ct_classifier.pipelines.inference.nodes import audit_record_of_run

    detector = _detector_of(tiny_model, sample_images)
    slices = [p for p in sample_images if p.split("/")[1] != "train"][:6]
    files = {p: (lambda p=p: sample_images[p]) for p in slices}
    files.update({k: (lambda v=v: v) for k, v in _not_ct_images().items()})
    files["broken.png"] = lambda: b"\x89PNG garbage"

    table = predict_images(files, tiny_model, 4, ood_detector=detector, uncertain_below=0.4)

    rows = table.set_index("image")
    refused = rows.loc[list(_not_ct_images())]
    assert (refused["status"] == "out_of_distribution").all()
    assert refused["label"].isna().all() and refused["ood_reason"].str.len().gt(0).all()
    assert "colour" in rows.loc["astronaut.png", "ood_reason"]
    assert rows.loc["camera.png", "ood_score"] > detector.threshold  # the features tell it
    answered = rows.loc[slices]
    assert set(answered["status"]) <= {"ok", "uncertain"} and answered["label"].notna().all()
    assert (answered["ood_score"] <= detector.threshold).all() and answered[
        "ood_reason"
    ].isna().all()
    top = answered[probability_columns()].max(axis=1)
    assert ((answered["status"] == "uncertain") == (top < 0.4)).all()
    assert rows.loc["broken.png", "status"] == "unreadable"
    assert np.isnan(rows.loc["broken.png", "ood_score"])
    # the score of the features the network computed on the way to its answer
    from chest_ct_classifier.images.preprocessing import preprocess_image_bytes
    from chest_ct_classifier.model.architecture import feature_extractor

    inputs = np.stack([preprocess_image_bytes(sample_images[p], 32) for p in slices])
    features = feature_extractor(tiny_model).predict(inputs, verbose=0)
    np.testing.assert_allclose(answered["ood_score"], detector.scores(features), rtol=1e-4)
    record = audit_record_of_run(table, tiny_model, "in")
    assert record["statuses"] == {"ok": int((table["status"] == "ok").sum()),
                                  "uncertain": int((table["status"] == "uncertain").sum()),
                                  "out_of_distribution": 3, "unreadable": 1}  # fmt: skip
    assert sum(record["labels"].values()) == len(slices)


def test_a_detector_of_another_model_is_not_used(tiny_model, sample_images):
    import dataclasses

    detector = dataclasses.replace(
        _detector_of(tiny_model, sample_images), model_fingerprint="another"
    )
    path = next(p for p in sample_images if "/valid/" in f"/{p}")
    files = {path: lambda: sample_images[path]}
    files.update({k: (lambda v=v: v) for k, v in _not_ct_images().items()})
    table = predict_images(files, tiny_model, 2, ood_detector=detector)
    rows = table.set_index("image")
    assert rows["ood_score"].isna().all()
    assert rows.loc[path, "ood_reason"].startswith("not checked")
    assert rows.loc[path, "status"] in ("ok", "uncertain")
    # the input checks need no detector: colour and blank images are still refused
    assert rows.loc[["astronaut.png", "flat.png"], "status"].eq("out_of_distribution").all()


def test_dicom_versions_of_sample_slices_get_the_pngs_answers(tiny_model, sample_images):
    from pydicom.data import get_testdata_file

    from tests.dicom_files import ENCODINGS, PATIENT_MARKERS, ct_dicom

    pngs = [p for p in sample_images if p.startswith("Data/test/")][:4]
    files: dict = {}
    for index, path in enumerate(pngs):  # every encoding, nested folders, names without suffix
        encoding = ENCODINGS[index % len(ENCODINGS)]
        data = ct_dicom(sample_images[path], encoding, slope=0.5, intercept=-2000, unsigned=True)
        files[f"series/a/b/{index}"] = lambda data=data: data
        files[f"png/{index}.png"] = lambda path=path: sample_images[path]
    multi = ct_dicom(sample_images[pngs[0]], "rle", frames=3, instance=9)
    files["series/multi.dcm"] = lambda: multi
    for name in ("rtplan.dcm", "MR_small.dcm", "MR_truncated.dcm"):
        data = Path(get_testdata_file(name, download=False)).read_bytes()
        files[f"other/{name}"] = lambda data=data: data

    table = predict_images(files, tiny_model, 4)

    rows = table.set_index("image")
    for index in range(len(pngs)):
        dicom, png = rows.loc[f"series/a/b/{index}"], rows.loc[f"png/{index}.png"]
        assert dicom["label"] == png["label"] and dicom["status"] == png["status"]
        np.testing.assert_allclose(
            dicom[probability_columns()].to_numpy(float),
            png[probability_columns()].to_numpy(float),
            atol=0.02,
        )
        assert dicom["series_uid"] and dicom["sop_uid"] and dicom["instance_number"] == 1
        assert pd.isna(png["series_uid"]) and pd.isna(png["frame"])
    frames = table[table["image"] == "series/multi.dcm"]
    assert list(frames["frame"]) == [0, 1, 2] and set(frames["instance_number"]) == {9}
    assert "without an image" in rows.loc["other/rtplan.dcm", "error"]
    assert rows.loc["other/rtplan.dcm", "status"] == "unreadable"
    assert "cannot be decoded" in rows.loc["other/MR_truncated.dcm", "error"]
    mr = rows.loc["other/MR_small.dcm"]
    assert mr["status"] == "out_of_distribution" and pd.isna(mr["label"])
    assert mr["ood_reason"] == "a DICOM image of modality MR, not CT"
    text = table.to_csv()
    for marker in PATIENT_MARKERS.values():
        assert marker not in text
