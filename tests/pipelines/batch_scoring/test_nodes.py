"""The pieces of batch scoring that need no Spark: the answers of a model for a batch of files,
the output schema, and pinning an alias to a version."""

from __future__ import annotations

import pandas as pd

from chest_ct_classifier.images.labels import LABELS, probability_columns
from chest_ct_classifier.pipelines.batch_scoring.nodes import (
    answer_schema,
    answers_of,
    pinned_model_uri,
)
from chest_ct_classifier.pipelines.inference.nodes import (
    PREDICTION_COLUMNS,
    images_from_request,
    predict_images,
)


class _ServedModel:
    """What mlflow.pyfunc.load_model returns for the registered model: predict on a request."""

    def __init__(self, model) -> None:
        self.model = model

    def predict(self, request: pd.DataFrame) -> pd.DataFrame:
        return predict_images(images_from_request(request), self.model, 4)


def test_answers_are_named_by_file_with_a_row_per_frame(tiny_model, sample_images):
    from tests.dicom_files import ct_dicom

    png = sample_images["Data/test/normal/6 (2).png"]
    names = ["a/scan.png", "b/broken.png", "c/multi"]
    answers = answers_of(_ServedModel(tiny_model), names, [png, b"broken", ct_dicom(png, frames=2)])
    assert list(answers.columns) == PREDICTION_COLUMNS
    assert list(answers["image"]) == ["a/scan.png", "b/broken.png", "c/multi", "c/multi"]
    assert list(answers["frame"].astype(object).where(answers["frame"].notna(), None)) == [
        None, None, 0, 1
    ]  # fmt: skip
    assert answers.loc[1, "status"] == "unreadable" and answers.loc[1, "label"] is None
    assert answers["status"].dtype == object  # not pandas 3's Arrow strings: Spark reads it
    assert set(answers.loc[[0, 2], "label"]) <= set(LABELS)


def test_a_version_without_newer_columns_gets_them_empty():
    class Old:
        def predict(self, request):
            answer = {"image": ["0"], "label": ["normal"], "error": [None]}
            return pd.DataFrame(answer | {column: [0.25] for column in probability_columns()})

    answers = answers_of(Old(), ["x.png"], [b"..."])
    assert list(answers.columns) == PREDICTION_COLUMNS
    assert answers.loc[0, "label"] == "normal" and answers["status"].isna().all()


def test_the_schema_names_every_column_but_the_image():
    fields = [field.split(" ") for field in answer_schema().split(", ")]
    assert [name for name, _ in fields] == PREDICTION_COLUMNS[1:]
    kinds = dict(fields)
    assert kinds["frame"] == "bigint" and kinds["label"] == "string"
    assert kinds["p_normal"] == "double"


def test_only_aliases_are_pinned():
    assert pinned_model_uri("runs:/abc/model") == "runs:/abc/model"
    assert pinned_model_uri("models:/chest-ct-classifier/3") == "models:/chest-ct-classifier/3"
