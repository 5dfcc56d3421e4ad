"""Grouped cross-validation over train+valid of the training recipe with one or more heads.

    python scripts/cross_validate_heads.py          # the latest run's cache; 1 and 5 heads
    python scripts/cross_validate_heads.py --heads 1 3 5 --folds 5
    python scripts/cross_validate_heads.py --cache a/activations.npz --model a/untrained.keras

Test images are never read. The distinct train and valid images without a label conflict are
split into ``--folds`` folds by near-duplicate group, class by class. In each fold the recipe
runs as the training pipeline runs it, with the project's own functions: the epochs are chosen
on a grouped hold-out of the fold's training images (``training.selection``), the heads are
refit on all of them for those epochs (``model.two_phase_training.train_heads``), and the
temperature is fitted to the hold-out run's answers. The held-out fold is then scored:
accuracy, macro-F1, log-loss and ECE, before and after the temperature, and ECE after a
cross-fitted temperature: one fitted to the other folds' held-out answers (what a calibration
set of answers of refit models, a k-fold schedule, would give). Block-5 fine-tuning follows
``training.phase2`` (off by default); ``--phase2-max-epochs 6`` tries it, each fold's hold-out
choosing how many epochs to keep. ``--label-smoothing 0`` tries the training without label
smoothing; ``--seed`` draws other folds.
Results: ``data/08_reporting/cross_validation.{json,md}``.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import keras
import numpy as np
import pandas as pd
from kedro.config import OmegaConfigLoader

from chest_ct_classifier.config.parameters import validate_parameters
from chest_ct_classifier.config.training import TrainingParameters
from chest_ct_classifier.datasets.activation_cache_dataset import ActivationCacheDataset
from chest_ct_classifier.images.splitting import grouped_split
from chest_ct_classifier.model.activation_cache import (
    ActivationCache,
    cached_images,
    content_probabilities,
    contents_of,
)
from chest_ct_classifier.model.calibration import (
    expected_calibration_error,
    fit_temperature,
    scale_probabilities,
)
from chest_ct_classifier.model.two_phase_training import scores, train_heads

PROJECT = Path(__file__).resolve().parents[1]
REPORT = PROJECT / "data" / "08_reporting" / "cross_validation"
METRICS = (
    "accuracy", "macro_f1", "loss", "loss_calibrated", "ece", "ece_calibrated", "ece_cross_fitted",
)  # fmt: skip


def project_training_parameters(
    phase2_max_epochs: int | None = None, label_smoothing: float | None = None
) -> TrainingParameters:
    """conf/base's training parameters, ``training.phase2.max_epochs`` and
    ``training.label_smoothing`` replaced when given, validated as a run validates them."""
    loader = OmegaConfigLoader(str(PROJECT / "conf"), base_env="base", default_run_env="base")
    parameters = dict(loader["parameters"])
    if phase2_max_epochs is not None:
        parameters["training"]["phase2"]["max_epochs"] = phase2_max_epochs
    if label_smoothing is not None:
        parameters["training"]["label_smoothing"] = label_smoothing
    return validate_parameters(parameters).training


def grouped_folds(groups: np.ndarray, labels: np.ndarray, folds: int, seed: int) -> np.ndarray:
    """A fold number for each image: whole near-duplicate groups, class by class."""
    names = [f"fold{i}" for i in range(folds)]
    side = grouped_split(
        pd.Series(groups), pd.Series(labels), dict.fromkeys(names, 1.0 / folds), seed
    ).to_numpy()
    return np.array([names.index(s) for s in side])


def score_fold(
    cache: ActivationCache,
    model: keras.Model,
    parameters: TrainingParameters,
    train: np.ndarray,
    train_labels: np.ndarray,
    train_groups: np.ndarray,
    held_out: np.ndarray,
    held_out_labels: np.ndarray,
) -> tuple[dict[str, float], np.ndarray]:
    """The recipe trained on ``train`` contents, scored on ``held_out`` contents; and its
    probabilities of them (for the cross-fitted temperature)."""
    selection = parameters.selection
    side = grouped_split(
        pd.Series(train_groups),
        pd.Series(train_labels),
        {"fit": 1.0 - selection.holdout_fraction, "holdout": selection.holdout_fraction},
        selection.seed,
    ).to_numpy()
    fit, holdout = side == "fit", side == "holdout"
    holdout_model, phases = train_heads(
        model,
        cached_images(cache, train[fit], train_labels[fit], with_views=True),
        parameters,
        monitor=cached_images(cache, train[holdout], train_labels[holdout], with_views=False),
    )
    epochs = (phases["phase1"].best_epoch, phases["phase2"].best_epoch)
    batch = parameters.batch_size
    temperature = fit_temperature(
        content_probabilities(holdout_model, cache, train[holdout], batch),
        train_labels[holdout],
    )
    refit, _ = train_heads(
        model, cached_images(cache, train, train_labels, with_views=True), parameters, epochs=epochs
    )
    probabilities = content_probabilities(refit, cache, held_out, batch)
    calibrated = scale_probabilities(probabilities, temperature)
    result = scores(held_out_labels, probabilities)
    return {
        **result,
        "loss_calibrated": scores(held_out_labels, calibrated)["loss"],
        "ece": expected_calibration_error(probabilities, held_out_labels),
        "ece_calibrated": expected_calibration_error(calibrated, held_out_labels),
        "temperature": temperature,
        "phase1_epochs": epochs[0],
        "phase2_epochs": epochs[1],
    }, probabilities


def add_cross_fitted_ece(
    records: list[dict[str, float]], probabilities: list[np.ndarray], labels: list[np.ndarray]
) -> None:
    """Each fold's ECE after a temperature fitted to every other fold's answers."""
    for fold, record in enumerate(records):
        others = [i for i in range(len(records)) if i != fold]
        temperature = fit_temperature(
            np.concatenate([probabilities[i] for i in others]),
            np.concatenate([labels[i] for i in others]),
        )
        record["temperature_cross_fitted"] = temperature
        record["ece_cross_fitted"] = expected_calibration_error(
            scale_probabilities(probabilities[fold], temperature), labels[fold]
        )


def cross_validate(
    cache: ActivationCache,
    model: keras.Model,
    parameters: TrainingParameters,
    heads: list[int],
    folds: int,
    seed: int,
) -> dict[str, object]:
    pool = np.isin(cache.split, ("train", "valid")) & ~cache.label_conflict
    content, labels = contents_of(cache, pool)
    groups = pd.Series(cache.group[pool]).groupby(cache.content[pool]).first()[content].to_numpy()
    fold_of = grouped_folds(groups, labels, folds, seed)
    results: dict[str, list[dict[str, float]]] = {}
    for n_heads in heads:
        settings = parameters.model_copy(update={"heads": n_heads})
        records, answers = [], []
        for fold in range(folds):
            inside, outside = fold_of != fold, fold_of == fold
            started = time.perf_counter()
            record, probabilities = score_fold(
                cache, model, settings,
                content[inside], labels[inside], groups[inside],
                content[outside], labels[outside],
            )  # fmt: skip
            record["seconds"] = time.perf_counter() - started
            records.append(record)
            answers.append(probabilities)
            print(f"{n_heads} heads, fold {fold + 1}/{folds}: "
                  + ", ".join(f"{k} {v:.3f}" for k, v in record.items()), flush=True)  # fmt: skip
        add_cross_fitted_ece(records, answers, [labels[fold_of == f] for f in range(folds)])
        results[f"{n_heads} head{'s' if n_heads > 1 else ''}"] = records
    summary = {
        name: {
            key: {"mean": float(np.mean([r[key] for r in records])),
                  "std": float(np.std([r[key] for r in records]))}
            for key in (*METRICS, "seconds")
        }
        for name, records in results.items()
    }  # fmt: skip
    return {
        "images": len(content),
        "folds": folds,
        "seed": seed,
        "phase2_max_epochs": parameters.phase2.max_epochs,
        "label_smoothing": parameters.label_smoothing,
        "summary": summary,
        "per_fold": results,
    }


def markdown(report: dict[str, object]) -> str:
    lines = [
        f"Grouped {report['folds']}-fold cross-validation over {report['images']} distinct "
        "train+valid images (mean ± standard deviation over the folds).",
        "",
        "| recipe | " + " | ".join(METRICS) + " |",
        "|---|" + "---:|" * len(METRICS),
    ]
    for name, values in report["summary"].items():
        cells = [f"{values[k]['mean']:.3f} ± {values[k]['std']:.3f}" for k in METRICS]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> dict[str, object]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cache", type=Path, default=PROJECT / "data/04_feature/activations.npz")
    parser.add_argument(
        "--model", type=Path, default=PROJECT / "data/06_models/candidate/untrained_model.keras"
    )
    parser.add_argument("--heads", type=int, nargs="+", default=[1, 5])
    parser.add_argument("--folds", type=int, default=5)
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument(
        "--phase2-max-epochs",
        type=int,
        help="block-5 fine-tuning epochs to try (default: the project's training.phase2)",
    )
    parser.add_argument(
        "--label-smoothing",
        type=float,
        help="label smoothing to try (default: the project's training.label_smoothing)",
    )
    parser.add_argument("--report", type=Path, default=REPORT)
    args = parser.parse_args(argv)
    for path in (args.cache, args.model):
        if not path.exists():
            parser.error(f"{path} does not exist: run `kedro run` first (it writes both)")
    parameters = project_training_parameters(args.phase2_max_epochs, args.label_smoothing)
    cache = ActivationCacheDataset(str(args.cache)).load()
    model = keras.saving.load_model(args.model, compile=False)
    report = cross_validate(cache, model, parameters, args.heads, args.folds, args.seed)
    args.report.parent.mkdir(parents=True, exist_ok=True)
    args.report.with_suffix(".json").write_text(json.dumps(report, indent=2))
    args.report.with_suffix(".md").write_text(markdown(report))
    print(markdown(report))
    return report


if __name__ == "__main__":
    main()
