"""Command line: ``chest-ct predict PATH...`` (also ``kedro predict`` and ``python -m
chest_ct_classifier predict``) runs the batch inference pipeline on each path and prints one
row per image; ``chest-ct audit verify LOG`` checks the audit log's hash chain.

Kedro loads this module's ``cli`` group as the project's own commands, so ``kedro predict``
works in the project too.
"""

from __future__ import annotations

import os
from pathlib import Path

import click
import pandas as pd

from chest_ct_classifier.audit.hash_chain_log import verify as verify_chain
from chest_ct_classifier.images.labels import DISPLAY_NAMES, probability_columns

PACKAGE = "chest_ct_classifier"


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
def cli() -> None:
    """Chest CT cancer classifier (research tool, not a diagnosis)."""


@cli.command()
@click.argument("paths", nargs=-1, required=True, type=click.Path(exists=True, path_type=Path))
@click.option(
    "--project-path",
    type=click.Path(exists=True, file_okay=False, path_type=Path),
    default=Path.cwd,
    show_default="the current folder",
    help="The Kedro project whose trained model predicts.",
)
@click.option("--env", default=None, help="Kedro configuration environment (default: local).")
def predict(paths: tuple[Path, ...], project_path: Path, env: str | None) -> None:
    """Predict every image of each PATH (an image, a folder of any depth, or a .zip).

    Runs the project's `inference` pipeline (the model in data/06_models, in the precision the
    gate allows), writes data/07_model_output/predictions.csv for the last PATH, and prints
    each image's label and probability, or why it has none (unreadable, or out of distribution:
    not like the chest CT slices the model learned).
    """
    tables = [_run_inference(path.resolve(), project_path.resolve(), env) for path in paths]
    click.echo(format_predictions(pd.concat(tables, ignore_index=True)))


def _run_inference(path: Path, project_path: Path, env: str | None) -> pd.DataFrame:
    # Kedro is imported here: `chest-ct --help` should not wait for it.
    from kedro.framework.session import KedroSession  # noqa: PLC0415
    from kedro.framework.startup import bootstrap_project  # noqa: PLC0415

    bootstrap_project(project_path)
    with KedroSession.create(
        project_path=project_path, env=env, runtime_params={"inference": {"input_path": str(path)}}
    ) as session:
        session.run(pipeline_names=["inference"])
        predictions = session.load_context().catalog.load("predictions")
    single_file = path.is_file() and path.suffix.lower() != ".zip"
    predictions["image"] = [
        str(path) if single_file else os.path.join(path, image) for image in predictions["image"]
    ]
    return predictions


@cli.group()
def audit() -> None:
    """The audit log of answers (CHEST_CT_AUDIT_LOG, by default logs/audit.jsonl)."""


@audit.command()
@click.argument("log", type=click.Path(exists=True, dir_okay=False, path_type=Path))
def verify(log: Path) -> None:
    """Check LOG's hash chain (with its rotated files LOG.1, LOG.2...): exit 0 when every line
    is intact and linked to the one before, else name the first broken or missing link."""
    report = verify_chain(log)
    files = f"{report.files} file{'s' if report.files != 1 else ''}"
    if not report.ok:
        click.echo(f"BROKEN after {report.lines - 1} good lines ({files}): {report.problem}")
        raise SystemExit(1)
    start = (
        " (it begins after rotated files that are no longer kept)"
        if report.starts_after_rotation
        else ""
    )
    click.echo(f"OK: {report.lines} lines in {files}, every link intact{start}.")


def format_predictions(predictions: pd.DataFrame) -> str:
    """A table a person reads: image, predicted type, its probability and status (uncertain),
    or why there is none (unreadable, or not a chest CT slice)."""
    rows = []
    for _, row in predictions.iterrows():
        error = row.get("error")
        if isinstance(error, str) and error:
            rows.append((row["image"], "-", "", f"unreadable: {error}"))
            continue
        status = row.get("status")
        if status == "out_of_distribution":  # no type is named for it
            rows.append((row["image"], "-", "", f"not a chest CT slice: {row.get('ood_reason')}"))
            continue
        probability = max(float(row[column]) for column in probability_columns())
        label = row["label"]
        shown = DISPLAY_NAMES.get(label, label) if isinstance(label, str) else "-"
        rows.append(
            (row["image"], shown, f"{probability:.3f}", "uncertain" * (status == "uncertain"))
        )
    header = ("image", "predicted", "probability", "note")
    widths = [max(len(header[i]), *(len(r[i]) for r in rows)) for i in range(3)]
    lines = [
        "  ".join(cell.ljust(width) for cell, width in zip(line[:3], widths, strict=True))
        + ("  " + line[3] if line[3] else "")
        for line in [header, *rows]
    ]
    lines.insert(1, "  ".join("-" * width for width in widths))
    return "\n".join(line.rstrip() for line in lines)


def main() -> None:
    """The ``chest-ct`` console script."""
    cli(prog_name="chest-ct")
