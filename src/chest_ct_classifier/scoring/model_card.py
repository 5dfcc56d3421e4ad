"""The model card: what a clinician, a reviewer or an auditor asks first, from the run's own
outputs. Every number is copied from the reports the run wrote (metrics, data quality,
training schedule, calibration, precision gate); nothing is typed in by hand."""

from __future__ import annotations

from typing import Any

from chest_ct_classifier.images.labels import DISPLAY_NAMES, LABELS

INTENDED_USE = (
    "Research and teaching: classifying single axial chest CT slices, exported as images, into "
    "adenocarcinoma, large cell carcinoma, squamous cell carcinoma or normal, to study transfer "
    "learning, calibration and honest evaluation on a small public dataset."
)
WARNING = (
    "Research tool, not a diagnosis. Not a medical device; not validated on any patient "
    "population. No clinical decision may rest on its answers."
)
FIXED_LIMITATIONS = (
    "It sees one slice at a time: it knows nothing of the rest of the scan, the patient, "
    "earlier scans or the clinical question.",
    "It knows four classes only. Other findings (other cancers, nodules, infection, fibrosis) "
    "get one of the four answers.",
    "The public dataset's images come from web sources of uneven quality, sizes and aspect "
    "ratios by class; a model can learn such cues instead of anatomy.",
    "The archive records no patients: images of one scan may sit in different splits even "
    "after duplicate removal, which flatters held-out scores.",
)


TRAINING_KEYS = (
    "phase1_epochs", "phase2_epochs", "heads", "monitor", "fit_images", "holdout_images",
)  # fmt: skip


def build_model_card(
    model_name: str,
    model_fingerprint: str,
    metrics: dict[str, Any],
    data_quality: dict[str, Any],
    ingestion_summary: dict[str, Any],
    training_schedule: dict[str, Any],
    precision_gate: dict[str, Any],
) -> dict[str, Any]:
    """The card as JSON-ready data: the run's own figures, grouped as a reader looks for them."""
    evaluation = {
        subset: {split: _scores(scores) for split, scores in metrics[subset].items()}
        for subset in ("splits", "leak_free")
    }
    card = {
        "model": {
            "name": model_name,
            "fingerprint": model_fingerprint,
            "classes": list(LABELS),
            "weights": metrics["weights"],
        },
        "intended_use": INTENDED_USE,
        "warning": WARNING,
        "data": {
            "source": ingestion_summary.get("source"),
            "split_source": data_quality.get("split_source"),
            "n_files": ingestion_summary.get("n_files"),
            "n_images": data_quality.get("n_images"),
            "n_distinct_contents": data_quality.get("n_distinct_contents"),
            "counts": data_quality.get("counts"),
            "leak_free": data_quality.get("leak_free"),
            "exact_duplicate_groups": len(data_quality.get("exact_duplicate_groups", [])),
            "near_duplicate_groups": len(data_quality.get("near_duplicate_groups", [])),
            "cross_split_groups": len(data_quality.get("cross_split_groups", [])),
            "files_with_conflicting_labels": sum(
                len(group["files"]) for group in data_quality.get("conflicting_labels", [])
            ),
            "unreadable_files": len(data_quality.get("unreadable", [])),
            "skipped_non_images": len(ingestion_summary.get("skipped_non_images", [])),
        },
        "training": {key: training_schedule.get(key) for key in TRAINING_KEYS},
        "evaluation": evaluation,
        "seed_spread": metrics.get("seed_spread"),
        "seed_spread_recall": _seed_spread_recall(metrics.get("seed_spread"), evaluation),
        "calibration": metrics["calibration"],
        "temperature_scaled": temperature_scaled(metrics["calibration"]),
        "calibration_summary": calibration_summary(metrics["calibration"]),
        "out_of_distribution": metrics.get("out_of_distribution"),
        "precision": {
            "served_by_default": precision_gate.get("fastest_passing"),
            "reason": precision_gate.get("reason"),
            "passed": {
                name: path.get("passed")
                for name, path in precision_gate.get("paths", {}).items()
                if name != "fp32"
            },
        },
    }
    card["limitations"] = [*_measured_limitations(card), *FIXED_LIMITATIONS]
    return card


