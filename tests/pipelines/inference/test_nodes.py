import numpy as np

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
