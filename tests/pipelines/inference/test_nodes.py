import numpy as np

from chest_ct_classifier.labels import LABELS, probability_columns
from chest_ct_classifier.pipelines.inference.nodes import PREDICTION_COLUMNS, predict_images


def test_predicts_every_file_and_reports_unreadable_ones(tiny_model, sample_images):
    paths = list(sample_images)[:5]
    files = {
        f"deep/er/{i} scan (copy).png": (lambda p=p: sample_images[p]) for i, p in enumerate(paths)
    }
    files["corrupt.png"] = lambda: b"\x89PNG garbage"
    files["readme.txt"] = lambda: b"not an image"

    predictions = predict_images(files, tiny_model, {"batch_size": 2})

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
    one = predict_images(files, tiny_model, {"batch_size": 1})
    five = predict_images(files, tiny_model, {"batch_size": 5})
    np.testing.assert_allclose(
        one[probability_columns()].to_numpy(), five[probability_columns()].to_numpy(), atol=1e-5
    )