def _scores(metrics: dict[str, Any]) -> dict[str, Any]:
    intervals = metrics.get("intervals") or {}
    return {
        "n_images": metrics["n_images"],
        "accuracy": metrics["accuracy"],
        "accuracy_interval": intervals.get("accuracy"),
        "macro_f1": metrics["macro_f1"],
        "macro_f1_interval": intervals.get("macro_f1"),
        "balanced_accuracy": metrics["balanced_accuracy"],
        "roc_auc_macro": metrics["roc_auc"]["macro"],
        "ece": metrics["ece"],
        "ece_uncalibrated": metrics["ece_uncalibrated"],
        "ece_if_calibrated": metrics["ece_if_calibrated"],
        "recall": {label: metrics["per_class"][label]["recall"] for label in LABELS},
        "recall_interval": intervals.get("recall"),
        "support": {label: metrics["per_class"][label]["support"] for label in LABELS},
        "interval_confidence": intervals.get("confidence"),
    }


def _seed_spread_recall(
    spread: dict[str, Any] | None, evaluation: dict[str, Any]
) -> dict[str, dict[str, dict[str, Any] | None]] | None:
    """Each spread subset's recall of every class over the seeds with the images it rests on
    (None where the subset holds no image of the class); None for a spread without recalls
    (written before they were spread)."""
    subsets = (spread or {}).get("subsets", {})
    if not any(f"recall_{label}" in scores for scores in subsets.values() for label in LABELS):
        return None
    table = {}
    for name, scores in subsets.items():
        split = name.removesuffix("_leak_free")
        support = evaluation["splits" if name == split else "leak_free"][split]["support"]
        table[name] = {
            label: {
                **{key: scores[f"recall_{label}"][key] for key in ("mean", "std", "min", "max")},
                "n_images": support[label],
            }
            if f"recall_{label}" in scores
            else None
            for label in LABELS
        }
    return table


def _measured_limitations(card: dict[str, Any]) -> list[str]:
    notes = []
    for subset, name in (("leak_free", "leak-free "), ("splits", "")):
        for split, scores in card["evaluation"][subset].items():
            few = [DISPLAY_NAMES[c] for c, n in scores["support"].items() if 0 < n < 10]
            if few:
                notes.append(
                    f"The {name}{split} set has fewer than 10 images of {', '.join(few)}: "
                    "their recall is known only roughly (see its interval)."
                )
            if_calibrated = scores["ece_if_calibrated"]
            if if_calibrated["above"]:
                notes.append(
                    f"On {name}{split} the ECE ({scores['ece']:.3f}) is more than chance alone "
                    f"explains on {scores['n_images']} images: a calibrated model reads at most "
                    f"{if_calibrated['high']:.3f} in {_percent(if_calibrated['confidence'])}of "
                    f"draws (p = {if_calibrated['p_value']:.3f})."
                )
            interval = scores["accuracy_interval"]
            if interval and interval["high"] - interval["low"] > 0.15:
                notes.append(
                    f"On {name}{split} ({scores['n_images']} images) the accuracy's interval is "
                    f"{interval['low']:.2f}-{interval['high']:.2f} wide: too few images for a "
                    "precise figure."
                )
    if card["data"]["cross_split_groups"]:
        notes.append(
            f"{card['data']['cross_split_groups']} groups of identical or near-identical images "
            "span several splits; the leak-free figures leave them out."
        )
    if card["data"]["files_with_conflicting_labels"]:
        notes.append(
            f"{card['data']['files_with_conflicting_labels']} files are copies of one image "
            "under different labels; they were not trained on."
        )
    if card["model"]["weights"].get("fallback_reason"):
        notes.append(
            f"The pretrained weights are {card['model']['weights'].get('used')}, not ImageNet's: "
            f"{card['model']['weights']['fallback_reason']}."
        )
    return notes


