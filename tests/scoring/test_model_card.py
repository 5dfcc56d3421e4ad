"""The model card says whether a temperature was folded in, in its Markdown and on its page."""

from __future__ import annotations

from pathlib import Path

import pytest
from flask import render_template

from chest_ct_classifier.images.labels import DISPLAY_NAMES, LABELS
from chest_ct_classifier.scoring.model_card import (
    build_model_card,
    calibration_summary,
    render_markdown,
    temperature_scaled,
)
from chest_ct_classifier.serving import create_app
from chest_ct_classifier.serving.settings import ServingSettings

FITTED = {"temperature": 1.7, "fitted_on": "holdout", "n_images": 144}
CHOSEN_NONE = {"temperature": 1.0, "fitted_on": "none", "n_images": 0}
NO_IMAGES = {"temperature": 1.0, "fitted_on": None, "n_images": 0}


def _scores(ece: float, ece_uncalibrated: float, p_value: float = 0.4) -> dict:
    per_class = {label: {"recall": 0.75, "support": 12} for label in LABELS}
    interval = {"low": 0.6, "high": 0.9}
    if_calibrated = {"confidence": 0.95, "mean": 0.061, "high": 0.094, "p_value": p_value,
                     "above": p_value < 0.05}  # fmt: skip
    return {
        "n_images": 48, "accuracy": 0.75, "macro_f1": 0.74, "balanced_accuracy": 0.75,
        "roc_auc": {"macro": 0.9}, "ece": ece, "ece_uncalibrated": ece_uncalibrated,
        "ece_if_calibrated": if_calibrated, "per_class": per_class,
        "intervals": {"accuracy": interval, "macro_f1": interval, "confidence": 0.95,
                      "recall": dict.fromkeys(LABELS, interval)},
    }  # fmt: skip


def _card(calibration: dict, ece: float, ece_uncalibrated: float, p_value: float = 0.4) -> dict:
    scores = _scores(ece, ece_uncalibrated, p_value)
    metrics = {
        "weights": {"used": "imagenet"},
        "splits": {"test": scores},
        "leak_free": {"test": scores},
        "calibration": calibration,
    }
    return build_model_card("chest-ct-classifier", "f00d", metrics, {}, {}, {}, {})


def test_the_record_says_whether_a_temperature_was_folded_in():
    assert temperature_scaled(FITTED)
    assert not temperature_scaled(CHOSEN_NONE) and not temperature_scaled(NO_IMAGES)
    assert calibration_summary(FITTED) == "Temperature 1.700, fitted on holdout (144 images)."
    assert "training.calibration.fit_on is none" in calibration_summary(CHOSEN_NONE)
    assert "no images to fit one to" in calibration_summary(NO_IMAGES)


@pytest.mark.parametrize(
    ("calibration", "summary", "ece_row"),
    [
        (FITTED, "Temperature 1.700, fitted on holdout", "| ECE (uncalibrated -> calibrated) | "
         "0.091 -> 0.052 | |"),
        (CHOSEN_NONE, "No temperature scaling (T = 1)", "| ECE (no temperature) | 0.052 | |"),
        (NO_IMAGES, "No temperature scaling (T = 1)", "| ECE (no temperature) | 0.052 | |"),
    ],
)  # fmt: skip
def test_the_markdown_shows_one_ece_without_a_temperature_and_both_with_one(
    calibration, summary, ece_row
):
    ece_uncalibrated = 0.091 if temperature_scaled(calibration) else 0.052
    text = render_markdown(_card(calibration, 0.052, ece_uncalibrated))
    assert summary in text and ece_row in text
    assert ("uncalibrated" in text) is temperature_scaled(calibration)


def _page(card: dict, tmp_path: Path, served: dict | None = None) -> str:
    app = create_app(ServingSettings(project_path=tmp_path, model_path=tmp_path / "none.keras"))
    labels = [{"label": label, "display_name": DISPLAY_NAMES[label]} for label in LABELS]
    with app.test_request_context("/model-card"):
        return render_template(
            "model_card.html", card=card, reason="", labels=labels, served=served
        )


def test_the_page_says_what_this_machine_serves_beside_the_cards_default(tmp_path):
    card = _card(CHOSEN_NONE, 0.052, 0.052)
    card["precision"] = {"served_by_default": "bf16", "reason": "auto: bf16 is the fastest"}
    reason = "bf16 fails on this machine (AbortedError: no kernel): fp32"
    page = _page(card, tmp_path, {"served": "fp32", "reason": reason})
    assert "Served by default: bf16 (auto: bf16 is the fastest)." in page
    assert f"Served here: fp32 ({reason})." in page
    assert "Served here" not in _page(card, tmp_path)


def test_the_page_shows_the_temperature_or_its_absence(tmp_path):
    page = _page(_card(FITTED, 0.052, 0.091), tmp_path)
    assert "Temperature 1.700, fitted on holdout" in page
    assert "0.091 &rarr; 0.052" in page
    page = _page(_card(CHOSEN_NONE, 0.052, 0.052), tmp_path)
    assert "No temperature scaling (T = 1)" in page and "uncalibrated" not in page
    assert "ECE (no temperature)" in page
    # a card written before the summary existed (an older registered version): as it was shown
    old = _card(FITTED, 0.052, 0.091)
    del old["calibration_summary"], old["temperature_scaled"]
    page = _page(old, tmp_path)
    assert "Temperature 1.700, fitted on holdout." in page and "0.091 &rarr; 0.052" in page


