import json
import warnings

import numpy as np
import pytest
from sklearn.metrics import balanced_accuracy_score

from chest_ct_classifier.images.labels import LABELS
from chest_ct_classifier.scoring.metrics import classification_metrics


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


def test_balanced_accuracy_is_mean_recall_and_differs_from_accuracy_when_imbalanced():
    # true:      0 0 0 0 0 0 1 1 2 3
    # predicted: 0 0 0 0 0 0 0 1 0 3   recalls 6/6, 1/2, 0/1, 1/1
    y_true = np.array([0, 0, 0, 0, 0, 0, 1, 1, 2, 3])
    y_pred = np.array([0, 0, 0, 0, 0, 0, 0, 1, 0, 3])
    m = classification_metrics(y_true, _one_hot(y_pred))

    assert m["accuracy"] == pytest.approx(0.8)
    assert m["balanced_accuracy"] == pytest.approx((1.0 + 0.5 + 0.0 + 1.0) / 4)
    assert m["balanced_accuracy"] == pytest.approx(balanced_accuracy_score(y_true, y_pred))


def test_balanced_accuracy_averages_only_the_classes_present():
    # squamous cell carcinoma absent from y_true but predicted once: recalls 1/2, 1/1, 1/1
    y_true = np.array([0, 0, 1, 2])
    y_pred = np.array([0, 3, 1, 2])
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # sklearn's balanced_accuracy_score would warn here
        m = classification_metrics(y_true, _one_hot(y_pred))
    assert m["balanced_accuracy"] == pytest.approx((0.5 + 1.0 + 1.0) / 3)
    assert m["accuracy"] == pytest.approx(0.75)


def test_normalized_confusion_rows_are_recall_fractions():
    y_true = np.array([0, 0, 0, 0, 1, 1, 2, 2, 3, 3])
    y_pred = np.array([0, 0, 0, 1, 1, 1, 2, 0, 3, 2])
    m = classification_metrics(y_true, _one_hot(y_pred))

    normalized = np.array(m["confusion_matrix_normalized"])
    assert normalized.tolist() == [
        [0.75, 0.25, 0.0, 0.0],
        [0.0, 1.0, 0.0, 0.0],
        [0.5, 0.0, 0.5, 0.0],
        [0.0, 0.0, 0.5, 0.5],
    ]
    np.testing.assert_allclose(normalized.sum(axis=1), 1.0)
    recalls = [m["per_class"][label]["recall"] for label in LABELS]
    np.testing.assert_allclose(np.diag(normalized), recalls)
    assert m["balanced_accuracy"] == pytest.approx(np.mean(recalls))


def test_perfectly_ranked_probabilities_have_auc_one():
    y_true = np.array([0, 0, 1, 1, 2, 2, 3, 3])
    m = classification_metrics(y_true, _one_hot(y_true))

    assert m["roc_auc"]["per_class"] == dict.fromkeys(LABELS, 1.0)
    assert m["roc_auc"]["macro"] == 1.0
    for label in LABELS:
        assert m["roc_curve"][label] == {"fpr": [0.0, 0.0, 1.0], "tpr": [0.0, 1.0, 1.0]}


def test_uninformative_probabilities_have_auc_one_half():
    y_true = np.array([0, 0, 1, 1, 2, 2, 3, 3])
    m = classification_metrics(y_true, np.full((8, len(LABELS)), 0.25))

    assert m["roc_auc"]["per_class"] == dict.fromkeys(LABELS, 0.5)
    assert m["roc_auc"]["macro"] == 0.5


def test_auc_on_a_hand_computed_ranking_with_a_tie():
    y_true = np.array([0, 0, 1, 2, 3])
    probabilities = np.array(
        [
            [0.9, 0.05, 0.03, 0.02],
            [0.4, 0.3, 0.2, 0.1],
            [0.6, 0.2, 0.1, 0.1],
            [0.4, 0.1, 0.4, 0.1],
            [0.2, 0.1, 0.1, 0.6],
        ]
    )
    m = classification_metrics(y_true, probabilities)

    # adenocarcinoma: positives {0.9, 0.4} against negatives {0.6, 0.4, 0.2}:
    # 0.9 wins 3 pairs; 0.4 loses one, ties one (1/2), wins one: (3 + 1.5) / 6
    # large cell: positive 0.2 against {0.05, 0.3, 0.1, 0.1}: wins 3 of 4
    # normal, squamous: the positive is above every negative
    auc = m["roc_auc"]["per_class"]
    assert auc["adenocarcinoma"] == pytest.approx(0.75)
    assert auc["large_cell_carcinoma"] == pytest.approx(0.75)
    assert auc["normal"] == auc["squamous_cell_carcinoma"] == 1.0
    assert m["roc_auc"]["macro"] == pytest.approx(0.875)
    curve = m["roc_curve"]["adenocarcinoma"]
    assert curve["fpr"][0] == curve["tpr"][0] == 0.0
    assert curve["fpr"][-1] == curve["tpr"][-1] == 1.0
    assert np.trapezoid(curve["tpr"], curve["fpr"]) == pytest.approx(0.75)