def render_markdown(card: dict[str, Any]) -> str:
    """The card for people: Markdown with the same figures, rounded to 3 decimals."""
    lines = [
        f"# Model card: {card['model']['name']}",
        "",
        f"> **{card['warning']}**",
        "",
        "## Intended use",
        "",
        card["intended_use"],
        "",
        f"Classes: {', '.join(DISPLAY_NAMES[c] for c in card['model']['classes'])}.",
        "",
        "## Data",
        "",
    ]
    data = card["data"]
    lines += [
        f"- Source: `{data['source']}` ({data['split_source']} split); {data['n_files']} files, "
        f"{data['n_images']} images, {data['n_distinct_contents']} distinct.",
        f"- Exact duplicate groups: {data['exact_duplicate_groups']}; near-duplicate groups: "
        f"{data['near_duplicate_groups']}; groups across splits: {data['cross_split_groups']}.",
        f"- Files with conflicting labels (not trained on): "
        f"{data['files_with_conflicting_labels']}; unreadable: {data['unreadable_files']}; "
        f"skipped (not images): {data['skipped_non_images']}.",
        "",
        "| split | " + " | ".join(DISPLAY_NAMES[c] for c in LABELS) + " |",
        "|---|" + "---:|" * len(LABELS),
    ]
    for split, counts in (data["counts"] or {}).items():
        lines.append(f"| {split} | " + " | ".join(str(counts.get(c, 0)) for c in LABELS) + " |")
    weights = card["model"]["weights"]
    training = card["training"]
    lines += [
        "",
        "## Model and training",
        "",
        f"- VGG16 convolutions (frozen) with weights `{weights.get('used')}` (asked for "
        f"`{weights.get('requested')}`), a new head for the four classes.",
        f"- Epochs chosen on a held-out {training['holdout_images']} images of train+valid "
        f"(monitor: {training['monitor']}): head {training['phase1_epochs']}, "
        f"block 5 with the head {training['phase2_epochs']}; "
        f"{training.get('heads') or 1} head(s) on one base, their logits averaged.",
        "",
        "## Evaluation",
        "",
    ]
    for subset, title in (("splits", "official split"), ("leak_free", "leak-free")):
        for split, scores in card["evaluation"][subset].items():
            confidence = scores["interval_confidence"]
            lines += [
                f"### {split}, {title} ({scores['n_images']} images)",
                "",
                f"| metric | value | {_percent(confidence)}interval |",
                "|---|---:|---|",
                f"| accuracy | {_number(scores['accuracy'])} | "
                f"{_interval(scores['accuracy_interval'])} |",
                f"| macro-F1 | {_number(scores['macro_f1'])} | "
                f"{_interval(scores['macro_f1_interval'])} |",
                f"| balanced accuracy | {_number(scores['balanced_accuracy'])} | |",
                f"| ROC-AUC (macro) | {_number(scores['roc_auc_macro'])} | |",
                _ece_row(scores, card["temperature_scaled"]),
                _ece_if_calibrated_row(scores["ece_if_calibrated"]),
            ]
            for label in LABELS:
                interval = (scores["recall_interval"] or {}).get(label)
                lines.append(
                    f"| recall, {DISPLAY_NAMES[label]} ({scores['support'][label]}) | "
                    f"{_number(scores['recall'][label])} | {_interval(interval)} |"
                )
            lines.append("")
    lines += _seed_spread_lines(card.get("seed_spread"), card.get("seed_spread_recall"))
    calibration = card["calibration"]
    lines += [
        "## Calibration",
        "",
        calibration_summary(calibration),
        "",
        "## Out-of-distribution images",
        "",
        *_ood_lines(card["out_of_distribution"]),
        "",
        "## Numeric precision",
        "",
        f"Served by default: {card['precision']['served_by_default']} "
        f"({card['precision']['reason']}). Passed the gate: "
        + ", ".join(f"{k} {'yes' if v else 'no'}" for k, v in card["precision"]["passed"].items())
        + ".",
        "",
        "## Known limitations",
        "",
        *[f"- {note}" for note in card["limitations"]],
        "",
    ]
    return "\n".join(lines)


def temperature_scaled(calibration: dict[str, Any]) -> bool:
    """Whether the run's calibration record (``calibration.json``) folded a temperature into
    the model. ``fitted_on`` is "none" when ``training.calibration.fit_on`` chose no temperature,
    None when there were no images to fit one to; then the model's probabilities are its own."""
    return calibration.get("fitted_on") not in ("none", None)


def calibration_summary(calibration: dict[str, Any]) -> str:
    """One sentence on the temperature, for the card's readers."""
    if temperature_scaled(calibration):
        return (
            f"Temperature {_number(calibration.get('temperature'))}, fitted on "
            f"{calibration.get('fitted_on')} ({calibration.get('n_images')} images)."
        )
    if calibration.get("fitted_on") == "none":
        return "No temperature scaling (T = 1): training.calibration.fit_on is none."
    return "No temperature scaling (T = 1): there were no images to fit one to."


