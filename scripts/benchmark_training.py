"""Benchmark: naive training (frozen layers recomputed every epoch) against the cached
two-phase training, on real images; and the time of each node of the latest ``kedro run``.

    python scripts/benchmark_training.py                      # real archive, 64 train images
    python scripts/benchmark_training.py --images 128 --epochs 3
    python scripts/benchmark_training.py --stages-only        # node times of the latest run
    python scripts/benchmark_training.py --project /path/to/another/checkout

Both loops train the same model on the same images with the same batch size:

- phase 1 (head only): naive runs VGG16's blocks 1-5 on every image every epoch; cached trains
  the head on the stored head input vector (of every augmented view, as the pipeline does);
- phase 2 (block 5 + head): naive runs blocks 1-4 every epoch; cached starts from the stored
  block-4 activations.

The one-time cost of computing the cache is reported separately, and the projected totals for
the epochs the latest run's schedule chose (``data/06_models/training_schedule.json``) include
it. Results go to ``data/08_reporting/training_benchmark.{json,md}``.
"""

from __future__ import annotations

import argparse
import json
import time
import zipfile
from pathlib import Path

import keras
import mlflow
import numpy as np

from chest_ct_classifier.config.training import AugmentationSettings
from chest_ct_classifier.images.augmentation import augment, augmentation_model
from chest_ct_classifier.images.labels import LABELS, label_from_folder
from chest_ct_classifier.images.preprocessing import decode_image, image_to_array, scale_for_vgg16
from chest_ct_classifier.model.architecture import (
    CACHED_LAYER,
    FEATURE_LAYER,
    FINE_TUNED_BLOCK,
    build_classifier,
    feature_extractor,
    model_after,
    set_block_trainable,
)
from chest_ct_classifier.model.pretrained_weights import load_hed_conv_weights

PROJECT = Path(__file__).resolve().parents[1]
DEFAULT_ARCHIVE = PROJECT.parent / "shared" / "data" / "chest-ct-scan.zip"
REPORT = PROJECT / "data" / "08_reporting" / "training_benchmark"


def _train_images(archive: Path, n: int, size: int) -> tuple[np.ndarray, np.ndarray]:
    """``n`` train images of the archive, classes in turn, as uint8 RGB arrays and labels."""

    by_label: dict[int, list[str]] = {i: [] for i in range(len(LABELS))}
    with zipfile.ZipFile(archive) as zipped:
        for name in sorted(zipped.namelist()):
            parts = name.split("/")
            if "train" in parts[:-2] and name.lower().endswith((".png", ".jpg", ".jpeg")):
                label = label_from_folder(parts[-2])
                if label is not None:
                    by_label[LABELS.index(label)].append(name)
        chosen = [
            (names[i], label)
            for i in range(n)
            for label, names in by_label.items()
            if i < len(names)
        ][:n]
        rgb = np.stack(
            [image_to_array(decode_image(zipped.read(name)), size) for name, _ in chosen]
        )
    return rgb, np.array([label for _, label in chosen])


def _seconds(function, repeat: int) -> list[float]:
    times = []
    for _ in range(repeat):
        started = time.perf_counter()
        function()
        times.append(time.perf_counter() - started)
    return times


def benchmark(
    archive: Path, n_images: int, epochs: int, views: int, size: int, schedule_file: Path
) -> dict:
    rgb, labels = _train_images(archive, n_images, size)
    batch = 32

    def fit(network: keras.Model, x: np.ndarray, y: np.ndarray) -> None:
        network.fit(x, y, batch_size=batch, epochs=1, shuffle=True, verbose=0)

    def compiled(network: keras.Model, learning_rate: float) -> keras.Model:
        network.compile(
            optimizer=keras.optimizers.Adam(learning_rate), loss="sparse_categorical_crossentropy"
        )
        return network

    model = build_classifier(size, load_hed_conv_weights())
    images = scale_for_vgg16(rgb)

    # Naive: the whole model on images every epoch (first epoch: warm-up, not counted).
    naive_1 = compiled(model, 1e-3)
    fit(naive_1, images[:batch], labels[:batch])
    naive_phase1 = _seconds(lambda: fit(naive_1, images, labels), epochs)
    set_block_trainable(model, FINE_TUNED_BLOCK, True)
    naive_2 = compiled(model, 1e-5)
    fit(naive_2, images[:batch], labels[:batch])
    naive_phase2 = _seconds(lambda: fit(naive_2, images, labels), epochs)
    set_block_trainable(model, FINE_TUNED_BLOCK, False)

    # Cached: frozen layers once per image and view, then epochs on the stored outputs.
    blocks_1_to_4 = feature_extractor(model, CACHED_LAYER)
    block_5 = model_after(model, CACHED_LAYER, until=FEATURE_LAYER)
    views_model = augmentation_model(
        AugmentationSettings(
            views=views, horizontal_flip=True, rotation_degrees=10, zoom=0.1, stretch=0.0,
            brightness=0.1, contrast=0.1,
        ),
        seed=0,
    )  # fmt: skip

    def build_cache() -> tuple[np.ndarray, np.ndarray]:
        versions = [rgb] + [augment(rgb, views_model) for _ in range(views)]
        activations, features = [], []
        for version in versions:
            for start in range(0, len(version), 16):
                block_4 = np.asarray(
                    blocks_1_to_4.predict_on_batch(scale_for_vgg16(version[start : start + 16]))
                )
                activations.append(block_4)
                features.append(np.asarray(block_5.predict_on_batch(block_4)))
        return np.concatenate(activations), np.concatenate(features)

    blocks_1_to_4.predict_on_batch(images[:16])  # warm-up
    cache_started = time.perf_counter()
    activations, features = build_cache()
    cache_seconds = time.perf_counter() - cache_started

    head = compiled(model_after(model, FEATURE_LAYER), 1e-3)
    all_labels = np.tile(labels, views + 1)
    fit(head, features[:batch], all_labels[:batch])
    cached_phase1 = _seconds(lambda: fit(head, features, all_labels), epochs)
    set_block_trainable(model, FINE_TUNED_BLOCK, True)
    tail = compiled(model_after(model, CACHED_LAYER), 1e-5)
    originals = activations[: len(rgb)]
    fit(tail, originals[:batch], labels[:batch])
    cached_phase2 = _seconds(lambda: fit(tail, originals, labels), epochs)

    def mean(values: list[float]) -> float:
        return float(np.mean(values))

    result = {
        "images": len(rgb),
        "image_size": size,
        "views": views,
        "epochs_timed": epochs,
        "batch_size": batch,
        "seconds_per_epoch": {
            "naive_phase1": mean(naive_phase1),
            "cached_phase1": mean(cached_phase1),
            "naive_phase2": mean(naive_phase2),
            "cached_phase2": mean(cached_phase2),
        },
        "cache_seconds": cache_seconds,
        "speedup_per_epoch": {
            "phase1": mean(naive_phase1) / mean(cached_phase1),
            "phase2": mean(naive_phase2) / mean(cached_phase2),
        },
    }
    if schedule_file.is_file():
        schedule = json.loads(schedule_file.read_text())
        e1, e2 = int(schedule["phase1_epochs"]), int(schedule["phase2_epochs"])
        per = result["seconds_per_epoch"]
        naive = e1 * per["naive_phase1"] + e2 * per["naive_phase2"]
        cached_epochs = e1 * per["cached_phase1"] + e2 * per["cached_phase2"]
        result["schedule"] = {
            "phase1_epochs": e1,
            "phase2_epochs": e2,
            "naive_seconds": naive,
            "cached_seconds_epochs_only": cached_epochs,
            "cached_seconds_with_cache": cached_epochs + cache_seconds,
            "speedup_per_epoch": naive / cached_epochs,
            "speedup_with_cache": naive / (cached_epochs + cache_seconds),
        }
    return result