def test_a_class_absent_from_y_true_has_no_auc_and_is_left_out_of_the_macro():
    y_true = np.array([0, 0, 1, 1, 2, 2])  # no squamous cell carcinoma
    y_pred = np.array([0, 3, 1, 1, 2, 0])  # ... but predicted once
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        m = classification_metrics(y_true, _one_hot(y_pred))

    auc = m["roc_auc"]["per_class"]
    assert auc["squamous_cell_carcinoma"] is None
    defined = [auc[label] for label in LABELS[:3]]
    assert None not in defined
    assert m["roc_auc"]["macro"] == pytest.approx(np.mean(defined))
    assert set(m["roc_curve"]) == set(LABELS[:3])
    assert m["confusion_matrix_normalized"][3] == [0.0, 0.0, 0.0, 0.0]
    assert m["per_class"]["squamous_cell_carcinoma"]["support"] == 0


def test_a_single_class_leaves_every_auc_undefined_without_error():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        m = classification_metrics(np.array([2, 2, 2]), _one_hot(np.array([2, 0, 2])))
    assert m["roc_auc"] == {"per_class": dict.fromkeys(LABELS), "macro": None}
    assert m["roc_curve"] == {}
    assert m["balanced_accuracy"] == pytest.approx(2 / 3)


def _assert_plain(value, where="metrics"):
    """Only JSON's own Python types: no numpy scalars, no NaN or infinity."""
    if isinstance(value, dict):
        for key, item in value.items():
            assert type(key) is str, where
            _assert_plain(item, f"{where}[{key!r}]")
    elif isinstance(value, list):
        for index, item in enumerate(value):
            _assert_plain(item, f"{where}[{index}]")
    else:
        assert type(value) in (str, int, float, bool, type(None)), f"{where}: {type(value)}"
        assert not (type(value) is float and not np.isfinite(value)), where


def test_the_whole_report_round_trips_through_json():
    y_true = np.array([0, 0, 1, 1, 2, 2])  # one class absent: None values included
    m = classification_metrics(y_true, _one_hot(np.array([0, 1, 1, 1, 2, 0])))

    _assert_plain(m)
    assert json.loads(json.dumps(m, allow_nan=False)) == m


def test_macro_f1_is_scikit_learns_to_the_last_bit_row_by_row():
    from sklearn.metrics import f1_score

    from chest_ct_classifier.scoring.metrics import macro_f1, macro_f1_of_rows

    rng = np.random.default_rng(0)
    # some classes absent from the truth, the answers or both; empty rows; mostly right rows
    cases = [(np.array([], int), np.array([], int)), (np.array([0, 0]), np.array([0, 0]))]
    for _ in range(300):
        n, classes = int(rng.integers(1, 30)), int(rng.integers(1, 5))
        truth = rng.integers(0, classes, n)
        answers = np.where(rng.random(n) < 0.7, truth, rng.integers(0, len(LABELS), n))
        cases.append((truth, answers))
    for truth, answers in cases:
        expected = f1_score(
            truth, answers, labels=range(len(LABELS)), average="macro", zero_division=0
        ) if len(truth) else 0.0  # fmt: skip
        assert macro_f1(truth, answers) == expected
    truth, answers = rng.integers(0, 4, (50, 20)), rng.integers(0, 4, (50, 20))
    rows = macro_f1_of_rows(truth, answers)
    assert rows.tolist() == [macro_f1(t, a) for t, a in zip(truth, answers, strict=True)]
    with pytest.raises(ValueError, match="one shape"):
        macro_f1([0, 1, 2, 3], [0])  # scikit-learn refuses it too; broadcasting would score it