def test_the_card_weighs_the_ece_against_what_chance_alone_would_give(tmp_path):
    calibrated = _card(CHOSEN_NONE, 0.052, 0.052)
    text = render_markdown(calibrated)
    row = "| ECE a calibrated model would read here (p = 0.400: its draws reading at least the"
    assert f"{row} served ECE, the observation counted) | 0.061 | up to 0.094 |" in text
    assert not any("ECE" in note for note in calibrated["limitations"])
    page = _page(calibrated, tmp_path)
    assert "(p = 0.400: its draws reading at least the served ECE" in page
    assert "up to 0.094" in page
    # an ECE a calibrated model would read in under 5 % of draws is a limitation the card names
    off = _card(CHOSEN_NONE, 0.152, 0.152, p_value=0.001)
    assert (
        "On leak-free test the ECE (0.152) is more than chance alone explains on 48 images: a "
        "calibrated model reads at most 0.094 in 95% of draws (p = 0.001)."
    ) in off["limitations"]
    # a card written before the check existed (an older registered version) still shows
    for subset in off["evaluation"].values():
        for scores in subset.values():
            del scores["ece_if_calibrated"]
    assert "ECE (no temperature)" in _page(off, tmp_path)


def _spread_values(mean: float) -> dict:
    return {"mean": mean, "std": 0.05, "min": mean - 0.05, "max": mean + 0.05,
            "per_seed": [mean - 0.05, mean, mean + 0.05]}  # fmt: skip


def _cells(page: str, table_id: str, row: str) -> list[str]:
    """The cells after the row's name in the page's table of that id, in order."""
    page = " ".join(page.split())
    table = page[page.index(f'id="{table_id}"') :].split("</table>")[0]
    cells = table[table.index(f"<td>{row}</td>") :].split("</tr>")[0]
    return [cell.removesuffix("</td>").strip() for cell in cells.split('<td class="text-end">')[1:]]


def _card_with_spread(spread: dict) -> dict:
    """A card whose test split holds 12 images of each class and whose leak-free test part
    holds no adenocarcinoma and 4, 5 and 6 of the others."""
    leak_free = _scores(0.052, 0.052)
    leak_free["per_class"] = {
        label: {"recall": 0.75, "support": 0 if label == "adenocarcinoma" else 3 + i}
        for i, label in enumerate(LABELS)
    }
    metrics = {"weights": {"used": "imagenet"}, "calibration": CHOSEN_NONE,
               "seed_spread": spread, "splits": {"test": _scores(0.052, 0.052)},
               "leak_free": {"test": leak_free}}  # fmt: skip
    return build_model_card("chest-ct-classifier", "f00d", metrics, {}, {}, {}, {})


def test_the_card_spreads_each_class_recall_over_seeds_with_its_images(tmp_path):
    headline = {"accuracy": _spread_values(0.7), "macro_f1": _spread_values(0.6),
                "ece": _spread_values(0.1)}  # fmt: skip
    recall = {f"recall_{label}": _spread_values(0.8 + i / 100) for i, label in enumerate(LABELS)}
    # the leak-free part holds no adenocarcinoma: nothing to spread for it there
    leak_free = {key: v for key, v in recall.items() if key != "recall_adenocarcinoma"}
    spread = {"seeds": [42, 43, 44], "served_seed": 42,
              "subsets": {"test": {**headline, **recall},
                          "test_leak_free": {**headline, **leak_free}}}  # fmt: skip
    card = _card_with_spread(spread)
    text = render_markdown(card)
    header = " | ".join(f"recall, {DISPLAY_NAMES[label]}" for label in LABELS)
    assert f"| images | {header} |" in text
    assert (
        "| test | 0.800 ± 0.050 (0.750-0.850), n = 12 | 0.810 ± 0.050 (0.760-0.860), n = 12 | "
        "0.820 ± 0.050 (0.770-0.870), n = 12 | 0.830 ± 0.050 (0.780-0.880), n = 12 |"
    ) in text
    assert (
        "| test leak-free | n/a | 0.810 ± 0.050 (0.760-0.860), n = 4 | "
        "0.820 ± 0.050 (0.770-0.870), n = 5 | 0.830 ± 0.050 (0.780-0.880), n = 6 |"
    ) in text
    headline_row = (
        "| test | 0.700 ± 0.050 (0.650-0.750) | 0.600 ± 0.050 (0.550-0.650) | "
        "0.100 ± 0.050 (0.050-0.150) |"
    )
    assert headline_row in text
    page = _page(card, tmp_path)
    assert _cells(page, "card-seed-spread", "test") == [
        "0.700 &plusmn; 0.050 (0.650&ndash;0.750)",
        "0.600 &plusmn; 0.050 (0.550&ndash;0.650)",
        "0.100 &plusmn; 0.050 (0.050&ndash;0.150)",
    ]
    assert _cells(page, "card-seed-spread-recall", "test leak-free") == [
        "n/a",
        "0.810 &plusmn; 0.050 (0.760&ndash;0.860), n = 4",
        "0.820 &plusmn; 0.050 (0.770&ndash;0.870), n = 5",
        "0.830 &plusmn; 0.050 (0.780&ndash;0.880), n = 6",
    ]
    # a spread written before recalls were spread (an older registered version): no n/a table
    for subset in spread["subsets"].values():
        for key in recall:
            subset.pop(key, None)
    old = _card_with_spread(spread)
    assert old["seed_spread_recall"] is None
    text = render_markdown(old)
    assert "Each class's recall over the same seeds" not in text
    assert headline_row in text
    page = _page(old, tmp_path)
    assert 'id="card-seed-spread"' in page and 'id="card-seed-spread-recall"' not in page