def _ece_row(scores: dict[str, Any], scaled: bool) -> str:
    if scaled:
        return (
            f"| ECE (uncalibrated -> calibrated) | {_number(scores['ece_uncalibrated'])} -> "
            f"{_number(scores['ece'])} | |"
        )
    return f"| ECE (no temperature) | {_number(scores['ece'])} | |"


def _ece_if_calibrated_row(if_calibrated: dict[str, Any]) -> str:
    return (
        "| ECE a calibrated model would read here (p = "
        f"{if_calibrated['p_value']:.3f}: its draws reading at least the served ECE, the "
        f"observation counted) | {_number(if_calibrated['mean'])} | "
        f"up to {_number(if_calibrated['high'])} |"
    )


def _seed_spread_lines(
    spread: dict[str, Any] | None, recall: dict[str, dict[str, Any]] | None
) -> list[str]:
    if not spread:
        return []
    columns = {"accuracy": "accuracy", "macro_f1": "macro-F1", "ece": "ECE"}
    headline = {name: [row[key] for key in columns] for name, row in spread["subsets"].items()}
    lines = [
        "### Spread over training seeds",
        "",
        f"The final training repeated with seeds {', '.join(map(str, spread['seeds']))} (the "
        f"served model's is {spread['served_seed']}), the same images, epochs and temperature: "
        "mean ± standard deviation (lowest-highest).",
        "",
        *_spread_table(headline, list(columns.values())),
    ]
    if recall:
        lines += [
            "",
            "Each class's recall over the same seeds, and the images it rests on (n/a: none):",
            "",
            *_spread_table(
                {name: [by_label[label] for label in LABELS] for name, by_label in recall.items()},
                [f"recall, {DISPLAY_NAMES[label]}" for label in LABELS],
            ),
        ]
    return [*lines, ""]


def _spread_table(rows: dict[str, list[dict[str, Any] | None]], columns: list[str]) -> list[str]:
    lines = ["| images | " + " | ".join(columns) + " |", "|---|" + "---:|" * len(columns)]
    for name, cells in rows.items():
        shown = " | ".join(_spread_cell(values) for values in cells)
        lines.append(f"| {name.replace('_leak_free', ' leak-free')} | {shown} |")
    return lines


def _spread_cell(values: dict[str, Any] | None) -> str:
    if values is None:
        return "n/a"
    cell = (
        f"{_number(values['mean'])} ± {_number(values['std'])} "
        f"({_number(values['min'])}-{_number(values['max'])})"
    )
    return f"{cell}, n = {values['n_images']}" if "n_images" in values else cell


def _ood_lines(ood: dict[str, Any] | None) -> list[str]:
    if not ood:
        return ["No detector was measured: every image gets one of the four answers."]
    detector = ood["detector"]
    lines = [
        f"Input checks (colour, blank, shape), then {detector['method']} of the head's input "
        f"vector; threshold {detector['threshold']:.2f}, set to flag "
        f"{detector['target_false_rejection']:.0%} of held-out chest CT slices. Measured, "
        "not tuned, on:",
        "",
    ]
    for split, subsets in ood["in_distribution"].items():
        for subset, counts in subsets.items():
            lines.append(
                f"- {split} ({subset.replace('_', '-')}): {counts['flagged']} of "
                f"{counts['n_images']} chest CT slices flagged"
            )
    for group, result in ood["reference"].items():
        auroc = result["auroc_of_score"]
        lines.append(
            f"- {group} images that are not chest CT: {result['detected']} of "
            f"{result['n_images']} detected (AUROC of the score "
            f"{'n/a' if auroc is None else f'{auroc:.3f}'})"
        )
    lines += [
        "",
        "Applied to every answer (the app, batch inference, the registered model): an image it "
        "flags gets status out_of_distribution and no cancer type. It is statistical: it can let "
        "through an image that is not a chest CT slice and refuse one that is.",
    ]
    return lines


def _number(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.3f}"


def _interval(interval: dict[str, float] | None) -> str:
    return "" if not interval else f"{interval['low']:.3f}-{interval['high']:.3f}"


def _percent(confidence: float | None) -> str:
    return "" if confidence is None else f"{confidence:.0%} "
