import numpy as np
import pytest

from chest_ct_classifier.labels import LABELS
from chest_ct_classifier.metrics import classification_metrics


def _one_hot(predicted, confidence=0.7):
    p = np.full((len(predicted), len(LABELS)), (1 - confidence) / (len(LABELS) - 1))
    p[np.arange(len(predicted)), predicted] = confidence
    return p


def test_metrics_on_a_known_confusion():
    # true:      0 0 0 0 1 1 2 2 3 3
    # predicted: 0 0 0 1 1 1 2 0 3 2
    y_true = np.array([0, 0, 0, 0, 1, 1, 2, 2, 3, 3])
    y_pred = np.array([0, 0, 0, 1, 1, 1, 2, 0, 3, 2])
    m = classification_metrics(y_true, _one_hot(y_pred))

    assert m["confusion_matrix"] == [[3, 1, 0, 0], [0, 2, 0, 0], [1, 0, 1, 0], [0, 0, 1, 1]]
    assert m["accuracy"] == pytest.approx(0.7)
    ad = m["per_class"]["adenocarcinoma"]
    assert (ad["precision"], ad["recall"], ad["support"]) == (0.75, 0.75, 4)
    lc = m["per_class"]["large_cell_carcinoma"]
    assert lc["precision"] == pytest.approx(2 / 3) and lc["recall"] == 1.0
    assert lc["f1"] == pytest.approx(0.8)
    f1s = [0.75, 0.8, 0.5, 2 / 3]
    assert m["macro_f1"] == pytest.approx(np.mean(f1s))
    assert m["loss"] == pytest.approx(-(7 * np.log(0.7) + 3 * np.log(0.1)) / 10)
    assert m["n_images"] == 10 and m["labels"] == list(LABELS)


def test_a_class_never_predicted_scores_zero_not_an_error():
    m = classification_metrics(np.array([0, 1, 2, 3]), _one_hot(np.array([0, 0, 0, 0])))
    assert m["per_class"]["normal"]["precision"] == 0.0
    assert m["accuracy"] == 0.25


def test_no_images_is_an_error():
    with pytest.raises(ValueError, match="no images"):
        classification_metrics(np.array([], dtype=int), np.zeros((0, 4)))