def stage_times(tracking_uri: str) -> dict[str, float]:
    """``seconds.<node>`` of the latest run of the project's experiment."""
    mlflow.set_tracking_uri(tracking_uri)
    runs = mlflow.search_runs(
        experiment_names=["chest-ct-classifier"],
        order_by=["attributes.start_time DESC"],
        max_results=1,
        output_format="list",
    )
    if not runs:
        return {}
    return {
        key.removeprefix("seconds."): value
        for key, value in sorted(runs[0].data.metrics.items())
        if key.startswith("seconds.")
    }


def markdown(result: dict) -> str:
    lines = ["# Training benchmark", ""]
    if "seconds_per_epoch" in result:
        per, speed = result["seconds_per_epoch"], result["speedup_per_epoch"]
        lines += [
            f"{result['images']} real train images at {result['image_size']} px, "
            f"{result['views']} augmented views each, batch {result['batch_size']}, "
            f"mean of {result['epochs_timed']} timed epochs.",
            "",
            "| phase | naive s/epoch | cached s/epoch | speed-up |",
            "|---|---:|---:|---:|",
            f"| 1: head | {per['naive_phase1']:.2f} | {per['cached_phase1']:.3f} | "
            f"{speed['phase1']:.0f}x |",
            f"| 2: block 5 + head | {per['naive_phase2']:.2f} | {per['cached_phase2']:.2f} | "
            f"{speed['phase2']:.1f}x |",
            "",
            f"Building the cache (blocks 1-5 once per image and view): "
            f"{result['cache_seconds']:.1f} s.",
        ]
        if "schedule" in result:
            s = result["schedule"]
            lines += [
                "",
                f"For the latest run's schedule ({s['phase1_epochs']} + {s['phase2_epochs']} "
                f"epochs): naive {s['naive_seconds']:.0f} s, cached "
                f"{s['cached_seconds_epochs_only']:.0f} s of epochs "
                f"({s['speedup_per_epoch']:.1f}x faster per epoch), "
                f"{s['cached_seconds_with_cache']:.0f} s with the cache "
                f"({s['speedup_with_cache']:.1f}x).",
            ]
    if result.get("stages"):
        lines += ["", "## Node times of the latest run", "", "| node | seconds |", "|---|---:|"]
        lines += [f"| {name} | {seconds:.1f} |" for name, seconds in result["stages"].items()]
        lines += [f"| **total** | {sum(result['stages'].values()):.1f} |"]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--archive", type=Path, default=DEFAULT_ARCHIVE)
    parser.add_argument("--images", type=int, default=64)
    parser.add_argument("--epochs", type=int, default=2, help="timed epochs per phase")
    parser.add_argument("--views", type=int, default=2)
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument(
        "--project",
        type=Path,
        default=PROJECT,
        help="project folder of the run to report (its mlflow.db and training schedule)",
    )
    parser.add_argument("--stages-only", action="store_true")
    parser.add_argument("--output", type=Path, default=REPORT, help="report path, no suffix")
    args = parser.parse_args()

    result: dict = {}
    if not args.stages_only:
        if not args.archive.is_file():
            raise SystemExit(f"No archive at {args.archive}: pass --archive PATH to the zip")
        result = benchmark(
            args.archive,
            args.images,
            args.epochs,
            args.views,
            args.image_size,
            args.project / "data" / "06_models" / "training_schedule.json",
        )
    result["stages"] = stage_times(f"sqlite:///{args.project / 'mlflow.db'}")
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.with_suffix(".json").write_text(json.dumps(result, indent=2))
    args.output.with_suffix(".md").write_text(markdown(result))
    print(markdown(result))


if __name__ == "__main__":
    main()
